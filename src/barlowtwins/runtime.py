"""Where and how a job runs: device, precision, seeding, and the metadata saved beside every result."""

from __future__ import annotations

import functools
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barlowtwins import distributed
from barlowtwins.errors import BarlowTwinsError


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (``taskset``, cpusets of cgroups,
    SLURM), else every core of the machine. Sizes worker pools; a machine's description still counts all cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BarlowTwinsError(f"device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BarlowTwinsError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BarlowTwinsError(f"device '{name}' asked for, but CUDA is not available; use --device cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). 'auto': bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


SCOUT_SLOWER = 5  # bf16 this many times fp32's time on the scout's few samples: slower, not run on all


def fastest_dtype(step: Callable[[torch.dtype | None, bool], object]) -> tuple[torch.dtype | None, dict]:
    """fp32 or bf16 autocast, whichever runs ``step(dtype, False)`` faster here (bf16 must win by 10%).

    On CPUs the answer depends on the processor and the model (bf16 autocast ran ResNet-18 at 32 px about
    1.4x faster on one EPYC and 5x slower on another without native bf16), so it is measured, not guessed.
    fp32 gets a warm-up call (first-call allocation, kernel choice) and a timed call. Then both precisions run
    once on a few samples (``step(dtype, True)``, the scout): bf16 five times slower there is slower (emulated
    bf16 on a CPU without its instructions ran 10-20x slower per sample, and its warm-up on all samples cost
    20-40 s of each run). Otherwise bf16 gets its warm-up and timed calls too; a warm-up that already takes over
    three fp32 steps is not timed again.
    """
    seconds = {"fp32": _timed(step, None, warm_up=True)}
    scout = {f"{precision_name(dtype)} scout": _timed(step, dtype, scout=True) for dtype in (None, torch.bfloat16)}
    if scout["bfloat16 scout"] > SCOUT_SLOWER * scout["fp32 scout"]:
        return None, seconds | scout
    warm_up = _timed(step, torch.bfloat16)  # clearly slower: its warm-up bounds it from above
    seconds["bfloat16"] = warm_up if warm_up > 3 * seconds["fp32"] else _timed(step, torch.bfloat16)
    faster = seconds["bfloat16"] < 0.9 * seconds["fp32"]
    return (torch.bfloat16 if faster else None), seconds


def probe_samples(batch: int) -> tuple[int, int]:
    """The samples per view ``fastest_dtype``'s step runs: a quarter batch (at least 8), and the scout's eighth of
    that (at least 2: the loss standardises over the batch)."""
    n = max(8, batch // 4)
    return n, max(2, n // 8)


def _timed(
    step: Callable[[torch.dtype | None, bool], object], dtype: torch.dtype | None, scout=False, warm_up=False
) -> float:
    """Seconds of one ``step(dtype, scout)``, after an untimed one if ``warm_up``."""
    if warm_up:
        step(dtype, scout)
    start = time.perf_counter()
    step(dtype, scout)
    return time.perf_counter() - start


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("barlowtwins")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The commit the package was loaded from, ``-dirty`` with uncommitted changes; None outside a checkout."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"  # uncommitted changes: the saved config, not the commit, says what ran
    return commit or None


def cpu_description() -> str:
    """The CPU's model name and the vector instructions torch uses on it (AVX512, AVX2, ...). Two CPUs sold under
    one name differ several-fold in speed and in whether bf16 pays (a 2-core "AMD EPYC" with AVX-512 ran
    ResNet-18 in bf16 1.6x faster than fp32; one with AVX2 alone, 10x slower), so results name both."""
    name = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:  # Linux; elsewhere platform's name
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name or platform.processor() or platform.machine()}, torch CPU capability {capability}"


def run_metadata() -> dict[str, Any]:
    """What produced a result: versions, commit, machine and command line."""
    return {
        "barlowtwins_version": package_version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "cpu": cpu_description(),
        "usable_cpus": usable_cpus(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "world_size": distributed.world_size(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
