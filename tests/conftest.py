"""Shared test fixtures: the data in ../shared (CIFAR-10, raccoon, Imagenette), required under CI, skipped elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CIFAR_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
RACCOON_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon"
IMAGENETTE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def _shared(path: Path, what: str) -> Path:
    """``path`` if present. Missing: skip on a user's clone, fail when BARLOWTWINS_REQUIRE_SHARED=1 (CI)."""
    if not path.exists():
        message = f"{what} not found at {path.parent} (it lives in the project's shared/ folder)"
        if os.environ.get("BARLOWTWINS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path.parent


@pytest.fixture
def cifar_dir() -> Path:
    """CIFAR-10 shard directory (../shared/data/cifar10)."""
    return _shared(CIFAR_DIR / "cifar10-train-000000.tar", "the CIFAR-10 shards")


@pytest.fixture
def raccoon_dir() -> Path:
    """The raccoon photos in VOC layout (../shared/data/raccoon): 200 real full-size JPEGs with boxes."""
    return _shared(RACCOON_DIR / "JPEGImages", "the raccoon photos")


@pytest.fixture
def imagenette_dir() -> Path:
    """Imagenette (../shared/data/imagenette): 9,469 / 3,925 real ImageNet photos of 10 classes, 224 px JPEGs."""
    return _shared(IMAGENETTE_DIR / "val", "the Imagenette photos")
