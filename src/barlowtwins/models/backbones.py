"""Backbones: name -> (module without classifier, feature width, parameter names kept out of weight decay).

Paper §2.2 uses a ResNet-50 without its classifier. Every builder returns a :class:`Backbone`, so the
optimiser never needs to know an architecture: it excludes exactly the names the builder lists (for
ResNets the 1-D parameters, i.e. biases and batch-norm weights, as the official code). Besides the
torchvision ResNets, ``timm:NAME[,key=value...]`` builds any timm model (:mod:`.timm_backbones`), and
:func:`custom_backbone` wraps any module from Python.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torchvision
from torch import nn

from barlowtwins.errors import BarlowTwinsError

# Architectures whose classifier is ``fc`` and whose stem is conv1 + maxpool; all take zero_init_residual.
RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
TIMM_PREFIX = "timm:"  # --arch timm:NAME[,key=value...]: a timm model with num_classes=0 (pooled features)
CUSTOM = "custom"  # the arch a run records when its backbone module came from Python (custom_backbone)


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


def custom_backbone(module: nn.Module, dim: int, no_decay: Iterable[str] = ()) -> Backbone:
    """Any module mapping images (N, 3, H, W) to features (N, ``dim``), for ``pretrain(config, backbone=...)``.

    Excluded from weight decay and LARS adaptation: :func:`excluded_parameter_names` plus ``no_decay``
    (parameter names or wildcard patterns).
    """
    return Backbone(module, dim, excluded_parameter_names(module, no_decay))


def build_backbone(arch: str, small_stem: bool = False, stem_stride: int = 1) -> Backbone:
    """A randomly initialised torchvision ResNet with ``fc`` replaced by identity, or a timm model.

    ``zero_init_residual=True`` as the official code. ``small_stem`` swaps the 7x7 stride-2 conv and the
    max-pool for a 3x3 conv of ``stem_stride`` (1: the usual stem for 32-96 px images; 2: the same at a
    third of the cost, for 32 px on a CPU, docs/cpu-recipe). Parameter names stay those of
    torchvision, so the exported state_dict loads into ``torchvision.models.<arch>()``.
    """
    if arch.startswith(TIMM_PREFIX):
        if small_stem:
            raise BarlowTwinsError(f"--small-stem is for torchvision ResNets; size {arch} with its own kwargs")
        from barlowtwins.models.timm_backbones import timm_backbone

        return timm_backbone(arch)
    if arch == CUSTOM:
        raise BarlowTwinsError(
            "arch 'custom' is a module given from Python: pass it again, e.g. "
            "pretrain(config, backbone=custom_backbone(module, dim)) or load_backbone(path, backbone=...)"
        )
    if arch not in RESNETS:
        raise BarlowTwinsError(
            f"unknown architecture '{arch}'; choose one of {', '.join(RESNETS)}, or timm:NAME (e.g. timm:convnext_atto)"
        )
    backbone = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    if small_stem:
        apply_small_stem(backbone, stem_stride)
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return Backbone(backbone, feature_dim, one_d_parameter_names(backbone))


def initial_backbone(arch: str, small_stem: bool, seed: int, stem_stride: int = 1) -> Backbone:
    """The backbone a run with ``seed`` starts from: the pretraining loop builds it first, from this seed, so
    evaluation can rebuild a run's own random initialisation as its floor."""
    torch.manual_seed(seed)
    return build_backbone(arch, small_stem, stem_stride)


def apply_small_stem(resnet: nn.Module, stride: int = 1) -> None:
    """Replace a torchvision ResNet's stem in place by a 3x3 conv of ``stride`` and no max-pool."""
    resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    resnet.maxpool = nn.Identity()
