"""Barlow Twins self-supervised learning (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021).

The public names below are imported on first use, so ``import barlowtwins`` (and the command line's
``--help``) does not pay for torch until something needs it.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

_EXPORTS = {
    "BarlowTwinsError": "barlowtwins.errors",
    "PretrainConfig": "barlowtwins.config",
    "make_config": "barlowtwins.recipes",
    "pretrain": "barlowtwins.train.loop",
    "METHODS": "barlowtwins.methods",
    "BarlowTwins": "barlowtwins.methods.barlow_twins",
    "BarlowTwinsLoss": "barlowtwins.losses.barlow_twins",
    "LossTerms": "barlowtwins.losses.barlow_twins",
    "barlow_twins_loss": "barlowtwins.losses.barlow_twins",
    "barlow_twins_terms": "barlowtwins.losses.barlow_twins",
    "Backbone": "barlowtwins.models.base",
    "as_backbone": "barlowtwins.models.backbones",
    "build_backbone": "barlowtwins.models.backbones",
    "build_projector": "barlowtwins.models.heads",
    "LARS": "barlowtwins.optim",
    "build_optimizer": "barlowtwins.optim",
    "lr_factor": "barlowtwins.optim",
    "param_groups": "barlowtwins.optim",
    "TwoViews": "barlowtwins.views",
    "two_views": "barlowtwins.views",
    "view_transform": "barlowtwins.views",
    "eval_transform": "barlowtwins.views",
    "export_backbone": "barlowtwins.export",
    "custom_backbone": "barlowtwins.models.backbones",
    "load_backbone": "barlowtwins.checkpoint",
    "knn_accuracy": "barlowtwins.evaluate.knn",
    "knn_predict": "barlowtwins.evaluate.knn",
}
__all__ = sorted(_EXPORTS)

try:
    __version__ = metadata.version("barlowtwins")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'barlowtwins' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The lazily imported public names too, so ``dir()`` and tab completion show them."""
    return sorted({*globals(), *_EXPORTS})
