"""Full-size photos: pairs/s of data + views alone on three paths, and against one ResNet-50 step at 224 px.

Two sets: the real photos of ``../shared/data/raccoon/JPEGImages`` (200 JPEGs, 178x283 to 2000x1333 px) and
``--count`` photo-like JPEGs at ImageNet's typical sizes (500x375, 375x500, 500x333, ...; quality 90, ~120 KB),
generated into a temporary directory (``decoders.imagenet_like_jpegs``). Pairs per second (two 224 px views of
one image, normalised float tensors, no model) of:

(a) the official pipeline (facebookresearch/barlowtwins ``main.py``): per sample, ``Image.open`` +
    ``convert("RGB")`` and the paper's two torchvision views (``views.two_views(224)``: RandomResizedCrop
    bicubic, flip, jitter, grayscale, blur, solarize, ToTensor, Normalize), in DataLoader workers (one per core),
    a fresh pass of the loader per epoch as main.py (its workers restart each epoch, as (c)'s do);
(b) the previous fast path: every image decoded once into a square 224x224 store (``cache.stored_image``:
    shorter side resized bicubic, centre crop), then ``batched_views.training_views(image_size=224)`` on uint8
    (N, 3, 224, 224) batches in this process, seeded per batch, as ``loaders.cached_training_batches`` did;
(c) the new default: ``train.inputs.view_batches(config, cpu)``, the batches pretraining itself draws, with the
    ``imagenet`` recipe, ``augment.image_size`` 224, ``train.batch_size`` ``--batch`` and ``data.workers`` one
    per core, ``data.cache=disk`` in a temporary ``data.cache_dir`` (built by the first stream, memory-mapped by
    the later ones; "auto" would keep it in memory and rebuild it per stream); and (c, cache off) the same
    with ``data.cache=off`` (decoded per step, at a reduced DCT scale where every crop allows it). Left out,
    with a note, when ``view_batches`` is not in the tree.

The one-off cost of building a store (decoding every image once) is timed apart from the pairs/s: for (b) as
its own pass, for (c) as the time from ``view_batches`` to its first batch (store, workers, first batch).

Each repeat takes a fresh stream of every path in turn (interleaved; a stream's worker processes end before the
next path is timed), waits for its first batch (worker start-up), then times ``--batches`` batches; figures are
medians over ``--repeats`` and ratios are against (a) in the same run, so a busy shared machine slows all alike.

End to end: one training step (forward, backward, LARS) of ResNet-50 with the paper's projector 8192-8192-8192
at 224 px on ``--step-batch`` pairs, the ``imagenet`` recipe's method and optimiser (median of ``--steps``
after one warm-up step), against the time each data path takes to make that many pairs at its measured rate.
On this machine both share the same cores; on a GPU machine the data path runs on the CPU beside the step, and
a data/step ratio above 1 means the GPU waits for data.

    python benchmarks/fullsize.py                                  # defaults: both sets, ~10 min on 2 cores
    python benchmarks/fullsize.py --threads 1                      # on a busy shared machine (see below)
    python benchmarks/fullsize.py --count 5000 --repeats 5         # more generated photos, more repeats
    python benchmarks/fullsize.py --raccoon '' --skip-step         # generated photos only, no model step

When other jobs hold the cores, torch's default of one thread per core makes every batched op in this process
wait for the busiest core (benchmarks/views.py saw 100x); ``--threads 1`` keeps (b), (c) and the step stable.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from decoders import RACCOON, imagenet_like_jpegs, machine
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from barlowtwins.batched_views import training_views
from barlowtwins.data.cache import stored_image
from barlowtwins.recipes import make_config, override
from barlowtwins.runtime import usable_cpus
from barlowtwins.train import loop
from barlowtwins.views import two_views

CPU = torch.device("cpu")
SIZE = 224
# The published run's pace (README: ~124 h on 32 V100s for 1000 epochs of ImageNet's 1,281,167 images)
PAPER_PAIRS_PER_GPU = 1_281_167 * 1000 / (124 * 3600) / 32


class Photos(Dataset):
    """``(transform(RGB image), 0)`` of each file, opened as torchvision's ``ImageFolder`` (the official loader)."""

    def __init__(self, paths: list[Path], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with open(self.paths[index], "rb") as file:
            image = Image.open(file).convert("RGB")
        return self.transform(image), 0


def official(paths: list[Path], batch: int, workers: int) -> Iterator:
    """(a): per-sample PIL decode + the paper's two torchvision views in DataLoader workers, as main.py: a fresh
    pass of the loader per epoch (its workers restart), a new shuffle each epoch, the last batch kept."""
    dataset = Photos(paths, two_views(SIZE))
    for epoch in itertools.count():
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch))
        yield from DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)


def square_store(paths: list[Path], workers: int) -> np.ndarray:
    """(b)'s store: every image decoded once to (224, 224, 3) uint8, shorter side resized, centre crop."""
    dataset = Photos(paths, lambda image: np.array(stored_image(image, SIZE)))
    rows = [images.numpy() for images, _ in DataLoader(dataset, batch_size=64, num_workers=workers)]
    return np.concatenate(rows)


def previous(store: np.ndarray, batch: int) -> Iterator:
    """(b): batched views of rows of the square store, a seeded permutation per epoch, a generator per batch."""
    views = training_views(image_size=SIZE)
    for epoch in range(1000):
        order = np.random.default_rng(epoch).permutation(len(store))
        for number, start in enumerate(range(0, len(order) - batch + 1, batch)):
            rows = store[order[start : start + batch]]
            uint8 = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))
            generator = torch.Generator().manual_seed(epoch * 100_003 + number)
            yield views(uint8, generator), torch.zeros(batch, dtype=torch.long)


def new_config(folder: str, batch: int, workers: int, cache_dir: str, cache: str = "disk"):
    """The ``imagenet`` recipe on ``folder`` at 224 px with this batch and these workers, on the CPU; the store
    on disk in ``cache_dir`` (the first stream builds it, later ones memory-map it instead of decoding again)."""
    settings = {
        "data.train": [folder],
        "data.workers": workers,
        "data.cache": cache,
        "data.cache_dir": cache_dir,
        "augment.image_size": SIZE,
        "train.batch_size": batch,
        "train.device": "cpu",
    }
    return make_config("imagenet", [override(key, value) for key, value in settings.items()])


def has_view_batches() -> bool:
    return hasattr(loop, "view_batches")


def timed(make: Callable[[], Iterator], batches: int) -> tuple[float, float]:
    """(pairs/s over ``batches`` batches after the first, seconds from ``make()`` to the first batch); the stream
    is closed and its workers gone before this returns."""
    started = time.perf_counter()
    stream = make()
    next(stream)
    first = time.perf_counter() - started
    started, pairs = time.perf_counter(), 0
    for _ in range(batches):
        views, *_ = next(stream)
        pairs += len(views[0])
    rate = pairs / (time.perf_counter() - started)
    if hasattr(stream, "close"):
        stream.close()
    del stream
    gc.collect()
    return rate, first


def data_alone(paths: list[Path], folder: str, args, workers: int) -> dict[str, dict[str, float]]:
    """pairs/s of each path (median over interleaved repeats) and its one-off costs."""
    started = time.perf_counter()
    store = square_store(paths, workers)
    store_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache_dir:
        makers: dict[str, Callable[[], Iterator]] = {
            "(a) official: PIL + torchvision views in workers": lambda: official(paths, args.batch, workers),
            "(b) previous: square 224 store + batched views": lambda: previous(store, args.batch),
        }
        if has_view_batches():
            config = new_config(folder, args.batch, workers, cache_dir)
            makers["(c) new default: view_batches"] = lambda: loop.view_batches(config, CPU)
            if args.cache_off:
                off = new_config(folder, args.batch, workers, cache_dir, cache="off")
                makers["(c) view_batches, data.cache=off"] = lambda: loop.view_batches(off, CPU)
        results: dict[str, dict[str, float]] = {name: {} for name in makers}
        results["(b) previous: square 224 store + batched views"]["store s"] = store_seconds
        rates: dict[str, list[float]] = {name: [] for name in makers}
        firsts: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.repeats):
            for name, make in makers.items():
                rate, first = timed(make, args.batches)
                rates[name].append(rate)
                firsts[name].append(first)
        for name in makers:
            entry = results[name]
            entry["pairs/s"] = statistics.median(rates[name])
            entry["spread"] = (min(rates[name]), max(rates[name]))
            entry["first batch s"] = firsts[name][0]  # the first stream of (c) builds its store
            entry["later first batch s"] = statistics.median(firsts[name][1:]) if len(firsts[name]) > 1 else 0.0
    return results


def print_data(title: str, paths: list[Path], results: dict[str, dict[str, float]], args, workers: int) -> None:
    sizes = [Image.open(p).size for p in paths]
    print(
        f"\n## {title}: {len(paths)} JPEGs, median {int(np.median([w for w, _ in sizes]))}x"
        f"{int(np.median([h for _, h in sizes]))} px, {np.mean([p.stat().st_size for p in paths]) / 1e3:.0f} KB "
        f"on average; batch {args.batch}, {workers} workers, {args.batches} batches timed per stream, median of "
        f"{args.repeats} interleaved repeats"
    )
    reference = results["(a) official: PIL + torchvision views in workers"]["pairs/s"]
    print("| path | pairs/s | × (a) | spread (pairs/s) | first batch of the first stream | later streams |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        low, high = r["spread"]
        print(
            f"| {name} | {r['pairs/s']:,.0f} | {r['pairs/s'] / reference:.2f}× | {low:,.0f}-{high:,.0f} | "
            f"{r['first batch s']:.1f} s | {r['later first batch s']:.1f} s |"
        )
    store = results["(b) previous: square 224 store + batched views"]["store s"]
    print(
        f"(b)'s store (decoding every image once, {workers} workers): {store:.1f} s, "
        f"{len(paths) / store:,.0f} images/s, {len(paths) * SIZE * SIZE * 3 / 1e6:.0f} MB"
    )
    if not has_view_batches():
        print("(c): barlowtwins.train.loop.view_batches is not in this tree yet; not measured")
    sys.stdout.flush()


def model_step(batch: int, steps: int, precision: str) -> float:
    """Median seconds of one ResNet-50 + 8192^3 projector step (the ``imagenet`` recipe's) on ``batch`` pairs."""
    config = make_config("imagenet", [override("train.batch_size", batch)])
    method = loop.build_method(config).to(memory_format=torch.channels_last)
    optimizer = loop.run_optimizer(config, method)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    views = [
        torch.randn(batch, 3, SIZE, SIZE, generator=generator).contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]
    dtype = torch.bfloat16 if precision == "bf16" else None
    loop.train_step(method, optimizer, scaler, views, dtype)  # warm-up: allocations, LARS state
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loop.train_step(method, optimizer, scaler, views, dtype)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def print_step(sets: dict[str, dict[str, dict[str, float]]], step: float, args) -> None:
    b = args.step_batch
    print(
        f"\n## End to end: ResNet-50 + projector 8192-8192-8192 at {SIZE} px, batch {b}, {args.precision}, "
        f"LARS (the imagenet recipe): {step:.2f} s a step (median of {args.steps}), {b / step:.1f} pairs/s"
    )
    print(
        f"data / step: the seconds a path takes to make {b} pairs at its pairs/s above over the step's seconds "
        f"(above 1: data is the bottleneck). The published run's pace was {PAPER_PAIRS_PER_GPU:.0f} pairs/s per "
        f"V100 (~124 h for 1000 epochs on 32): cores per V100 = the cores of this machine a path needs for it."
    )
    print(f"| set | path | seconds to make {b} pairs | data / step | bottleneck here | cores per V100 |")
    print("|---|---|---:|---:|---|---:|")
    for title, results in sets.items():
        for name, r in results.items():
            data = b / r["pairs/s"]
            cores = PAPER_PAIRS_PER_GPU / (r["pairs/s"] / (os.cpu_count() or 1))
            print(
                f"| {title} | {name} | {data:.3f} s | {data / step:.3f} | {'data' if data > step else 'model'} | "
                f"{cores:.2f} |"
            )


def describe_tree() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        run = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True)
        return run.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raccoon", default=str(RACCOON), help="folder of real JPEGs ('' to skip)")
    parser.add_argument("--count", type=int, default=1000, help="photo-like JPEGs at ImageNet sizes (0 to skip)")
    parser.add_argument("--batch", type=int, default=32, help="pairs per batch of the data paths")
    parser.add_argument("--batches", type=int, default=4, help="batches timed per stream (a multiple of the workers)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: one per core)")
    parser.add_argument("--no-cache-off", dest="cache_off", action="store_false", help="skip (c) with cache off")
    parser.add_argument("--threads", type=int, default=None, help="torch threads here (default: torch's)")
    parser.add_argument("--step-batch", type=int, default=16, help="pairs in the ResNet-50 step")
    parser.add_argument("--steps", type=int, default=3, help="timed ResNet-50 steps (median reported)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of the ResNet-50 step")
    parser.add_argument("--skip-step", action="store_true", help="no ResNet-50 step")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*TorchVision are deprecated.*")
    workers = args.workers or usable_cpus()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"$ python {shlex.join(['benchmarks/fullsize.py', *sys.argv[1:]])}")
    print(
        f"Machine: {machine()}, no GPU; torch {torch.__version__}, torch threads in this process: "
        f"{torch.get_num_threads()}; code at {describe_tree()}"
    )
    sets: dict[str, dict[str, dict[str, float]]] = {}
    if args.raccoon:
        paths = sorted(Path(args.raccoon).glob("*.jpg"))
        title = "Real photos (raccoon)"
        sets[title] = data_alone(paths, args.raccoon, args, workers)
        print_data(title, paths, sets[title], args, workers)
    if args.count:
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            paths = imagenet_like_jpegs(directory, args.count)
            print(f"\n(generated {len(paths)} photo-like JPEGs in {time.perf_counter() - started:.0f} s, untimed)")
            title = "Photo-like JPEGs at ImageNet sizes"
            sets[title] = data_alone(paths, directory, args, workers)
            print_data(title, paths, sets[title], args, workers)
    if not args.skip_step:
        print_step(sets, model_step(args.step_batch, args.steps, args.precision), args)


if __name__ == "__main__":
    main()
