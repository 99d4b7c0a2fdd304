"""Plain references for the loss tests: Algorithm 1 and equation 2 of the paper, in float64, written without the
package (tests in several folders compare against them)."""

from __future__ import annotations

import torch


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal elements of a square matrix (the official code's helper)."""
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def algorithm_1(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Algorithm 1 of the paper, written plainly in float64, with BatchNorm1d(affine=False) normalisation."""
    bn = torch.nn.BatchNorm1d(z_a.shape[1], affine=False, eps=eps).double()
    n = z_a.shape[0]
    c = bn(z_a.double()).T @ bn(z_b.double()) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def eq2_cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Equation 2 verbatim: mean-centred z, C_ij = sum_b za_bi zb_bj / (||za_.i|| ||zb_.j||)."""
    za = z_a.double() - z_a.double().mean(0)
    zb = z_b.double() - z_b.double().mean(0)
    return (za.T @ zb) / (za.norm(dim=0)[:, None] * zb.norm(dim=0)[None, :])
