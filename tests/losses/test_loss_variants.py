"""Table 5's objectives (paper §4) and §5.2's auto-correlation alternative against literal float64
transcriptions of the text, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from barlowtwins.config import OBJECTIVES
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.losses.barlow_twins import barlow_twins_terms
from barlowtwins.models.heads import build_projector
from barlowtwins.recipes import make_config, override

LAMBD, TAU, EPS = 0.3, 0.7, 1e-5


def _standardise(z):
    """Per column: (z - mean) / sqrt(biased var + eps), written element by element."""
    n, d = len(z), len(z[0])
    out = [[0.0] * d for _ in range(n)]
    for i in range(d):
        mean = sum(z[b][i] for b in range(n)) / n
        var = sum((z[b][i] - mean) ** 2 for b in range(n)) / n
        for b in range(n):
            out[b][i] = (z[b][i] - mean) / (var + EPS) ** 0.5
    return out


def _reference(z_a, z_b, objective):
    """The paper's words, transcribed with Python scalars and loops (tensor entries keep autograd)."""
    za, zb = z_a.unbind(0), z_b.unbind(0)
    za, zb = [list(r.unbind(0)) for r in za], [list(r.unbind(0)) for r in zb]
    n, d = len(za), len(za[0])
    if objective == "cross_covariance":  # centred along the batch, not scaled
        za = [[za[b][i] - sum(za[c][i] for c in range(n)) / n for i in range(d)] for b in range(n)]
        zb = [[zb[b][i] - sum(zb[c][i] for c in range(n)) / n for i in range(d)] for b in range(n)]
    else:
        za, zb = _standardise(za), _standardise(zb)
    if objective == "feature_norm":  # then L2 along the features, without mean subtraction
        za = [[v / sum(x * x for x in row) ** 0.5 for v in row] for row in za]
        zb = [[v / sum(x * x for x in row) ** 0.5 for v in row] for row in zb]
    c = [[sum(za[b][i] * zb[b][j] for b in range(n)) / n for j in range(d)] for i in range(d)]
    if objective == "cross_entropy":
        on = -torch.log(sum(torch.exp(c[i][i] / TAU) for i in range(d)))
        off = [torch.exp(torch.clamp(c[i][j], min=0) / TAU) for i in range(d) for j in range(d) if i != j]
        return on + LAMBD * torch.log(sum(off))
    invariance = sum((1 - c[i][i]) ** 2 for i in range(d))
    if objective == "auto_correlation":  # §5.2 / appendix A: off-diagonal of one network's auto-correlation
        c = [[sum(za[b][i] * za[b][j] for b in range(n)) / n for j in range(d)] for i in range(d)]
    redundancy = LAMBD * sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return {"invariance_only": invariance, "redundancy_only": redundancy}.get(objective, invariance + redundancy)


def _inputs(seed=0, n=7, d=5):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True),
    )


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("formulation", ["cross", "gram"])
def test_objective_matches_transcription_in_value_and_gradient(objective, formulation):
    if objective == "cross_entropy" and formulation == "gram":
        pytest.skip("needs every C_ij; checked to raise below")
    z_a, z_b = _inputs()
    ours = barlow_twins_terms(z_a, z_b, LAMBD, formulation, EPS, objective, TAU).loss
    grads = torch.autograd.grad(ours, (z_a, z_b))
    reference = _reference(z_a, z_b, objective)
    expected = torch.autograd.grad(reference, (z_a, z_b))
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_variants_differ_from_the_baseline():
    z_a, z_b = _inputs(1)
    values = {o: barlow_twins_terms(z_a, z_b, LAMBD, "cross", EPS, o, TAU).loss.item() for o in OBJECTIVES}
    assert len({round(v, 9) for v in values.values()}) == len(OBJECTIVES)
    assert math.isclose(values["barlow_twins"], values["invariance_only"] + values["redundancy_only"])


@pytest.mark.parametrize("formulation", ["cross", "gram"])
def test_auto_correlation_is_the_paper_formula(formulation):
    """§5.2: invariance on the cross-correlation C, redundancy on branch A's auto-correlation A (eq. 4's form,
    Pearson correlations of the mean-centred columns: eps 0) -- so branch B enters only the invariance term,
    and with identical branches the loss is eq. 1's."""
    z_a, z_b = _inputs(3, n=9, d=6)
    za = [[v - sum(col) / len(col) for v in col] for col in z_a.detach().T.tolist()]  # centred columns
    zb = [[v - sum(col) / len(col) for v in col] for col in z_b.detach().T.tolist()]

    def corr(x, y):
        return sum(p * q for p, q in zip(x, y, strict=True)) / (sum(p * p for p in x) * sum(q * q for q in y)) ** 0.5

    d = len(za)
    invariance = sum((1 - corr(za[i], zb[i])) ** 2 for i in range(d))
    redundancy = LAMBD * sum(corr(za[i], za[j]) ** 2 for i in range(d) for j in range(d) if i != j)
    terms = barlow_twins_terms(z_a, z_b, LAMBD, formulation, 0.0, "auto_correlation")
    assert torch.allclose(terms.invariance, torch.tensor(invariance, dtype=torch.float64), rtol=1e-10)
    assert torch.allclose(terms.redundancy, torch.tensor(redundancy, dtype=torch.float64), rtol=1e-10)
    assert torch.allclose(terms.loss, terms.invariance + terms.redundancy)
    (grad_b,) = torch.autograd.grad(terms.redundancy, z_b, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(grad_b) == 0
    same = barlow_twins_terms(z_a, z_a, LAMBD, formulation, EPS, "auto_correlation").loss
    torch.testing.assert_close(same, barlow_twins_terms(z_a, z_a, LAMBD, formulation, EPS).loss)


def test_auto_correlation_picks_gram_when_wide():
    z_a, z_b = _inputs(4, n=4, d=64)
    assert barlow_twins_terms(z_a, z_b, formulation="auto", objective="auto_correlation").formulation == "gram"
    assert make_config(None, [override("loss.objective", "auto_correlation")]).loss.objective == "auto_correlation"


def test_cross_entropy_needs_cross_and_auto_picks_it():
    z_a, z_b = _inputs(2, n=4, d=64)  # D > 2N: auto would pick gram for the baseline
    assert barlow_twins_terms(z_a, z_b, formulation="auto").formulation == "gram"
    assert barlow_twins_terms(z_a, z_b, formulation="auto", objective="cross_entropy").formulation == "cross"
    with pytest.raises(ValueError, match="formulation 'cross'"):
        barlow_twins_terms(z_a, z_b, formulation="gram", objective="cross_entropy")
    with pytest.raises(BarlowTwinsError, match="loss.formulation=cross"):
        make_config(None, [override("loss.objective", "cross_entropy"), override("loss.formulation", "gram")])
    with pytest.raises(BarlowTwinsError, match="loss.objective must be one of"):
        make_config(None, [override("loss.objective", "infonce")])


def test_no_bn_projector_has_no_batch_norm():
    """Table 5's "No BN in MLP" is model.projector_bn=false (the hidden layers keep a bias instead)."""
    layers = build_projector(16, "8-8-4", batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in layers)
    assert make_config(None, [override("model.projector_bn", False)]).model.projector_bn is False
