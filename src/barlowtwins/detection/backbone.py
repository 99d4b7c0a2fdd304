"""Our ResNet as a detector's backbone: C4 (the paper's, Table 4) or FPN, with the batch-norm mode of C.2.

The ResNet comes from :func:`barlowtwins.checkpoint.load_backbone` (a run directory, an exported ``.pth`` /
``.safetensors``, a plain state_dict with ``arch``) or is freshly initialised (``"random"``: the baseline).
The modules built here hold the ResNet's own parameter tensors (no copies), so its weights are the
detector's initial weights. C4, as detectron2's R50-C4 (Wu et al. 2019; He et al. 2019): stem and stages 1-3
(``layer1``-``layer3``, res2-res4) give the single feature map, stage 4 (``layer4``, res5) + average pooling is
the box head. FPN: torchvision's ``BackboneWithFPN`` over ``layer1``-``layer4``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from barlowtwins.checkpoint import load_backbone
from barlowtwins.errors import BarlowTwinsError

STAGES = ("layer1", "layer2", "layer3", "layer4")
RANDOM = "random"  # --checkpoint random: the randomly initialised baseline
FPN_CHANNELS = 256  # torchvision's and detectron2's FPN width


def load_resnet(checkpoint: str, arch: str = "", seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The ResNet of ``checkpoint`` (or a random one of ``arch`` from ``seed``) and load_backbone's info."""
    if checkpoint == RANDOM:
        if not arch:
            raise BarlowTwinsError("--checkpoint random needs --arch, e.g. --arch resnet50")
        torch.manual_seed(seed)
        resnet, _, info = load_backbone(None, arch)
    elif not Path(checkpoint).exists():
        raise BarlowTwinsError(f"no checkpoint at {checkpoint}; pass a run directory, exported weights, or 'random'")
    else:
        resnet, _, info = load_backbone(checkpoint, arch or None)
    missing = [name for name in STAGES if not isinstance(getattr(resnet, name, None), nn.Module)]
    if missing:
        raise BarlowTwinsError(
            f"detection needs a ResNet (stages layer1-layer4; torchvision's or timm's), and {info.get('arch')} "
            f"has no {', '.join(missing)}"
        )
    return resnet, info


def stem_of(resnet: nn.Module) -> nn.Sequential:
    """The modules before ``layer1`` (conv, norm, activation, max-pool; any stem, the small one included)."""
    stem = OrderedDict()
    for name, child in resnet.named_children():
        if name == STAGES[0]:
            break
        stem[name] = child
    return nn.Sequential(stem)


@torch.no_grad()
def stage_channels(resnet: nn.Module) -> list[int]:
    """Output channels of ``layer1``-``layer4``, measured on a small input (any block type, any width)."""
    was_training = resnet.training
    resnet.eval()
    x = stem_of(resnet)(torch.zeros(1, 3, 64, 64, device=next(resnet.parameters()).device))
    channels = []
    for name in STAGES:
        x = getattr(resnet, name)(x)
        channels.append(x.shape[1])
    resnet.train(was_training)
    return channels


class C4Body(nn.Sequential):
    """Stem + res2-res4: one feature map at stride 16 (8 with a stride-1 small stem)."""

    def __init__(self, resnet: nn.Module):
        super().__init__(OrderedDict([("stem", stem_of(resnet)), *((n, getattr(resnet, n)) for n in STAGES[:3])]))
        self.out_channels = stage_channels(resnet)[2]


class C4BoxHead(nn.Module):
    """res5 on the pooled 14x14 RoI features, then global average pooling (detectron2's Res5ROIHeads)."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


def fpn_backbone(resnet: nn.Module) -> nn.Module:
    """torchvision's ResNet-FPN layout (P2-P5 and a max-pooled P6, 256 channels) on our ResNet."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    return BackboneWithFPN(
        resnet,
        return_layers={name: str(i) for i, name in enumerate(STAGES)},
        in_channels_list=stage_channels(resnet),
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``module`` replaced by torchvision's ``FrozenBatchNorm2d`` with its statistics
    and affine parameters (fixed, as detectron2's FrozenBN); returns the module (changed in place)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
