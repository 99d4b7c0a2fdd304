"""LARS checked by hand, 1-D parameter exclusion, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from barlowtwins import LARS, build_backbone, build_optimizer, lr_factor, param_groups
from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import one_d_parameter_names
from barlowtwins.optim import set_learning_rate


def test_one_lars_step_by_hand():
    p = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ||p|| = 5
    p.grad = torch.tensor([[1.0, 0.0]])
    lr, wd, eta = 0.5, 0.1, 0.001
    LARS([p], lr=lr, weight_decay=wd, momentum=0.9, eta=eta).step()
    update = torch.tensor([[1.0 + 0.1 * 3.0, 0.1 * 4.0]])  # grad + wd * p = [1.3, 0.4]
    trust = eta * 5.0 / math.sqrt(1.3**2 + 0.4**2)
    expected = torch.tensor([[3.0, 4.0]]) - lr * trust * update
    torch.testing.assert_close(p.detach(), expected)


def test_lars_momentum_accumulates_adapted_updates():
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    opt = LARS([p], lr=1.0, weight_decay=0.0, momentum=0.9, eta=0.1)
    p.grad = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    opt.step()  # trust = 0.1 * 1 / 2 = 0.05; m = [0, 0.1]
    first = p.detach().clone()
    torch.testing.assert_close(first, torch.tensor([[1.0, -0.1], [0.0, 0.0]]))
    p.grad = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    opt.step()  # trust = 0.1 * ||p|| / 2; m = 0.9 * 0.1 + trust * 2
    trust = 0.1 * first.norm().item() / 2.0
    expected_m = 0.9 * 0.1 + trust * 2.0
    torch.testing.assert_close(p.detach(), first - torch.tensor([[0.0, expected_m], [0.0, 0.0]]))


def test_excluded_group_is_plain_momentum_sgd_without_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(
        model, one_d_parameter_names(model), "lars", batch_size=256, lr_weights=0.2, lr_biases=0.01, weight_decay=0.5
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for name in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), before[name] - 0.01)
    weight = dict(model.named_parameters())["0.weight"].detach()
    update = 1 + 0.5 * before["0.weight"]
    trust = 0.001 * before["0.weight"].norm() / update.norm()
    torch.testing.assert_close(weight, before["0.weight"] - 0.2 * trust * update)


def test_zero_norm_parameter_takes_an_unadapted_step():
    p = torch.zeros(2, 2, requires_grad=True)
    p.grad = torch.ones(2, 2)
    LARS([p], lr=0.1, momentum=0.0).step()
    torch.testing.assert_close(p.detach(), torch.full((2, 2), -0.1))


def test_param_groups_split_one_d_parameters_exactly_once():
    model = twin()
    groups = param_groups(model, model.no_weight_decay(), lr_weights=0.2, lr_biases=0.0048, weight_decay=1.5e-6)
    weights, one_d = groups[0]["params"], groups[1]["params"]
    assert len(weights) + len(one_d) == len(list(model.parameters()))
    assert {id(p) for p in weights}.isdisjoint({id(p) for p in one_d})
    bn_and_bias = [p for n, p in model.named_parameters() if "bn" in n or "bias" in n or "projector.1" in n]
    assert {id(p) for p in bn_and_bias} <= {id(p) for p in one_d}
    assert all(p.ndim > 1 for p in weights) and all(p.ndim == 1 for p in one_d)
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1.5e-6


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_learning_rates_scale_with_batch_size(name):
    model = nn.Linear(3, 3)
    opt = build_optimizer(
        model, one_d_parameter_names(model), name, batch_size=2048, lr_weights=0.2, lr_biases=0.0048, weight_decay=1e-6
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 8)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0048 * 8)
    set_learning_rate(opt, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8) and opt.param_groups[1]["lr"] == pytest.approx(0.0192)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    total, warmup, final = 1000, 100, 0.01
    assert lr_factor(0, total, warmup, final) == 0.0
    assert lr_factor(50, total, warmup, final) == pytest.approx(0.5)
    assert lr_factor(100, total, warmup, final) == pytest.approx(1.0)
    assert lr_factor(550, total, warmup, final) == pytest.approx(final + (1 - final) * 0.5)  # cosine midpoint
    assert lr_factor(1000, total, warmup, final) == pytest.approx(final)
    after_warmup = [lr_factor(s, total, warmup, final) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


def test_schedule_matches_the_official_code():
    """facebookresearch/barlowtwins main.py adjust_learning_rate, with its 0.001 end ratio."""
    total, warmup, base = 500, 50, 1.6
    for step in (0, 10, 49, 50, 51, 200, 499):
        if step < warmup:
            official = base * step / warmup
        else:
            q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            official = base * q + base * 0.001 * (1 - q)
        assert base * lr_factor(step, total, warmup, 0.001) == pytest.approx(official)


def test_schedule_without_warmup_starts_at_peak():
    assert lr_factor(0, 10, 0, 0.0) == 1.0


def twin(arch: str = "resnet18", projector: str = "64-64-32", small_stem: bool = True, formulation: str = "auto"):
    """The Barlow Twins method as the training loop builds it."""
    return METHODS["barlow_twins"](
        build_backbone(arch, small_stem), ModelConfig(projector=projector), LossConfig(formulation=formulation)
    )


class _SoloLearnLARS(torch.optim.Optimizer):
    """Literal transcription of solo-learn's ``solo/utils/lars.py`` step (dampening 0, no Nesterov), the
    reference for ``clip_lr``: solo-learn's ``exclude_bias_n_norm`` skips 1-D parameters (no decay, no trust)."""

    def __init__(self, params, lr, momentum, weight_decay, eta, eps=1e-8, clip_lars_lr=True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      clip_lars_lr=clip_lars_lr))  # fmt: skip

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                d_p = p.grad
                p_norm = torch.norm(p.data)
                g_norm = torch.norm(p.grad.data)
                if p.ndim != 1:  # noqa: SIM102 (their nesting, kept literal)
                    if p_norm != 0 and g_norm != 0:
                        lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                        lars_lr *= group["eta"]
                        if group["clip_lars_lr"]:
                            lars_lr = min(lars_lr / group["lr"], 1)
                        d_p = d_p.add(p, alpha=weight_decay)
                        d_p *= lars_lr
                param_state = self.state[p]
                if "momentum_buffer" not in param_state:
                    buf = param_state["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    buf = param_state["momentum_buffer"]
                    buf.mul_(momentum).add_(d_p)
                p.add_(buf, alpha=-group["lr"])


@pytest.mark.parametrize("lr", [0.01, 0.3, 30.0])  # 0.01: the clip binds at every step; 0.3, 30: never
def test_clip_lr_is_solo_learns_lars(lr):
    """Three steps on random tensors (a 2-D weight with decay and trust, a 1-D bias with neither), changing lr
    between steps as a schedule does, against the literal transcription of solo-learn's update."""
    generator = torch.Generator().manual_seed(3)
    weight0, bias0 = torch.randn(8, 5, generator=generator), torch.randn(5, generator=generator)
    grads = [(torch.randn(8, 5, generator=generator), torch.randn(5, generator=generator)) for _ in range(3)]
    ours = [weight0.clone().requires_grad_(), bias0.clone().requires_grad_()]
    theirs = [weight0.clone().requires_grad_(), bias0.clone().requires_grad_()]
    wd, eta = 1e-4, 0.02
    optimizer = LARS(
        [
            {"params": [ours[0]], "weight_decay": wd, "lars_adaptation": True},
            {"params": [ours[1]], "weight_decay": 0.0, "lars_adaptation": False},
        ],
        lr=lr, momentum=0.9, eta=eta, clip_lr=True,
    )  # fmt: skip
    reference = _SoloLearnLARS(theirs, lr=lr, momentum=0.9, weight_decay=wd, eta=eta)
    clipped = []
    for i, (g_weight, g_bias) in enumerate(grads):
        for opt in (optimizer, reference):
            for group in opt.param_groups:
                group["lr"] = lr * (i + 1) / 3
        for params in (ours, theirs):
            params[0].grad, params[1].grad = g_weight.clone(), g_bias.clone()
        trust = eta * ours[0].norm() / (g_weight.norm() + wd * ours[0].norm())
        clipped.append(bool(trust > lr * (i + 1) / 3))
        optimizer.step()
        reference.step()
        torch.testing.assert_close(ours[0].detach(), theirs[0].detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours[1].detach(), theirs[1].detach(), rtol=1e-6, atol=1e-7)
    assert all(clipped) if lr == 0.01 else not any(clipped)  # both regimes are exercised


def test_clip_lr_caps_the_adapted_learning_rate_by_hand():
    """With a learning rate above the trust ratio the step is the trust ratio times the gradient."""
    p = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ||p|| = 5
    p.grad = torch.tensor([[0.0, 1.0]])
    lr, eta = 100.0, 0.02
    LARS([p], lr=lr, weight_decay=0.0, momentum=0.9, eta=eta, clip_lr=True).step()
    trust = eta * 5.0 / 1.0  # 0.1 < lr: the adapted lr is the trust ratio itself, not lr * trust
    torch.testing.assert_close(p.detach(), torch.tensor([[3.0, 4.0 - trust]]))


def test_build_optimizer_passes_clip_lr():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    no_decay = {name for name, p in model.named_parameters() if p.ndim == 1}
    optimizer = build_optimizer(model, no_decay, "lars", 256, 0.3, 0.3, 1e-4, clip_lr=True)
    assert [g["clip_lr"] for g in optimizer.param_groups] == [True, True]
    assert [g["lars_adaptation"] for g in optimizer.param_groups] == [True, False]


def test_loss_scale_scales_gradients_not_the_logged_loss():
    """loss.scale = 0.1: every gradient is 0.1 x that of scale 1; loss, terms and diagnostics are unchanged."""
    torch.manual_seed(0)
    y_a, y_b = torch.randn(6, 3, 8, 8).double(), torch.randn(6, 3, 8, 8).double()
    results = []
    for scale in (1.0, 0.1):
        torch.manual_seed(1)
        model = METHODS["barlow_twins"](
            build_backbone("resnet18", small_stem=True), ModelConfig(projector="16-16-32"), LossConfig(scale=scale)
        ).double()
        terms = model(y_a, y_b)
        terms["loss"].backward()
        results.append((terms, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (terms1, grads1), (terms01, grads01) = results
    for name in ("loss", "invariance", "redundancy", "on_diag_mean", "off_diag_rms"):
        torch.testing.assert_close(terms01[name], terms1[name])
    nonzero = [name for name, grad in grads1.items() if grad.norm() > 0]  # zero_init_residual zeroes some
    assert len(nonzero) > len(grads1) // 2
    for name, grad in grads1.items():
        assert ((grads01[name] - 0.1 * grad).norm() <= 1e-10 * grad.norm()).item(), name
