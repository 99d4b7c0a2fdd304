"""Full-size photos: pairs/s of data + views alone, ours against the official pipeline as ``main.py`` runs it.

Three sets of JPEGs: the real photos of ``../shared/data/raccoon/JPEGImages`` (200, 178x283 to 2000x1333 px),
``--count`` photo-like JPEGs at ImageNet's typical sizes (500x375, 375x500, 500x333, ...; quality 90,
``decoders.imagenet_like_jpegs``) and ``--large`` photo-like JPEGs of 2000x1500 / 1500x2000 (a camera's), both
generated into a temporary directory. Pairs per second (two 224 px views of one image, normalised float
tensors, no model) at each ``--batch`` of:

(a) main.py: a transcription of facebookresearch/barlowtwins ``main.py``'s ``Transform`` (its ``GaussianBlur``
    = PIL's ``ImageFilter.GaussianBlur(sigma)``, sigma = ``random.random() * 1.9 + 0.1``, p 1.0 / 0.1; its
    ``Solarization`` = ``ImageOps.solarize``, p 0.0 / 0.2; torchvision's RandomResizedCrop(224, bicubic), flip,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, ToTensor, Normalize, in main.py's order) on
    torchvision's ``ImageFolder`` (PIL decode), in a DataLoader as main.py builds it (``num_workers``,
    ``pin_memory=True``; a shuffled sampler). main.py restarts its loader every epoch, which costs nothing on
    ImageNet's 1.28 M photos and would dominate on 200: here one pass of a sampler long enough for every timed
    batch stands for an epoch, so (a) runs at its steady pace;
(b) ours: ``views.batches.view_batches(config, cpu)``, the batches ``pretrain`` itself draws, with the
    ``imagenet`` recipe at this batch, ``data.workers`` as (a), the store on disk in a temporary directory (built
    by the first stream, memory-mapped by the later ones); (b, cache off) the same, each JPEG decoded when read.

Each repeat takes a fresh stream of every path in turn (interleaved: a busy shared machine slows all alike),
draws ``--warm`` batches (worker start-up, the store), then times batches until ``--pairs`` pairs; figures are
medians over ``--repeats`` and ratios are against (a) in the same repeat. ``--json`` writes every figure.

    python benchmarks/fullsize.py                                   # the three sets, batch 32 and 64
    python benchmarks/fullsize.py --count 0 --large 0 --batch 64    # raccoon photos only, batch 64
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as transforms
from decoders import RACCOON, imagenet_like_jpegs, machine, photo_like
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, RandomSampler

from barlowtwins.recipes import make_config, override
from barlowtwins.runtime import usable_cpus
from barlowtwins.views.batches import view_batches

CPU = torch.device("cpu")
LARGE_SIZES = ((2000, 1500), (1500, 2000))
OFFICIAL, OURS, OURS_OFF = "(a) main.py", "(b) ours: view_batches", "(b) ours, data.cache=off"


class GaussianBlur:
    """main.py's ``GaussianBlur``, as written there."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.p:
            sigma = random.random() * 1.9 + 0.1
            return img.filter(ImageFilter.GaussianBlur(sigma))
        return img


class Solarization:
    """main.py's ``Solarization``, as written there."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def official_view(blur: float, solarize: float) -> transforms.Compose:
    """One of main.py's ``Transform`` pipelines (``transform``: 1.0, 0.0; ``transform_prime``: 0.1, 0.2)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            transforms.RandomGrayscale(p=0.2),
            GaussianBlur(p=blur),
            Solarization(p=solarize),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


class Transform:
    """main.py's ``Transform``: the pair (view A, view B) of one image."""

    def __init__(self):
        self.transform, self.transform_prime = official_view(1.0, 0.0), official_view(0.1, 0.2)

    def __call__(self, x: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(x), self.transform_prime(x)


def official(root: str, batch: int, workers: int) -> Iterator:
    """(a): main.py's dataset and loader; one shuffled pass of 10^7 samples (see the module docstring)."""
    dataset = torchvision.datasets.ImageFolder(root, Transform())
    sampler = RandomSampler(dataset, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, pin_memory=True, sampler=sampler)
    for (y1, y2), _ in loader:
        yield (y1, y2), None, None


def ours(folder: str, batch: int, workers: int, cache_dir: str, cache: str) -> Iterator:
    """(b): the training path's batches with the ``imagenet`` recipe at 224 px on the CPU."""
    settings = {
        "data.train": [folder],
        "data.workers": workers,
        "data.cache": cache,
        "data.cache_dir": cache_dir,
        "augment.image_size": 224,
        "train.batch_size": batch,
        "train.device": "cpu",
    }
    return view_batches(make_config("imagenet", [override(k, v) for k, v in settings.items()]), CPU)


def timed(make: Callable[[], Iterator], warm: int, pairs: int) -> float:
    """pairs/s of a fresh stream after ``warm`` batches, over at least ``pairs`` pairs; its workers gone after."""
    stream = make()
    for _ in range(warm):
        next(stream)
    started, drawn = time.perf_counter(), 0
    while drawn < pairs:
        views, *_ = next(stream)
        drawn += len(views[0])
    rate = drawn / (time.perf_counter() - started)
    stream.close()
    del stream
    gc.collect()
    return rate


def measure(root: str, folder: str, batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every path's pairs/s (median, spread, each repeat) and its ratio to (a) in the same repeat."""
    with tempfile.TemporaryDirectory() as cache_dir:
        makers = {
            OFFICIAL: lambda: official(root, batch, args.workers),
            OURS: lambda: ours(folder, batch, args.workers, cache_dir, "disk"),
        }
        if args.cache_off:
            makers[OURS_OFF] = lambda: ours(folder, batch, args.workers, cache_dir, "off")
        rates: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.repeats):
            for name, make in makers.items():
                rates[name].append(timed(make, args.warm, args.pairs))
    results = {}
    for name, values in rates.items():
        ratios = [v / a for v, a in zip(values, rates[OFFICIAL], strict=True)]
        results[name] = {"pairs/s": statistics.median(values), "each": values, "x (a)": statistics.median(ratios)}
    return results


def describe(paths: list[Path]) -> str:
    sizes = [Image.open(p).size for p in paths]
    longer, shorter = (int(np.median([f(size) for size in sizes])) for f in (max, min))
    return (
        f"{len(paths)} JPEGs, median {longer}x{shorter} px (longer x shorter side; largest "
        f"{max(w * h for w, h in sizes) / 1e6:.1f} Mpx), {np.mean([p.stat().st_size for p in paths]) / 1e3:.0f} KB "
        "on average"
    )


def report(title: str, paths: list[Path], results: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    print(f"\n## {title}: {describe(paths)}")
    print(f"{args.workers} workers; {args.pairs} pairs timed per stream after {args.warm} batches; median of")
    print(f"{args.repeats} interleaved repeats (ratio: median of the per-repeat ratios to (a))\n")
    print("| batch | path | pairs/s | × (a) | each repeat (pairs/s) |")
    print("|---:|---|---:|---:|---|")
    for batch, paths_results in results.items():
        for name, r in paths_results.items():
            each = ", ".join(f"{v:.0f}" for v in r["each"])
            print(f"| {batch} | {name} | {r['pairs/s']:.0f} | {r['x (a)']:.2f}× | {each} |")
    sys.stdout.flush()


def _write_large(job: tuple[int, str]) -> None:
    index, directory = job
    rng = np.random.default_rng([7, index])
    photo_like(rng, *LARGE_SIZES[index % 2]).save(Path(directory) / f"large-{index:04d}.jpg", quality=90)


def large_jpegs(directory: Path, count: int) -> list[Path]:
    with ProcessPoolExecutor(usable_cpus()) as pool:
        list(pool.map(_write_large, [(i, str(directory)) for i in range(count)]))
    return sorted(directory.glob("large-*.jpg"))


def run_set(title: str, folder: Path, args: argparse.Namespace, out: dict) -> None:
    """Measure one folder of JPEGs at every batch size: (a) reads it as ImageFolder's one class."""
    paths = sorted(folder.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "photos").symlink_to(folder.resolve(), target_is_directory=True)
        results = {batch: measure(root, str(folder), batch, args) for batch in args.batch}
    report(title, paths, results, args)
    out[title] = {"photos": describe(paths), "results": {str(b): r for b, r in results.items()}}


def describe_tree() -> str:
    """``git describe`` of this checkout (``-dirty`` with uncommitted changes)."""
    run = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True)
    return run.stdout.decode().strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raccoon", default=str(RACCOON), help="folder of real JPEGs ('' to skip)")
    parser.add_argument("--count", type=int, default=300, help="photo-like JPEGs at ImageNet sizes (0: skip)")
    parser.add_argument("--large", type=int, default=64, help="photo-like JPEGs of 2000x1500 px (0: skip)")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64], help="batch sizes")
    parser.add_argument("--pairs", type=int, default=512, help="pairs timed per stream")
    parser.add_argument("--warm", type=int, default=4, help="batches drawn before timing")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: one per core)")
    parser.add_argument("--no-cache-off", dest="cache_off", action="store_false", help="skip (b) with cache off")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    args.workers = args.workers or usable_cpus()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    print(f"$ python {shlex.join(['benchmarks/fullsize.py', *sys.argv[1:]])}")
    print(
        f"Machine: {machine()}, no GPU; torch {torch.__version__}, torchvision {torchvision.__version__}; "
        f"code at {describe_tree()}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    out: dict = {"command": shlex.join(["benchmarks/fullsize.py", *sys.argv[1:]]), "machine": machine()}
    if args.raccoon:
        run_set("Real photos (raccoon)", Path(args.raccoon), args, out)
    with tempfile.TemporaryDirectory() as directory:
        if args.count:
            folder = Path(directory) / "imagenet-size"
            folder.mkdir()
            imagenet_like_jpegs(folder, args.count)
            run_set("Photo-like JPEGs at ImageNet sizes", folder, args, out)
        if args.large:
            folder = Path(directory) / "large"
            folder.mkdir()
            large_jpegs(folder, args.large)
            run_set("Photo-like JPEGs of 2000x1500 px", folder, args, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
