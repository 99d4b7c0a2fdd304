"""Heads on top of the backbone: the projector of paper §2.2, built from a spec string."""

from __future__ import annotations

from torch import nn

from barlowtwins.validation import parse_projector_spec


def build_projector(in_dim: int, spec: str, batch_norm: bool = True) -> nn.Sequential:
    """Linear(no bias) -> BN -> ReLU for every hidden layer, then a last Linear without bias (§2.2).

    Without ``batch_norm`` the hidden linear layers keep their bias (Table 5, "No BN in MLP").
    """
    widths = parse_projector_spec(spec)
    layers: list[nn.Module] = []
    dims = [in_dim, *widths]
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    return nn.Sequential(*layers)


def predictor_spec(spec: str, projector_spec: str) -> str:
    """``"auto"``: hidden width = the projector's first width, output = its output width. For the paper's
    8192-8192-8192 projector this is Table 6's 8192-8192; for BYOL's 4096-256 it is BYOL's 4096-256."""
    if spec != "auto":
        return spec
    widths = parse_projector_spec(projector_spec)
    return f"{widths[0]}-{widths[-1]}"


def build_predictor(in_dim: int, spec: str, projector_spec: str) -> nn.Sequential:
    """Two (or more) linear layers with BN + ReLU in the hidden one (BYOL §3.3, paper Table 6)."""
    return build_projector(in_dim, predictor_spec(spec, projector_spec), batch_norm=True)
