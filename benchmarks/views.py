"""Throughput of the two distorted views of paper §2.2: per-sample PIL path against the batched tensor path.

Pairs per second (two views of one image) for (a) ``views.per_sample.two_views`` applied image by image to PIL images
in this process (decoding excluded), (b) ``views.batched.batched_two_views`` on one uint8 (N, 3, H, W) tensor
and (c) kornia.augmentation's nearest pipeline, if kornia is installed (uint8 -> float conversion included,
as in (b)). Each case times the paths in interleaved repeats and reports medians; ratios are against (a)
measured in the same run, so a shared, busy machine slows all three alike.

kornia differs in distribution and is not a drop-in: one jitter order per batch instead of per image,
bilinear crop without antialiasing, and randomness from the global RNG instead of a passed generator.

When another job holds one of the cores, torch's default of one thread per core makes every small op wait
for the busy core (the batched path fell from ~5,000 to ~50 pairs/s on a loaded 2-core machine); ``--threads 1``
then gives stable figures.

    python benchmarks/views.py                       # the three default cases, torch's default threads
    python benchmarks/views.py --threads 1 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from barlowtwins.dataset_stats import CIFAR10_MEAN, CIFAR10_STD
from barlowtwins.views.batched import batched_two_views
from barlowtwins.views.colour import blur_kernel_size
from barlowtwins.views.per_sample import two_views

CIFAR_NORM = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD)
# (label, input side, view side, blur_p per view)
CASES = [
    ("32 px -> 32, no blur (CIFAR recipe)", 32, 32, (0.0, 0.0)),
    ("32 px -> 32, paper blur (1.0 / 0.1)", 32, 32, (1.0, 0.1)),
    ("64 px -> 64, paper blur (1.0 / 0.1)", 64, 64, (1.0, 0.1)),
]


def kornia_two_views(image_size: int, blur_p: tuple[float, float], solarize_p=(0.0, 0.2), **_) -> Callable | None:
    """kornia.augmentation's version of the two views, or None without kornia."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None

    def view(blur: float, solarize: float) -> torch.nn.Module:
        ops = [
            K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
        if blur > 0:
            k = blur_kernel_size(image_size)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur))
        if solarize > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize))
        ops.append(K.Normalize(torch.tensor(CIFAR_NORM["mean"]), torch.tensor(CIFAR_NORM["std"])))
        return K.AugmentationSequential(*ops)

    view_a, view_b = view(blur_p[0], solarize_p[0]), view(blur_p[1], solarize_p[1])

    def run(images: torch.Tensor, _generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255.0)
        return view_a(x), view_b(x)

    return run


def paths(side: int, size: int, blur_p: tuple[float, float], n: int) -> dict[str, Callable[[], object]]:
    """One batch of each path as a zero-argument callable, on the same random images."""
    array = np.random.default_rng(0).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    pil_images = [Image.fromarray(a) for a in array]
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    generator = torch.Generator().manual_seed(0)
    config = dict(image_size=size, blur_p=blur_p, **CIFAR_NORM)
    pil_views, batched = two_views(**config), batched_two_views(**config)
    runs: dict[str, Callable[[], object]] = {
        "pil": lambda: [pil_views(image) for image in pil_images],
        "batched": lambda: batched(tensor, generator),
    }
    kornia_views = kornia_two_views(**config)
    if kornia_views is not None:
        runs["kornia"] = lambda: kornia_views(tensor, generator)
    return runs


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per batch of each path, alternating them after one warm-up call each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n = args.batch

    print(
        f"# two views per image, batch {n}; {platform.machine()} {_cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} interleaved repeats",
        file=sys.stderr,
    )
    print(f"Machine: {_cpu_name()}, {os.cpu_count()} cores, no GPU; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), batch {n}.")  # fmt: skip
    print("| case | PIL per sample (a) | batched (b) | b / a | kornia (c) | c / a |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, side, size, blur_p in CASES:
        seconds = time_interleaved(paths(side, size, blur_p, n), args.repeats)
        rate = {name: n / s for name, s in seconds.items()}
        kornia = f"{rate['kornia']:,.0f} pairs/s | {rate['kornia'] / rate['pil']:.1f}×" if "kornia" in rate else "— | —"
        print(
            f"| {label} | {rate['pil']:,.0f} pairs/s | {rate['batched']:,.0f} pairs/s | "
            f"{rate['batched'] / rate['pil']:.1f}× | {kornia} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
