"""timm backbones by name: ``timm:NAME[,key=value...]`` -> a :class:`Backbone` with timm's own key names.

The keyword arguments go to ``timm.create_model``, so a ViT can be sized for small images
(``timm:vit_tiny_patch16_224,patch_size=4,img_size=32``). The arch string alone rebuilds the model, so a
checkpoint, its random-init floor and an export all agree. ``num_classes=0`` makes the model return
pooled features of width ``model.num_features``; its state_dict then loads back with
``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0, **kwargs)``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.base import Backbone, excluded_parameter_names

TIMM_PREFIX = "timm:"  # --arch timm:NAME[,key=value...]: a timm model with num_classes=0 (pooled features)


def parse_timm_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """``"timm:vit_tiny_patch16_224,patch_size=4,img_size=32"`` -> ``("vit_tiny_patch16_224", {...: 4, ...: 32})``.

    A value in brackets is a list and keeps its commas: ``timm:resnet18,channels=[32,64,128,256]``.
    """
    name, *pairs = re.split(r",(?![^\[]*\])", arch.removeprefix(TIMM_PREFIX))
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BarlowTwinsError(f"'{pair}' in --arch {arch} must be key=value, e.g. timm:NAME,patch_size=4")
        kwargs[key.strip()] = yaml.safe_load(value)  # 4 -> int, 0.1 -> float, true -> bool, [32, 64] -> list
    if not name:
        raise BarlowTwinsError(f"--arch {arch} names no timm model; e.g. timm:convnext_atto")
    return name.strip(), kwargs


def import_timm(arch: str):
    try:
        import timm
    except ImportError:
        raise BarlowTwinsError(f"--arch {arch} needs timm: pip install 'barlowtwins[timm]'") from None
    return timm


def timm_backbone(arch: str) -> Backbone:
    """A randomly initialised timm model without classifier; biases, norm layers, position embeddings and
    class/register tokens (timm's ``no_weight_decay()``) are kept out of weight decay and LARS adaptation."""
    timm = import_timm(arch)
    name, kwargs = parse_timm_arch(arch)
    if not timm.is_model(name):
        raise BarlowTwinsError(f"timm has no model '{name}'; list them with timm.list_models('*{name[:4]}*')")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise BarlowTwinsError(f"timm model {name} rejects the arguments of --arch {arch} ({error})") from None
    return Backbone(model, int(model.num_features), excluded_parameter_names(model))
