"""Per-channel mean and std of the datasets the recipes normalise with, each written once with its source.

A recipe names one (``augment.normalize: cifar10``; :mod:`barlowtwins.recipes` turns the name into
``augment.mean`` and ``augment.std``) instead of repeating the numbers; explicit lists are still accepted.
Values are on pixels scaled to [0, 1], channels R, G, B. Imports nothing (the config and the command line
stay fast), which is why this is not in :mod:`barlowtwins.data`, whose package imports torch.
"""

from __future__ import annotations

from barlowtwins.errors import BarlowTwinsError

Triple = tuple[float, float, float]

# ImageNet-1k training set, as torchvision's ImageNet weights and the official Barlow Twins code
# (facebookresearch/barlowtwins main.py, transforms.Normalize) use them: the default of every recipe.
IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
# CIFAR-10's 50,000 training images, mean and std over all pixels; solo-learn's values
# (solo/data/pretrain_dataloader.py, CifarTransform), which the cifar10 recipe follows. Not the often-copied
# std (0.2023, 0.1994, 0.2010), which is not the pixels' std (kuangliu/pytorch-cifar issue 19).
CIFAR10_MEAN: Triple = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Triple = (0.2470, 0.2435, 0.2616)
# CIFAR-100's 50,000 training images, the same way; solo-learn's values (same file, CifarTransform).
CIFAR100_MEAN: Triple = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: Triple = (0.2673, 0.2564, 0.2762)

NORMALIZATIONS: dict[str, tuple[Triple, Triple]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}


def normalization(name: str) -> tuple[Triple, Triple]:
    """``(mean, std)`` of the dataset called ``name`` (a key of :data:`NORMALIZATIONS`)."""
    if name not in NORMALIZATIONS:
        raise BarlowTwinsError(
            f"augment.normalize: no statistics for '{name}'; use one of {', '.join(NORMALIZATIONS)}, "
            "or give augment.mean and augment.std as lists"
        )
    return NORMALIZATIONS[name]
