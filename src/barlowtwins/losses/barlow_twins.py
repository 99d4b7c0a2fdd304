"""The Barlow Twins objective (paper eq. 1-2, Algorithm 1), in two exact formulations.

    L = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2,     C = Za^T Zb / N

with Za, Zb the projector outputs standardised along the batch (mean 0, std 1, no affine).

``cross`` forms the D x D matrix C as Algorithm 1 does: O(N D^2) time, O(D^2) memory.
``gram`` never forms C. Its diagonal is a column-wise dot product, and its squared Frobenius norm is
    ||Za^T Zb||_F^2 = sum(Za Za^T o Zb Zb^T)          (o: element-wise product)
so the off-diagonal sum is ||C||_F^2 - sum_i C_ii^2 at O(N^2 D) time and O(N^2 + N D) memory. Both give
the same loss and gradients; ``gram`` makes projector widths far beyond the paper's 16,384 affordable.

Table 5's objectives (paper §4) change one piece each (``objective``):

* ``invariance_only`` / ``redundancy_only``: the loss is one of the two terms (both are still logged);
* ``feature_norm``: z standardised along the batch, then L2-normalised along the features (no mean
  subtraction), and C the covariance ``Za^T Zb / N`` of those rows instead of the cross-correlation;
* ``cross_covariance``: z only centred along the batch (not scaled), C their cross-covariance ``Za^T Zb / N``;
* ``cross_entropy``: ``-log sum_i exp(C_ii / tau) + lambda log sum_i sum_{j != i} exp(max(C_ij, 0) / tau)``.

The paper's alternative (§5.2 and appendix A, "similar performances (not shown)"), ``auto_correlation``, keeps
the invariance term on the cross-correlation and takes the redundancy term from the off-diagonal of one
network's auto-correlation ``A = Za^T Za / N`` (branch A's), as the entropy term of eq. 8 reads:
``sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} A_ij^2``.

All but the cross-entropy only change Za, Zb or whose correlation the redundancy term sums
(``||Za^T Za||_F^2 = sum(Za Za^T o Za Za^T)``), so ``gram`` expresses them exactly; the cross-entropy needs
every C_ij and therefore ``cross`` (``auto`` picks it).

Under torch.distributed the loss is that of the global batch: z is standardised with global-batch
statistics, ``cross`` sums the per-process partial C over processes (D^2 numbers of traffic per step),
``gram`` gathers the standardised z (2 N_global D numbers) and each process computes its rows of the
N x N products. All collectives are autograd-aware.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from barlowtwins.config import FORMULATIONS, OBJECTIVES, LossConfig
from barlowtwins.distributed import all_gather_cat, all_reduce_sum, is_distributed

BATCH_NORM_EPS = 1e-5  # the official code standardises with BatchNorm1d(affine=False), whose eps this is
NEEDS_CROSS = frozenset({"cross_entropy"})  # objectives that need every C_ij, not only diag(C) and ||C||_F
AUTO_CORRELATION = "auto_correlation"  # the redundancy term on Za^T Za / N instead of C (paper §5.2, appendix A)


class LossTerms(NamedTuple):
    """The loss, its two terms, and diagnostics that read the same whatever the loss magnitude.

    A healthy run drives ``on_diag_mean`` towards 1 and ``off_diag_rms`` towards 0. ``off_diag_abs_mean``
    needs C itself, so the ``gram`` formulation leaves it as None. Diagnostics carry no gradient. The
    off-diagonal figures are of the matrix the redundancy term sums (the auto-correlation for that objective).
    """

    loss: torch.Tensor
    invariance: torch.Tensor
    redundancy: torch.Tensor  # already multiplied by lambda
    on_diag_mean: torch.Tensor
    off_diag_rms: torch.Tensor
    off_diag_abs_mean: torch.Tensor | None
    formulation: str


def choose_formulation(batch_size: int, dim: int) -> str:
    """The cheaper exact formulation: ``cross`` costs ~2 N D^2 flops, ``gram`` ~4 N^2 D."""
    return "gram" if dim > 2 * batch_size else "cross"


def _global_count(local: int, device: torch.device) -> int:
    if not is_distributed():
        return local
    count = torch.tensor([local], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(count)
    return int(count.item())


def batch_mean(z: torch.Tensor, count: int, global_batch: bool = True) -> torch.Tensor:
    """Mean along the batch (dim 0) of ``count`` rows: the rows of every process (sums all-reduced under
    torch.distributed) when ``global_batch``, else this process's rows alone (no collective)."""
    total = z.sum(dim=0)
    return (all_reduce_sum(total) if global_batch else total) / count


def standardize(z: torch.Tensor, count: int, eps: float = BATCH_NORM_EPS, global_batch: bool = True) -> torch.Tensor:
    """Mean 0 and (biased) variance 1 along the batch of ``count`` rows: global statistics under
    torch.distributed (the loss), or this process's alone with ``global_batch=False`` (see :func:`batch_mean`).

    Biased variance makes ``Za^T Zb / N`` exactly eq. 2's normalised cross-correlation; ``eps`` matches
    BatchNorm1d(affine=False) of the official code.
    """
    centered = z - batch_mean(z, count, global_batch)
    return centered * torch.rsqrt(batch_mean(centered.square(), count, global_batch) + eps)


def standardize_local(z: torch.Tensor, eps: float = BATCH_NORM_EPS) -> torch.Tensor:
    """:func:`standardize` of ``z`` (N, D) in fp32 over this process's N rows only: what one process sees of the
    loss's Z without a collective (the monitor's pictures and spectrum run on the main process alone)."""
    return standardize(z.float(), len(z), eps, global_batch=False)


def normalize_for(objective: str, z: torch.Tensor, count: int, eps: float) -> torch.Tensor:
    """The Z of C = Za^T Zb / N for ``objective``: standardised (eq. 2), then L2 along features
    (``feature_norm``), or only centred (``cross_covariance``)."""
    if objective == "cross_covariance":
        return z - batch_mean(z, count)
    z = standardize(z, count, eps)
    return F.normalize(z, dim=1) if objective == "feature_norm" else z


def _objective_terms(objective: str, c, on_diag, off_diag_sq, lambd: float, temperature: float):
    """(invariance, redundancy) as the loss of ``objective`` counts them; see the module docstring."""
    if objective == "cross_entropy":
        off = c.masked_select(~torch.eye(c.shape[0], dtype=torch.bool, device=c.device))
        invariance = -torch.logsumexp(on_diag / temperature, dim=0)
        return invariance, lambd * torch.logsumexp(off.clamp_min(0) / temperature, dim=0)
    return (1 - on_diag).square().sum(), lambd * off_diag_sq


def _correlation_sums(formulation: str, za: torch.Tensor, zb: torch.Tensor, zr: torch.Tensor, count: int):
    """(C or None, diag(C), off-diagonal sum of squares of R, mean |off-diagonal R| or None) for
    C = Za^T Zb / N and R = Za^T Zr / N (R is C unless ``zr`` is ``za``: the auto-correlation)."""
    dim = za.shape[1]
    if formulation == "cross":
        c = all_reduce_sum(za.T @ zb) / count
        r = c if zr is zb else all_reduce_sum(za.T @ zr) / count
        on_diag, r_diag = torch.diagonal(c), torch.diagonal(r)
        with torch.no_grad():
            off_diag_abs_mean = (r.abs().sum() - r_diag.abs().sum()) / (dim * (dim - 1))
        return c, on_diag, r.square().sum() - r_diag.square().sum(), off_diag_abs_mean
    # Each process takes its own rows of Za Za^T o Zr Zr^T (N_local x N_global), so the O(N^2 D) work is
    # split over processes like the partial C of ``cross``; the sums are then all-reduced.
    za_all = all_gather_cat(za)
    gram_a = za @ za_all.T
    gram_r = gram_a if zr is za else zr @ all_gather_cat(zr).T
    on_diag = all_reduce_sum((za * zb).sum(dim=0)) / count
    r_diag = on_diag if zr is zb else all_reduce_sum((za * zr).sum(dim=0)) / count
    frobenius_sq = all_reduce_sum((gram_a * gram_r).sum()) / count**2
    return None, on_diag, frobenius_sq - r_diag.square().sum(), None


def _check_inputs(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must both have shape (batch, dim); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.shape[0] < 2:
        raise ValueError(
            f"batch size must be at least 2 to normalise along the batch (paper eq. 2); got {z_a.shape[0]}"
        )


def barlow_twins_terms(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambd: float = LossConfig.lambd,
    formulation: str = LossConfig.formulation,
    eps: float = BATCH_NORM_EPS,
    objective: str = LossConfig.objective,
    temperature: float = LossConfig.temperature,
) -> LossTerms:
    """Loss, terms and diagnostics for projector outputs ``z_a``, ``z_b`` of shape (N, D).

    Computed in fp32 (fp64 for fp64 inputs) even under autocast: the squared sums over D^2 entries
    overflow or lose all precision in half precision.
    """
    _check_inputs(z_a, z_b)
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got '{formulation}'")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got '{objective}'")
    if objective in NEEDS_CROSS and formulation == "gram":
        raise ValueError(f"objective '{objective}' needs every C_ij: use formulation 'cross' (or 'auto')")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        dtype = torch.promote_types(z_a.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
        z_a, z_b = z_a.to(dtype), z_b.to(dtype)
        count = _global_count(z_a.shape[0], z_a.device)
        dim = z_a.shape[1]
        if formulation == "auto":
            formulation = "cross" if objective in NEEDS_CROSS else choose_formulation(count, dim)
        za, zb = normalize_for(objective, z_a, count, eps), normalize_for(objective, z_b, count, eps)
        zr = za if objective == AUTO_CORRELATION else zb  # the redundancy term sums Za^T Zr / N off its diagonal
        c, on_diag, off_diag_sq, off_diag_abs_mean = _correlation_sums(formulation, za, zb, zr, count)
        invariance, redundancy = _objective_terms(objective, c, on_diag, off_diag_sq, lambd, temperature)
        loss = {"invariance_only": invariance, "redundancy_only": redundancy}.get(objective, invariance + redundancy)
        with torch.no_grad():
            on_diag_mean = on_diag.mean()
            off_diag_rms = (off_diag_sq.clamp_min(0) / (dim * (dim - 1))).sqrt()
    return LossTerms(
        loss=loss,
        invariance=invariance,
        redundancy=redundancy,
        on_diag_mean=on_diag_mean,
        off_diag_rms=off_diag_rms,
        off_diag_abs_mean=off_diag_abs_mean,
        formulation=formulation,
    )


def barlow_twins_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambd: float = LossConfig.lambd,
    formulation: str = LossConfig.formulation,
    eps: float = BATCH_NORM_EPS,
) -> torch.Tensor:
    """The scalar Barlow Twins loss (eq. 1) of projector outputs ``z_a``, ``z_b`` of shape (N, D)."""
    return barlow_twins_terms(z_a, z_b, lambd, formulation, eps).loss


class BarlowTwinsLoss(nn.Module):
    """``nn.Module`` form of :func:`barlow_twins_loss`; ``terms()`` also returns the diagnostics."""

    def __init__(
        self,
        lambd: float = LossConfig.lambd,
        formulation: str = LossConfig.formulation,
        eps: float = BATCH_NORM_EPS,
        objective: str = LossConfig.objective,
        temperature: float = LossConfig.temperature,
    ):
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got '{formulation}'")
        self.lambd = lambd
        self.formulation = formulation
        self.eps = eps
        self.objective = objective
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.terms(z_a, z_b).loss

    def terms(self, z_a: torch.Tensor, z_b: torch.Tensor) -> LossTerms:
        return barlow_twins_terms(z_a, z_b, self.lambd, self.formulation, self.eps, self.objective, self.temperature)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, formulation={self.formulation}, objective={self.objective}"
