"""One batch standardisation (paper eq. 2) for the loss (global batch) and the monitor (this process's batch)."""

from __future__ import annotations

import pytest
import torch

from barlowtwins.losses.barlow_twins import (
    BATCH_NORM_EPS,
    barlow_twins_terms,
    batch_mean,
    normalize_for,
    standardize,
    standardize_local,
)
from barlowtwins.train.monitor import cross_correlation, singular_values


def _reference(z: torch.Tensor, eps: float = BATCH_NORM_EPS) -> torch.Tensor:
    """By hand: (z - mean) / sqrt(biased variance + eps), per column."""
    mean = z.sum(dim=0) / z.shape[0]
    variance = ((z - mean) ** 2).sum(dim=0) / z.shape[0]
    return (z - mean) / torch.sqrt(variance + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("global_batch", [True, False])
def test_standardize_matches_a_plain_reference(dtype, global_batch):
    z = torch.randn(37, 11, dtype=dtype) * torch.linspace(1, 20, 11, dtype=dtype) + 5
    out = standardize(z, len(z), global_batch=global_batch)
    assert out.dtype == dtype
    assert torch.allclose(out, _reference(z), rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.mean(dim=0), torch.zeros(11, dtype=dtype), atol=1e-5)
    assert torch.allclose(out.var(dim=0, unbiased=False), torch.ones(11, dtype=dtype), atol=1e-4)
    assert torch.allclose(batch_mean(z, len(z), global_batch), z.mean(dim=0), rtol=1e-6, atol=1e-6)


def test_eps_is_batch_norms_and_a_constant_column_maps_to_zero():
    z = torch.randn(16, 4)
    z[:, 2] = 3.0
    out = standardize(z, len(z))
    assert torch.equal(out[:, 2], torch.zeros(16))
    bn = torch.nn.BatchNorm1d(4, affine=False, eps=BATCH_NORM_EPS).train()
    assert torch.allclose(out, bn(z), rtol=1e-5, atol=1e-4)  # the official code's BatchNorm1d(affine=False)


def test_local_is_global_in_one_process_and_in_fp32():
    z = torch.randn(64, 9) * 4 - 1
    assert torch.equal(standardize_local(z), standardize(z, len(z)))  # no process group: one statistic
    half = z.bfloat16()
    out = standardize_local(half)
    assert out.dtype == torch.float32
    assert torch.allclose(out, _reference(half.float()), rtol=1e-5, atol=1e-5)
    double = z.double()
    assert standardize_local(double).dtype == torch.float32  # the monitor's figures are fp32


def test_local_standardisation_is_bit_identical_to_the_monitors_former_formula():
    """The monitor's numbers do not change: its former own code (mean along the batch) gives the same bits."""
    for shape in ((2, 3), (32, 64), (256, 300), (1000, 5)):
        z = torch.randn(*shape) * 3 + 1
        for column_slice in (z, z[:, : max(1, shape[1] // 2)]):  # the block of C is a non-contiguous slice
            former = column_slice.float() - column_slice.float().mean(dim=0)
            former = former * torch.rsqrt(former.square().mean(dim=0) + BATCH_NORM_EPS)
            assert torch.equal(standardize_local(column_slice), former)


def test_monitor_and_loss_share_the_standardisation():
    z_a = torch.randn(48, 10) * 2 + 3
    z_b = 0.5 * z_a + torch.randn(48, 10)
    za, zb = (normalize_for("barlow_twins", z, len(z), BATCH_NORM_EPS) for z in (z_a, z_b))
    assert torch.equal(za, standardize_local(z_a))
    c = cross_correlation(z_a, z_b)
    assert torch.equal(c, za.T @ zb / len(za))
    terms = barlow_twins_terms(z_a, z_b, 0.01, "cross")
    assert torch.diagonal(c).mean().item() == pytest.approx(terms.on_diag_mean.item(), rel=1e-6)
    assert torch.equal(singular_values(z_a), torch.linalg.svdvals(za))


def test_cross_covariance_centres_with_the_same_batch_mean():
    z = torch.randn(20, 6) + 2
    centred = normalize_for("cross_covariance", z, len(z), BATCH_NORM_EPS)
    assert torch.allclose(centred, z - z.mean(dim=0), atol=1e-6)
