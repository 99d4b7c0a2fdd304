"""The loss against an independent plain implementation of Algorithm 1, invariances and errors."""

from __future__ import annotations

import pytest
import torch
from loss_reference import algorithm_1, eq2_cross_correlation, off_diagonal

from barlowtwins import BarlowTwinsLoss, barlow_twins_loss, barlow_twins_terms


@pytest.mark.parametrize("formulation", ["cross", "gram", "auto"])
@pytest.mark.parametrize(("n", "d"), [(16, 8), (8, 64), (32, 32)])
def test_value_and_gradients_match_algorithm_1(formulation, n, d):
    z_a = torch.randn(n, d, requires_grad=True)
    z_b = (0.5 * z_a.detach() + torch.randn(n, d)).requires_grad_(True)
    ours = barlow_twins_loss(z_a, z_b, lambd=0.0051, formulation=formulation)
    ours.backward()
    grads = z_a.grad.clone(), z_b.grad.clone()

    ref_a = z_a.detach().double().requires_grad_(True)
    ref_b = z_b.detach().double().requires_grad_(True)
    reference = algorithm_1(ref_a, ref_b, lambd=0.0051)
    reference.backward()

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0].double(), ref_a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1].double(), ref_b.grad, rtol=1e-4, atol=1e-6)


def test_cross_correlation_is_equation_2():
    z_a, z_b = torch.randn(64, 10), torch.randn(64, 10)
    terms = barlow_twins_terms(z_a, z_b, lambd=1.0, formulation="cross", eps=0.0)
    c = eq2_cross_correlation(z_a, z_b)
    assert terms.invariance.item() == pytest.approx((1 - torch.diagonal(c)).pow(2).sum().item(), rel=1e-5)
    assert terms.redundancy.item() == pytest.approx(off_diagonal(c).pow(2).sum().item(), rel=1e-5)
    assert terms.on_diag_mean.item() == pytest.approx(torch.diagonal(c).mean().item(), abs=1e-6)
    assert terms.off_diag_abs_mean.item() == pytest.approx(off_diagonal(c).abs().mean().item(), rel=1e-5)
    assert terms.off_diag_rms.item() == pytest.approx(off_diagonal(c).pow(2).mean().sqrt().item(), rel=1e-5)


def test_terms_add_up_and_lambda_weights_the_redundancy():
    z_a, z_b = torch.randn(32, 16), torch.randn(32, 16)
    one = barlow_twins_terms(z_a, z_b, lambd=1.0)
    tenth = barlow_twins_terms(z_a, z_b, lambd=0.1)
    assert one.loss.item() == pytest.approx((one.invariance + one.redundancy).item())
    assert tenth.redundancy.item() == pytest.approx(0.1 * one.redundancy.item(), rel=1e-6)
    assert tenth.invariance.item() == pytest.approx(one.invariance.item())


def test_lambda_zero_leaves_only_the_invariance_term():
    z_a, z_b = torch.randn(32, 16), torch.randn(32, 16)
    terms = barlow_twins_terms(z_a, z_b, lambd=0.0)
    c = eq2_cross_correlation(z_a, z_b)
    assert terms.redundancy.item() == 0.0
    assert terms.loss.item() == pytest.approx((1 - torch.diagonal(c)).pow(2).sum().item(), rel=1e-4)


@pytest.mark.parametrize("formulation", ["cross", "gram"])
def test_invariant_to_per_dimension_affine_rescaling(formulation):
    z_a, z_b = torch.randn(48, 12), torch.randn(48, 12)
    scale_a, shift_a = torch.rand(12) * 5 + 0.1, torch.randn(12) * 3
    scale_b, shift_b = torch.rand(12) * 5 + 0.1, torch.randn(12) * 3
    plain = barlow_twins_loss(z_a, z_b, formulation=formulation, eps=0.0)
    rescaled = barlow_twins_loss(z_a * scale_a + shift_a, z_b * scale_b + shift_b, formulation=formulation, eps=0.0)
    assert rescaled.item() == pytest.approx(plain.item(), rel=1e-4)


def test_perfect_twins_with_decorrelated_units_have_zero_loss():
    q, _ = torch.linalg.qr(torch.randn(64, 8))  # orthonormal columns
    z = q - q.mean(0)  # centring keeps the columns almost orthogonal; standardise exactly below
    z = torch.linalg.qr(z)[0] * 8.0
    z = z - z.mean(0)
    loss = barlow_twins_loss(z, z.clone(), eps=0.0)
    assert loss.item() < 1e-3


def test_collapsed_representation_is_penalised():
    z = torch.randn(32, 1).repeat(1, 16)  # every unit carries the same signal
    terms = barlow_twins_terms(z, z, lambd=0.0051)
    assert terms.invariance.item() < 1e-3  # the views agree ...
    assert terms.redundancy.item() == pytest.approx(0.0051 * 16 * 15, rel=1e-3)  # ... but all units are redundant


def test_loss_is_fp32_under_bf16_autocast():
    z_a, z_b = torch.randn(32, 16), torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = barlow_twins_loss(z_a.bfloat16(), z_b.bfloat16())
    assert ours.dtype == torch.float32
    reference = algorithm_1(z_a.bfloat16().double(), z_b.bfloat16().double(), lambd=0.0051)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_clear_errors_for_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(ValueError, match="shape"):
        barlow_twins_loss(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="shape"):
        barlow_twins_loss(torch.randn(4, 8, 2), torch.randn(4, 8, 2))
    with pytest.raises(ValueError, match="formulation"):
        BarlowTwinsLoss(formulation="fast")


def test_module_matches_function_and_exposes_terms():
    z_a, z_b = torch.randn(16, 32), torch.randn(16, 32)
    module = BarlowTwinsLoss(lambd=0.01, formulation="gram")
    assert module(z_a, z_b).item() == pytest.approx(barlow_twins_loss(z_a, z_b, lambd=0.01).item(), rel=1e-5)
    terms = module.terms(z_a, z_b)
    assert terms.formulation == "gram" and terms.off_diag_abs_mean is None
