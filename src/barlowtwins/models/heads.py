"""Heads on top of the backbone: the projector of paper §2.2, built from a spec string."""

from __future__ import annotations

from torch import nn

from barlowtwins.config import parse_projector_spec


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
