"""Shared test fixtures: the data in ../shared (CIFAR-10, raccoon, Imagenette), required under CI, skipped elsewhere;
``torchrun``, a command of ours launched on two gloo processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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


@pytest.fixture
def torchrun() -> Callable[..., subprocess.CompletedProcess]:
    """``run(args, timeout)``: ``torchrun --standalone --nproc_per_node=2 -m barlowtwins ARGS``, one thread per
    process (two processes on two cores), asserting that it exits 0 (else its output's tail is the message)."""

    def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [*launcher, "-m", "barlowtwins", *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    return run
