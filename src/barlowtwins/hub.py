"""What ``hubconf.py`` offers ``torch.hub.load``: backbones (classifier removed) with weights from a path or URL.

``weights`` may be our export (``.pth`` or ``.safetensors`` with its JSON sidecar), a run directory or
checkpoint, a plain torchvision state_dict such as the official Barlow Twins ``resnet50.pth`` (torchvision
key names without ``fc.*``), or a URL to one (fetched by ``torch.hub.load_state_dict_from_url``).
"""

from __future__ import annotations

from torch import nn

from barlowtwins.checkpoint import load_backbone, load_weights_into
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import build_backbone

# The official release (facebookresearch/barlowtwins hubconf.py): ResNet-50, 1000 epochs, batch 2048.
OFFICIAL_RESNET50 = "https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth"


def _is_url(weights: str) -> bool:
    return weights.startswith(("http://", "https://"))


def backbone(weights: str | None = None, arch: str | None = None, small_stem: bool | None = None) -> nn.Module:
    """The backbone ``weights`` hold, rebuilt from their sidecar or checkpoint (``arch`` for bare state_dicts).

    Without ``weights``: ``arch`` at random initialisation. The module is in eval mode and maps images to
    features; ``module.feature_dim`` holds their width.
    """
    if weights is not None and _is_url(str(weights)):
        if arch is None:
            raise BarlowTwinsError(f"{weights} is a URL: say which architecture it holds with arch=")
        import torch

        model, dim, _ = build_backbone(arch, bool(small_stem))
        state = torch.hub.load_state_dict_from_url(str(weights), map_location="cpu", weights_only=True)
        load_weights_into(model, state.get("state_dict", state), str(weights))
    else:
        if weights is None and arch is None:
            raise BarlowTwinsError("pass weights= (an export, run directory or state_dict) or arch=")
        model, dim, _ = load_backbone(weights, arch, small_stem)
    model.feature_dim = dim
    return model.eval()


def resnet50(weights: str | None = None, small_stem: bool | None = None) -> nn.Module:
    """ResNet-50 without ``fc``; ``weights=OFFICIAL_RESNET50`` gives the authors' released backbone."""
    return backbone(weights, "resnet50", small_stem)


def resnet18(weights: str | None = None, small_stem: bool | None = None) -> nn.Module:
    """ResNet-18 without ``fc`` (``small_stem`` from the export's sidecar when not given)."""
    return backbone(weights, "resnet18", small_stem)
