"""The ``cross`` (D x D) and ``gram`` (batch-space) formulations are one loss (paper eq. 1-2).

Both are compared, values and gradients, with Algorithm 1 of the paper written out here in fp64
(official code: ``BatchNorm1d(affine=False)`` on each z, ``c = z_a.T @ z_b / N``), over batch sizes and
widths on both sides of the ``auto`` switch, in fp32 and with bf16 projector outputs under autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from barlowtwins.config import LossConfig
from barlowtwins.losses.barlow_twins import barlow_twins_terms, choose_formulation

# (N, D): D <= 2N (auto picks cross) and D > 2N (auto picks gram), from tiny to the benchmark's N.
SHAPES = [(3, 2), (16, 16), (16, 1024), (64, 128), (64, 2048), (256, 64), (256, 2048)]
RTOL = 1e-5  # fp32 against fp64; errors are per tensor, ||a - b|| / ||b||


def algorithm_1(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = LossConfig.lambd) -> torch.Tensor:
    """The paper's Algorithm 1 with the official code's normalisation, in fp64."""
    z_a = F.batch_norm(z_a.double(), None, None, training=True, eps=1e-5)
    z_b = F.batch_norm(z_b.double(), None, None, training=True, eps=1e-5)
    c = z_a.T @ z_b / z_a.shape[0]
    c_diff = (c - torch.eye(c.shape[0], dtype=c.dtype)).square()
    off_diagonal = ~torch.eye(c.shape[0], dtype=torch.bool)
    c_diff[off_diagonal] *= lambd
    return c_diff.sum()


def _projections(n: int, d: int, correlated: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent views, or views that agree up to noise (a trained network: C near its optimum)."""
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g) * 3 + 1
    noise = torch.randn(n, d, generator=g)
    z_b = z_a + 0.1 * noise if correlated else noise
    return z_a, z_b


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).norm() / expected.norm()).item()


def _value_and_grads(z_a, z_b, formulation):
    z_a, z_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    if formulation == "reference":
        loss = algorithm_1(z_a, z_b)
    else:
        loss = barlow_twins_terms(z_a, z_b, formulation=formulation).loss
    loss.backward()
    return loss.detach(), z_a.grad, z_b.grad


@pytest.mark.parametrize("correlated", [False, True], ids=["independent", "correlated"])
@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_both_formulations_equal_algorithm_1_in_fp32(n, d, correlated):
    z_a, z_b = _projections(n, d, correlated)
    expected = _value_and_grads(z_a.double(), z_b.double(), "reference")
    for formulation in ("cross", "gram"):
        loss, grad_a, grad_b = _value_and_grads(z_a, z_b, formulation)
        assert loss.dtype == torch.float32
        assert _relative_error(loss, expected[0]) < RTOL, formulation
        assert _relative_error(grad_a, expected[1]) < RTOL, formulation
        assert _relative_error(grad_b, expected[2]) < RTOL, formulation


@pytest.mark.parametrize(("n", "d"), [(16, 16), (64, 1024), (256, 2048)])
def test_bf16_autocast_still_computes_the_loss_in_fp32(n, d):
    """Projector outputs in bf16 (as autocast's last Linear gives them): the loss is that of their fp32 values."""
    g = torch.Generator().manual_seed(1)
    h_a, h_b = torch.randn(n, 64, generator=g), torch.randn(n, 64, generator=g)
    weight = torch.randn(d, 64, generator=g) / 8
    results = {}
    for formulation in ("cross", "gram"):
        w = weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_a, z_b = F.linear(h_a, w), F.linear(h_b, w)
            z_a.retain_grad()
            assert z_a.dtype == torch.bfloat16
            terms = barlow_twins_terms(z_a, z_b, formulation=formulation)
        assert terms.loss.dtype == torch.float32
        terms.loss.backward()
        results[formulation] = (terms.loss.detach(), z_a.grad, w.grad, z_a.detach(), z_b.detach())
    z_a, z_b = results["cross"][3], results["cross"][4]
    assert torch.equal(z_a, results["gram"][3])
    reference, ref_grad_a, _ = _value_and_grads(z_a.double(), z_b.double(), "reference")
    for formulation in ("cross", "gram"):
        loss, grad_a, grad_w, _, _ = results[formulation]
        assert _relative_error(loss, reference) < RTOL, formulation
        # z_a.grad is stored in bf16 (8-bit mantissa): rounding alone leaves up to 2^-9 relative per entry.
        assert grad_a.dtype == torch.bfloat16
        assert _relative_error(grad_a, ref_grad_a) < 2**-8, formulation
    # The weight gradient goes through bf16 matmuls in backward; the two forms feed them the same
    # bf16-rounded z gradients up to an ulp, so they agree to bf16 precision.
    assert _relative_error(results["gram"][2], results["cross"][2].double()) < 2**-7


def test_fp64_inputs_stay_fp64():
    z_a, z_b = _projections(8, 32, correlated=False)
    for formulation in ("cross", "gram"):
        loss = barlow_twins_terms(z_a.double(), z_b.double(), formulation=formulation).loss
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, algorithm_1(z_a, z_b), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("n", "d", "expected"), [(256, 512, "cross"), (256, 513, "gram"), (8, 1024, "gram")])
def test_auto_picks_the_cheaper_form(n, d, expected):
    """cross costs ~2 N D^2 flops and gram ~4 N^2 D: gram is cheaper once D > 2N."""
    assert choose_formulation(n, d) == expected
    z_a, z_b = _projections(n, d, correlated=False)
    terms = barlow_twins_terms(z_a, z_b)  # default: auto
    assert terms.formulation == expected
    assert _relative_error(terms.loss, algorithm_1(z_a, z_b)) < RTOL


def test_diagnostics_agree_between_forms():
    z_a, z_b = _projections(32, 256, correlated=True)
    cross = barlow_twins_terms(z_a, z_b, formulation="cross")
    gram = barlow_twins_terms(z_a, z_b, formulation="gram")
    # The two terms are compared at 1e-5 of the loss they add up to: with C_ii = 0.9994 here, each
    # 1 - C_ii keeps only ~3 significant digits in fp32 (in Algorithm 1 as much as in either form), so the
    # small invariance term alone carries ~1e-4 relative rounding.
    for name in ("invariance", "redundancy"):
        torch.testing.assert_close(getattr(gram, name), getattr(cross, name), rtol=0, atol=RTOL * cross.loss.item())
    for name in ("on_diag_mean", "off_diag_rms"):
        torch.testing.assert_close(getattr(gram, name), getattr(cross, name), rtol=RTOL, atol=0)
    assert gram.off_diag_abs_mean is None and cross.off_diag_abs_mean is not None
