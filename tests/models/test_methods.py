"""SimCLR, BYOL and Table 6's asymmetric Barlow Twins: losses against the papers' formulas, the momentum
target (update, no gradient, not optimised, checkpointed), stop-gradient and the predictor's branch."""

from __future__ import annotations

import math

import pytest
import torch
from loss_reference import algorithm_1
from torch import nn

from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.losses.byol import regression_loss, target_momentum
from barlowtwins.losses.nt_xent import nt_xent_terms
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import Backbone
from barlowtwins.optim import build_optimizer


def _pair(seed=0, n=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True),
    )


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / (sum(a * a for a in u) ** 0.5 * sum(b * b for b in v) ** 0.5)


def test_nt_xent_matches_simclr_eq_1():
    z_a, z_b = _pair()
    tau, n = 0.3, len(z_a)
    z = [list(r.unbind(0)) for r in torch.cat([z_a, z_b]).unbind(0)]

    def pair_loss(i, j):  # SimCLR eq. 1, l(i, j)
        denominator = sum(torch.exp(_cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(_cos(z[i], z[j]) / tau) / denominator)

    reference = sum(pair_loss(k, n + k) + pair_loss(n + k, k) for k in range(n)) / (2 * n)
    ours = nt_xent_terms(z_a, z_b, tau)["loss"]
    torch.testing.assert_close(ours, reference)
    for g, e in zip(torch.autograd.grad(ours, (z_a, z_b)), torch.autograd.grad(reference, (z_a, z_b)), strict=True):
        torch.testing.assert_close(g, e)


def test_byol_loss_matches_normalised_mse():
    p, z = _pair(1)
    rows = [(list(a.unbind(0)), list(b.unbind(0))) for a, b in zip(p.unbind(0), z.unbind(0))]
    reference = sum(
        sum((x / sum(v * v for v in a) ** 0.5 - y / sum(v * v for v in b) ** 0.5) ** 2 for x, y in zip(a, b))
        for a, b in rows
    ) / len(rows)
    ours = regression_loss(p, z)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, p)[0], torch.autograd.grad(reference, p)[0])
    assert torch.autograd.grad(regression_loss(p, z), z, allow_unused=True)[0] is None  # stop-gradient


def test_momentum_schedule():
    assert target_momentum(0, 100) == pytest.approx(0.996)
    assert target_momentum(100, 100) == pytest.approx(1.0)
    assert target_momentum(50, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2)


def _tiny_backbone() -> Backbone:
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU())
    return Backbone(module, 16, frozenset({"1.bias", "2.weight", "2.bias"}))


def _build(method: str, **model) -> nn.Module:
    torch.manual_seed(0)
    return METHODS[method](_tiny_backbone(), ModelConfig(projector="8-8", **model), LossConfig())


def _views(n=6):
    return torch.randn(n, 3, 2, 2), torch.randn(n, 3, 2, 2)


def test_byol_target_update_no_gradient_and_not_optimised():
    byol = _build("byol")
    optimizer = build_optimizer(byol, byol.no_weight_decay(), "sgd", 256, 0.5, 0.5, 0.0)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    targets = list(byol.target_backbone.parameters()) + list(byol.target_projector.parameters())
    assert targets and all(not p.requires_grad and id(p) not in optimised for p in targets)
    assert {id(p) for p in byol.predictor.parameters()} <= optimised

    before = [p.detach().clone() for p in targets]
    byol(*_views())["loss"].backward()
    assert all(p.grad is None for p in targets)
    optimizer.step()
    byol.after_step(3, 10)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 3 / 10) + 1) / 2
    online = list(byol.backbone.parameters()) + list(byol.projector.parameters())
    for xi, xi_0, theta in zip(targets, before, online, strict=True):
        torch.testing.assert_close(xi, tau * xi_0 + (1 - tau) * theta.detach())
    assert byol.momentum.item() == pytest.approx(tau)


def test_byol_checkpoint_holds_the_target():
    byol = _build("byol")
    with torch.no_grad():
        for p in byol.target_projector.parameters():
            p.add_(1.0)  # the target now differs from a fresh copy of the online network
    state = byol.state_dict()
    assert any(k.startswith("target_backbone.") for k in state) and any(
        k.startswith("target_projector.") for k in state
    )
    restored = _build("byol")
    restored.load_state_dict(state)
    for a, b in zip(restored.target_projector.parameters(), byol.target_projector.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_simclr_runs_through_the_method_interface():
    simclr = _build("simclr")
    terms = simclr(*_views())
    assert set(simclr.logged) == set(terms) and terms["loss"].requires_grad


def test_stop_gradient_blocks_branch_b():
    model = _build("barlow_twins", stop_gradient=True)
    y_a, y_b = (v.requires_grad_() for v in _views())
    model(y_a, y_b)["loss"].backward()
    assert y_b.grad is None and y_a.grad.abs().sum() > 0
    symmetric = _build("barlow_twins")
    y_a, y_b = (v.requires_grad_() for v in _views())
    symmetric(y_a, y_b)["loss"].backward()
    assert y_b.grad.abs().sum() > 0


def test_predictor_on_branch_a_only():
    model = _build("barlow_twins", predictor="auto")
    assert [m.out_features for m in model.predictor if isinstance(m, nn.Linear)] == [8, 8]
    assert "predictor.1.weight" in model.no_weight_decay()  # its BN stays out of weight decay
    y_a, y_b = _views()
    loss = model(y_a, y_b)["loss"]
    z_a = model.predictor(model.projector(model.backbone(y_a)))
    z_b = model.projector(model.backbone(y_b))
    torch.testing.assert_close(loss, model.loss(z_a, z_b))
    swapped = model.loss(model.projector(model.backbone(y_a)), model.predictor(z_b))
    assert not torch.allclose(loss, swapped)


def test_predictor_must_end_at_the_projector_width():
    from barlowtwins.errors import BarlowTwinsError

    with pytest.raises(BarlowTwinsError, match="output width 8"):
        _build("barlow_twins", predictor="16-4")


@pytest.mark.parametrize(
    ("method", "key", "value"),
    [("simclr", "loss.scale", 0.1), ("byol", "loss.lambd", 0.01), ("simclr", "model.momentum", 0.99)],
)
def test_a_setting_the_method_does_not_read_is_refused(method, key, value):
    """A Barlow Twins-only (or BYOL-only) setting changed for another method: one line, not silently ignored."""
    from barlowtwins import make_config
    from barlowtwins.train.build import build_method

    section, field = key.split(".")
    overrides = {"model": {"method": method, "projector": "8-8"}, "loss": {}}
    overrides[section][field] = value
    config = make_config(None, [overrides])
    with pytest.raises(BarlowTwinsError, match=f"{key}={value!r} has no effect with --method {method}"):
        build_method(config)


def test_small_views_average_algorithm_1_over_the_view_pairs():
    """Multi-crop: the loss and its terms are the mean over (A, B), (A, small j), (B, small j) of Algorithm 1,
    the small views going through the network as one batch; the diagnostics stay (A, B)'s."""
    model = _build("barlow_twins")
    y_a, y_b = _views()
    y_small = torch.randn(2 * 6, 3, 2, 2)  # two small views of each of the 6 images
    terms = model(y_a, y_b, y_small)
    z_a, z_b = (model.projector(model.backbone(y)) for y in (y_a, y_b))
    z_s = model.projector(model.backbone(y_small))
    pairs = [(z_a, z_b), (z_a, z_s[:6]), (z_a, z_s[6:]), (z_b, z_s[:6]), (z_b, z_s[6:])]
    lambd = LossConfig().lambd
    expected = torch.stack([algorithm_1(p, q, lambd) for p, q in pairs]).mean()
    torch.testing.assert_close(terms["loss"].double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["invariance"] + terms["redundancy"], terms["loss"])
    torch.testing.assert_close(terms["on_diag_mean"], model(y_a, y_b)["on_diag_mean"])
    y_small.requires_grad_()
    model(y_a, y_b, y_small)["loss"].backward()
    assert y_small.grad[:6].abs().sum() > 0 and y_small.grad[6:].abs().sum() > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"augment.small_views": 2, "model.method": "simclr"}, "small_views are for --method barlow_twins"),
        ({"augment.small_views": 2, "model.stop_gradient": True}, "without a predictor or stop-gradient"),
        ({"augment.small_views": 2, "data.views": "pil"}, "set data.views=batched"),
        ({"augment.small_views": -1}, "augment.small_views must be >= 0"),
    ],
)
def test_small_views_are_refused_where_they_would_not_apply(settings, message):
    from barlowtwins import make_config
    from barlowtwins.recipes import override

    with pytest.raises(BarlowTwinsError, match=message):
        make_config("cifar10", [override(k, v) for k, v in settings.items()])
