"""Backbones: name -> (module without classifier, feature width, parameter names kept out of weight decay).

Paper §2.2 uses a ResNet-50 without its classifier. Every builder returns a :class:`Backbone`, so the
optimiser never needs to know an architecture: it excludes exactly the names the builder lists (for
ResNets the 1-D parameters, i.e. biases and batch-norm weights, as the official code). Besides the
torchvision ResNets, ``timm:NAME[,key=value...]`` builds any timm model (:mod:`.timm_backbones`), and
:func:`custom_backbone` wraps any module from Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torchvision
from torch import nn

from barlowtwins.config import AugmentConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.base import Backbone, excluded_parameter_names, one_d_parameter_names
from barlowtwins.models.timm_backbones import TIMM_PREFIX, timm_backbone

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
CUSTOM = "custom"  # the arch a run records when its backbone module came from Python (custom_backbone)


def custom_backbone(module: nn.Module, dim: int, no_decay: Iterable[str] = ()) -> Backbone:
    """Any module mapping images (N, 3, H, W) to features (N, ``dim``), for ``pretrain(config, backbone=...)``.

    Excluded from weight decay and LARS adaptation: :func:`excluded_parameter_names` plus ``no_decay``
    (parameter names or wildcard patterns).
    """
    return Backbone(module, dim, excluded_parameter_names(module, no_decay))


def as_backbone(backbone: Backbone | nn.Module, image_size: int = AugmentConfig.image_size) -> Backbone:
    """A :class:`Backbone` as it is; any other module with its classifier removed in place (a torchvision
    model's ``fc``, as :func:`build_backbone` does; a timm model's head) and its output width measured by
    :func:`output_width` on ``image_size`` px images. Other modules are taken as they are: their output is the
    representation. A width that depends on the image size needs ``custom_backbone(module, dim)``."""
    if isinstance(backbone, Backbone):
        return backbone
    if not isinstance(backbone, nn.Module):
        raise BarlowTwinsError(
            f"a backbone must be an nn.Module or a Backbone, not {type(backbone).__name__}; "
            "e.g. torchvision.models.resnet18() or custom_backbone(module, dim)"
        )
    drop_classifier(backbone)
    return custom_backbone(backbone, output_width(backbone, image_size))


def drop_classifier(module: nn.Module) -> None:
    """Remove in place a torchvision model's linear ``fc`` (ResNet, RegNet, ShuffleNet) or a timm model's head."""
    if type(module).__module__.startswith("torchvision.models.") and isinstance(getattr(module, "fc", None), nn.Linear):
        module.fc = nn.Identity()
    elif callable(getattr(module, "reset_classifier", None)) and hasattr(module, "num_features"):
        module.reset_classifier(0)  # timm: pooled features of width num_features


def output_width(module: nn.Module, image_size: int = AugmentConfig.image_size) -> int:
    """The width of ``module``'s features, from one forward pass of a blank image in eval mode without
    gradients (every submodule's train/eval mode is restored); one that fails or returns no (N, dim) is refused."""
    parameter = next(module.parameters(), None)
    like = {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
    name, shape = type(module).__name__, f"(1, 3, {image_size}, {image_size})"
    modes = [(m, m.training) for m in module.modules()]
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(1, 3, image_size, image_size, **like))
    except Exception as error:  # a module we know nothing of: say what failed, in one line
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        problem = f"cannot measure the width of {name}'s output on a {shape} batch ({reason})"
        raise BarlowTwinsError(f"{problem}; pass custom_backbone(module, dim) with its feature width") from None
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BarlowTwinsError(
            f"backbone {name} maps a {shape} batch to {got}, not (N, dim) features; pool it to (N, dim), e.g. "
            "nn.Sequential(module, nn.AdaptiveAvgPool2d(1), nn.Flatten()), or pass custom_backbone(pooled, dim)"
        )
    return int(out.shape[1])


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


def fitting_arch(state_dict: dict[str, torch.Tensor]) -> tuple[str, bool] | None:
    """The torchvision ResNet and stem (``(arch, small_stem)``) whose backbone ``state_dict`` fits exactly, a
    classifier ``fc`` aside; None if none does. The candidates are built on the meta device (no memory)."""
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return None
    small_stem = conv1.shape[-1] == 3  # the small stem's 3x3 conv; torchvision's is 7x7
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith("fc.")}
    for arch in RESNETS:
        with torch.device("meta"):
            module = build_backbone(arch, small_stem).module
        if {k: tuple(v.shape) for k, v in module.state_dict().items()} == shapes:
            return arch, small_stem
    return None


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
