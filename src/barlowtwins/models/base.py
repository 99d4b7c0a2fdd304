"""What every backbone builder returns and how its parameters are kept out of weight decay.

The builders (:mod:`.backbones` for torchvision and Python modules, :mod:`.timm_backbones` for timm) and the
methods all import from here, so the builders never import each other both ways.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import NamedTuple

from torch import nn


class Backbone(NamedTuple):
    module: nn.Module  # maps images (N, 3, H, W) to features (N, dim)
    dim: int
    no_decay: frozenset[str]  # parameter names excluded from weight decay and LARS adaptation


def one_d_parameter_names(module: nn.Module) -> frozenset[str]:
    """Names of the 1-D parameters (biases, norm-layer weights): the official code's exclusion rule."""
    return frozenset(name for name, param in module.named_parameters() if param.ndim <= 1)


def excluded_parameter_names(module: nn.Module, patterns: Iterable[str] = ()) -> frozenset[str]:
    """Parameters kept out of weight decay and LARS adaptation for any module: the 1-D ones (biases, norm
    layers), and those matching ``patterns`` or the module's own ``no_weight_decay()`` (timm's position
    embeddings, class and register tokens), with timm's wildcard matching."""
    patterns = set(patterns) | set(getattr(module, "no_weight_decay", lambda: ())())
    return frozenset(
        name
        for name, param in module.named_parameters()
        if param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in patterns)
    )
