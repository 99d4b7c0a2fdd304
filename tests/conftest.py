"""Shared test fixtures: the CIFAR-10 shards in ../shared, required under CI, skipped elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CIFAR_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar_dir() -> Path:
    """CIFAR-10 shard directory. Missing: skip on a user's clone, fail when BARLOWTWINS_REQUIRE_SHARED=1 (CI)."""
    if not (CIFAR_DIR / "cifar10-train-000000.tar").is_file():
        message = f"CIFAR-10 shards not found at {CIFAR_DIR} (they live in the project's shared/ folder)"
        if os.environ.get("BARLOWTWINS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return CIFAR_DIR
