"""The twin network: a torchvision backbone without its classifier, followed by a projector (paper §2.2)."""

from __future__ import annotations

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


def parse_projector_spec(spec: str) -> list[int]:
    """``"8192-8192-8192"`` -> ``[8192, 8192, 8192]``: the output width of each linear layer."""
    try:
        widths = [int(part) for part in spec.split("-")]
    except ValueError:
        widths = []
    if not widths or any(w < 1 for w in widths):
        raise BarlowTwinsError(
            f"projector spec '{spec}' must be positive layer widths joined by '-', e.g. 8192-8192-8192"
        )
    return widths


def build_backbone(arch: str, small_stem: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet with ``fc`` replaced by identity, and its output width.

    ``zero_init_residual=True`` as the official code. ``small_stem`` swaps the 7x7 stride-2 conv and the
    max-pool for a 3x3 stride-1 conv, the usual stem for 32-96 px images. Parameter names stay those of
    torchvision, so the exported state_dict loads into ``torchvision.models.<arch>()``.
    """
    if arch not in RESNETS:
        raise BarlowTwinsError(f"unknown architecture '{arch}'; choose one of {', '.join(RESNETS)}")
    backbone = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    if small_stem:
        apply_small_stem(backbone)
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return backbone, feature_dim


def apply_small_stem(resnet: nn.Module) -> None:
    """Replace a torchvision ResNet's stem in place by a 3x3 stride-1 conv and no max-pool."""
    resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    resnet.maxpool = nn.Identity()


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


class BarlowTwins(nn.Module):
    """Backbone + projector; ``forward(y_a, y_b)`` returns the projections ``(z_a, z_b)``.

    The two views go through the network separately, as in the official code, so batch-norm statistics
    are per view.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        projector: str = "8192-8192-8192",
        small_stem: bool = False,
        projector_bn: bool = True,
    ):
        super().__init__()
        self.arch = arch
        self.small_stem = small_stem
        self.backbone, self.feature_dim = build_backbone(arch, small_stem)
        self.projector = build_projector(self.feature_dim, projector, projector_bn)
        self.embedding_dim = parse_projector_spec(projector)[-1]

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projector(self.backbone(y_a)), self.projector(self.backbone(y_b))


def torchvision_model(arch: str, small_stem: bool = False, num_classes: int = 1000) -> nn.Module:
    """The plain torchvision model an exported backbone loads into (with our stem if it used one)."""
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small_stem:
        apply_small_stem(model)
    return model
