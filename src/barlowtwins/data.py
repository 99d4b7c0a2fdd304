"""Image sources and loaders: ImageFolder trees, WebDataset shards, torchvision sets, built-in digits.

Every source yields ``(PIL RGB image, label)``; the label is -1 where the data has none. Labels are only
ever read by evaluation. ``--data`` accepts:

* a directory: an ImageFolder tree (``class/img.jpg``, ImageNet layout), or a flat folder of images;
* WebDataset shards: a brace pattern (``train-{000000..000009}.tar``, quoted) or the list of paths an
  unquoted pattern expands to; samples are ``KEY.jpg``/``png``/... with an optional ``KEY.cls``;
* ``cifar10``, ``cifar100``, ``stl10`` (torchvision; ``:test`` for the test split, STL-10's unlabeled
  split by default, ``stl10:train`` for its labelled one) and ``digits`` / ``digits:test``.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from barlowtwins import distributed
from barlowtwins.errors import BarlowTwinsError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
WDS_LABEL_KEYS = ("cls", "label", "target")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
DIGITS_TEST_SIZE = 297  # a stratified sixth of the 1,797 digits, fixed by seed 0


@dataclass
class ImageSource:
    """What ``--data`` named: a map-style dataset, or WebDataset shards streamed at training time."""

    description: str
    num_samples: int
    dataset: Dataset | None = None
    shards: list[str] | None = None


class FileImages(Dataset):
    """Images listed by path, with labels (-1: none); the error names the file that cannot be read."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        self.paths = list(paths)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return read_image(self.paths[index]), self.labels[index]


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index])


class EncodedImages(Dataset):
    """Encoded image bytes held in memory (the first samples of WebDataset shards)."""

    def __init__(self, samples: list[tuple[str, bytes, int]]):
        self.samples = samples  # (where, encoded image, label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        where, encoded, label = self.samples[index]
        return decode_image(encoded, where), label


class Transformed(Dataset):
    """Applies ``transform`` to the image of each ``(image, label)`` pair."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:
        raise BarlowTwinsError(f"cannot read image {path} ({error}); remove or replace the file") from None


def decode_image(encoded: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return image.convert("RGB")
    except Exception as error:
        raise BarlowTwinsError(f"cannot decode image {where} ({error}); remove or replace it") from None


def digits(split: str = "train") -> ArrayImages:
    """scikit-learn's 1,797 real 8x8 handwritten digits (bundled, no download), split 1,500 / 297."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=DIGITS_TEST_SIZE, stratify=bunch.target, random_state=0
    )
    index = train_idx if split == "train" else test_idx
    return ArrayImages(images[index], bunch.target[index])


def _torchvision_set(name: str, split: str, root: str, download: bool) -> Dataset:
    try:
        if name == "stl10":
            stl_split = {"train": "train", "test": "test", "unlabeled": "unlabeled"}[split]
            return torchvision.datasets.STL10(root, split=stl_split, download=download)
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        return cls(root, train=split == "train", download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise BarlowTwinsError(
            f"{name} ({split}) not found under '{root}' ({error}); pass --download to fetch it, "
            "or --data-root to point at an existing copy"
        ) from None


def _folder(path: Path) -> Dataset:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        classes = [d.name for d in subdirs]
        paths, labels = [], []
        for label, directory in enumerate(subdirs):
            for root, _, files in sorted(os.walk(directory, followlinks=True)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        paths.append(os.path.join(root, name))
                        labels.append(label)
        dataset = FileImages(paths, labels)
        dataset.classes = classes
    else:
        paths = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS))
        dataset = FileImages(paths, [-1] * len(paths))
    if len(dataset) == 0:
        raise BarlowTwinsError(
            f"{path} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)} in it or its class folders)"
        )
    return dataset


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Brace-expand each pattern and check that every shard exists."""
    shards = [url for pattern in patterns for url in braceexpand(pattern)]
    for shard in shards:
        if "://" not in shard and not Path(shard).is_file():
            raise BarlowTwinsError(f"shard not found: {shard}; check the path and the {{a..b}} range")
    return shards


def _sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    directory, _, filename = member_name.rpartition("/")
    stem, _, extension = filename.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def count_shard_samples(shard: str) -> int:
    """Number of samples with an image in one local tar shard (reads tar headers only)."""
    keys = set()
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                key, extension = _sample_key(member.name)
                if extension in WDS_IMAGE_KEYS:
                    keys.add(key)
    except (tarfile.TarError, OSError) as error:
        raise BarlowTwinsError(f"cannot read shard {shard} ({error}); is it a tar file?") from None
    return len(keys)


def _encoded_sample(sample: dict) -> tuple[str, bytes, int]:
    """(where, encoded image bytes, label or -1) of one WebDataset sample."""
    where = f"{sample.get('__key__')} in {sample.get('__url__')}"
    encoded = next((sample[k] for k in WDS_IMAGE_KEYS if k in sample), None)
    if encoded is None:
        raise BarlowTwinsError(f"sample {where} has no image (expected one of {', '.join(WDS_IMAGE_KEYS)})")
    raw_label = next((sample[k] for k in WDS_LABEL_KEYS if k in sample), None)
    return where, encoded, int(raw_label.decode().strip()) if raw_label is not None else -1


class _DecodeAndTransform:
    """WebDataset stage: raw sample -> (transformed image, label). A class, so spawned workers can pickle it."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, sample: dict):
        where, encoded, label = _encoded_sample(sample)
        return self.transform(decode_image(encoded, where)), label


def _first_shard_samples(shards: list[str], limit: int) -> EncodedImages:
    pipeline = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None)
    return EncodedImages([_encoded_sample(sample) for sample in itertools.islice(pipeline, limit)])


def _looks_like_shards(entries: Sequence[str]) -> bool:
    return all(".tar" in entry for entry in entries)


def open_source(
    entries: Sequence[str], root: str = "data", download: bool = False, limit: int = 0, what: str = "--data"
) -> ImageSource:
    """Resolve what the user passed as ``--data`` (or ``--eval-data``) into an :class:`ImageSource`.

    ``limit`` keeps only the first N samples (for shards these are read once into memory).
    """
    if not entries:
        raise BarlowTwinsError(f"{what} is empty; pass an image folder, shard pattern or dataset name")
    if _looks_like_shards(entries):
        shards = expand_shards(entries)
        if limit:
            dataset = _first_shard_samples(shards, limit)
            return ImageSource(f"first {len(dataset)} samples of {len(shards)} shards", len(dataset), dataset)
        total = sum(count_shard_samples(s) for s in shards if "://" not in s)
        if total == 0:
            raise BarlowTwinsError(f"{what}: the shards hold no images ({entries[0]} ...)")
        return ImageSource(f"{len(shards)} WebDataset shards, {total} samples", total, shards=shards)
    if len(entries) > 1:
        raise BarlowTwinsError(f"{what} takes one folder or dataset name, or shard paths; got {list(entries)}")
    entry = entries[0]
    name, _, split = entry.partition(":")
    if name == "digits" and not Path(entry).exists():
        dataset = digits(split or "train")
        description = f"digits ({split or 'train'})"
    elif name in TORCHVISION_SETS and not Path(entry).exists():
        default_split = "unlabeled" if name == "stl10" else "train"
        dataset = _torchvision_set(name, split or default_split, root, download)
        description = f"{name} ({split or default_split})"
    else:
        path = Path(entry)
        if not path.exists():
            raise BarlowTwinsError(
                f"{what}: no such file or directory: {entry}; pass an image folder, .tar shards, or one of "
                f"{', '.join(('digits', *TORCHVISION_SETS))}"
            )
        if not path.is_dir():
            raise BarlowTwinsError(f"{what}: {entry} is a file; pass its folder, or .tar shards")
        dataset = _folder(path)
        description = f"image folder {entry}"
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return ImageSource(f"{description}, {len(dataset)} samples", len(dataset), dataset)


class SeededTransformed(Dataset):
    """Applies a random ``transform`` under a per-sample seed: items are ``(index, seed)`` pairs.

    The augmentations of a sample then depend only on (run seed, epoch, index), not on which worker or
    process loads it or on what was drawn before, so a resumed run sees exactly the views it would have.
    """

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class ShardedEpochSampler(torch.utils.data.Sampler):
    """This process's share of a seeded permutation per epoch, equal across processes, resumable mid-epoch.

    Yields ``(index, augmentation seed)`` pairs for :class:`SeededTransformed`.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        per_process = self.num_samples // self.world // self.batch_size * self.batch_size
        mine = order[self.rank :: self.world][:per_process]
        return mine[self.skip_batches * self.batch_size :]

    def sample_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(index, self.sample_seed(index)) for index in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


def _worker_seed(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader_kwargs(workers: int, device: torch.device) -> dict:
    return dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_seed,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def resolve_workers(requested: int) -> int:
    return min(8, os.cpu_count() or 1) if requested < 0 else requested


def training_batches(
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    start_epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 2000,
) -> Iterator:
    """Endless stream of this process's training batches; the caller takes ``steps_per_epoch`` per epoch.

    Map-style data: a seeded permutation per epoch, resumable at an exact batch. Shards: a fresh
    shard order per pass (the same on every process), split by process and by worker, shuffled in a
    buffer; resuming reseeds the stream rather than replaying it.
    """
    kwargs = _loader_kwargs(workers, device)
    if source.dataset is not None:
        sampler = ShardedEpochSampler(len(source.dataset), batch_size, seed)
        loader = DataLoader(
            SeededTransformed(source.dataset, transform),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            **kwargs,
        )
        for epoch in itertools.count(start_epoch):
            sampler.set_epoch(epoch, skip_batches if epoch == start_epoch else 0)
            yield from loader
    else:
        if len(source.shards) < distributed.world_size():  # a process without shards would wait forever
            raise BarlowTwinsError(
                f"{len(source.shards)} shards cannot be split over {distributed.world_size()} processes; "
                "write at least one shard per process (better: several per data-loading worker)"
            )
        for pass_index in itertools.count():
            order = list(source.shards)
            random.Random(seed + 1000 * start_epoch + skip_batches + pass_index).shuffle(order)
            pipeline = (
                wds.WebDataset(
                    order,
                    shardshuffle=False,
                    nodesplitter=wds.split_by_node,
                    workersplitter=wds.split_by_worker,
                    empty_check=False,
                )
                .shuffle(shuffle_buffer, seed=seed + pass_index)
                .map(_DecodeAndTransform(transform))
                .batched(batch_size, collation_fn=default_collate, partial=False)
            )
            yield from DataLoader(pipeline, batch_size=None, **kwargs)


def evaluation_loader(
    source: ImageSource, transform: Callable, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """One ordered pass over all samples with a deterministic transform (feature extraction)."""
    if source.dataset is not None:
        kwargs = _loader_kwargs(workers, device)
        return DataLoader(Transformed(source.dataset, transform), batch_size=batch_size, shuffle=False, **kwargs)
    kwargs = _loader_kwargs(min(workers, len(source.shards)), device)  # a worker without a shard: WebDataset fails
    pipeline = (
        wds.WebDataset(source.shards, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker)
        .map(_DecodeAndTransform(transform))
        .batched(batch_size, collation_fn=default_collate, partial=True)
    )
    return DataLoader(pipeline, batch_size=None, **kwargs)


# --- Sample ids, label indexes and subsets (evaluation: embed, semi-supervised subsets, multi-label files) ---


def shard_index(shard: str) -> list[tuple[str, int]]:
    """``(key, label or -1)`` of every sample with an image in one local tar shard, in stored order.

    Reads tar headers and the tiny label members only, so no image is decoded.
    """
    keys: dict[str, bool] = {}  # key -> has an image, in order of first appearance
    labels: dict[str, int] = {}
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                key, extension = _sample_key(member.name)
                keys[key] = keys.get(key, False) or extension in WDS_IMAGE_KEYS
                if extension in WDS_LABEL_KEYS and member.isfile():
                    labels[key] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as error:
        raise BarlowTwinsError(f"cannot index shard {shard} ({error}); is it a tar file of samples?") from None
    return [(key, labels.get(key, -1)) for key, has_image in keys.items() if has_image]


def _dataset_labels(dataset: Dataset) -> list[int]:
    """Labels of a map-style dataset without decoding images where the dataset keeps them apart."""
    if isinstance(dataset, torch.utils.data.Subset):
        parent = _dataset_labels(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, (FileImages, ArrayImages)):
        return [int(label) for label in dataset.labels]
    if isinstance(dataset, EncodedImages):
        return [label for _, _, label in dataset.samples]
    for attribute in ("targets", "labels"):  # torchvision CIFAR / STL-10
        if hasattr(dataset, attribute):
            return [int(label) for label in getattr(dataset, attribute)]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _dataset_ids(dataset: Dataset) -> list[str]:
    """Sample ids of a map-style dataset: file paths for folders, keys for shard samples, else the index."""
    if isinstance(dataset, torch.utils.data.Subset):
        parent = _dataset_ids(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, FileImages):
        return list(dataset.paths)
    if isinstance(dataset, EncodedImages):
        return [where.split(" in ", 1)[0] for where, _, _ in dataset.samples]  # "KEY in URL", the sample's key
    return [str(i) for i in range(len(dataset))]


def sample_index(source: ImageSource) -> tuple[list[str], np.ndarray]:
    """``(ids, labels)`` of every sample of a source, in the order of a single-process ordered pass.

    Ids name samples in subset and label files: the WebDataset key for shards, the file path for image
    folders, the position for in-memory sets (digits, torchvision). Labels are -1 where there are none.
    """
    if source.dataset is not None:
        return _dataset_ids(source.dataset), np.asarray(_dataset_labels(source.dataset), dtype=np.int64)
    pairs = [pair for shard in source.shards for pair in shard_index(shard)]
    return [key for key, _ in pairs], np.asarray([label for _, label in pairs], dtype=np.int64)


def _read_shard_samples(shards: list[str], keys: set[str]) -> list[tuple[str, bytes, int]]:
    """The encoded image and label of each sample whose key is in ``keys``, in shard order."""
    images: dict[str, tuple[str, bytes]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    for shard in shards:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                key, extension = _sample_key(member.name)
                if key not in keys or not member.isfile():
                    continue
                if extension in WDS_IMAGE_KEYS and key not in images:
                    images[key] = (f"{key} in {shard}", tar.extractfile(member).read())
                    order.append(key)
                elif extension in WDS_LABEL_KEYS:
                    labels[key] = int(tar.extractfile(member).read().decode().strip())
    return [(images[key][0], images[key][1], labels.get(key, -1)) for key in order]


def select_samples(source: ImageSource, indices: Sequence[int], description: str) -> ImageSource:
    """A map-style source holding only the samples at ``indices`` (positions in :func:`sample_index`).

    Shard samples are read once into memory as encoded bytes (fine for labelled subsets: 10% of ImageNet
    is about 14 GB of JPEGs, so use an image folder for that scale).
    """
    indices = sorted(set(int(i) for i in indices))
    if source.dataset is not None:
        subset = torch.utils.data.Subset(source.dataset, indices)
        return ImageSource(f"{description}, {len(subset)} samples", len(subset), subset)
    ids, _ = sample_index(source)
    wanted = [ids[i] for i in indices]
    dataset = EncodedImages(_read_shard_samples(source.shards, set(wanted)))
    return ImageSource(f"{description}, {len(dataset)} samples", len(dataset), dataset)


class _WithIds(Dataset):
    """``(transform(image), label, id)`` of each sample of a map-style dataset."""

    def __init__(self, dataset: Dataset, transform: Callable, ids: Sequence[str]):
        self.dataset = dataset
        self.transform = transform
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label, self.ids[index]


class _DecodeTransformKey:
    """WebDataset stage: raw sample -> (transformed image, label, key); a class so workers can pickle it."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, sample: dict):
        where, encoded, label = _encoded_sample(sample)
        return self.transform(decode_image(encoded, where)), label, sample["__key__"]


def evaluation_loader_with_ids(
    source: ImageSource, transform: Callable, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """Like :func:`evaluation_loader`, but batches are ``(images, labels, ids)``.

    With several workers, shard batches arrive interleaved across workers, so callers that need an
    order must use the ids rather than the position. Workers are capped at the number of shards.
    """
    if source.dataset is not None:
        ids, _ = sample_index(source)
        kwargs = _loader_kwargs(workers, device)
        return DataLoader(_WithIds(source.dataset, transform, ids), batch_size=batch_size, shuffle=False, **kwargs)
    kwargs = _loader_kwargs(min(workers, len(source.shards)), device)
    pipeline = (
        wds.WebDataset(source.shards, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker)
        .map(_DecodeTransformKey(transform))
        .batched(batch_size, collation_fn=default_collate, partial=True)
    )
    return DataLoader(pipeline, batch_size=None, **kwargs)
