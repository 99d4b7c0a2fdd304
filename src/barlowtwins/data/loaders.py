"""The one loader path: every batch is ``(images, labels, ids)``, for training and evaluation alike.

Training batches come either from per-sample views in DataLoader workers (:func:`training_batches`) or from
images decoded once (:func:`decoded`) whose views are made a whole batch at a time on the training device
(:func:`cached_training_batches`).

Map-style samples go through :class:`Transformed` (seeded per sample while training, so a resumed run
sees exactly the views it would have); shards go through one WebDataset pipeline whose only stage is
:func:`barlowtwins.data.shards.decode_sample` followed by the transform.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, default_collate

from barlowtwins import distributed
from barlowtwins.config import DataConfig
from barlowtwins.data import cache
from barlowtwins.data.decode import open_image
from barlowtwins.data.shards import decode_sample, read_samples
from barlowtwins.data.sources import FileImages, ImageSource, Samples
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import usable_cpus


class Transformed(Dataset):
    """``(transform(image), label, id)`` of each sample. Items are indices, or ``(index, seed)`` pairs:
    then the random transform runs under that seed, so views depend on the seed alone, not on the worker."""

    def __init__(self, samples: Samples, transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]):
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self[index]
        image, label, sample_id = self.samples[item]
        return self.transform(image), label, sample_id


class _DecodeTransform:
    """WebDataset stage: raw sample -> ``(transform(image), label, key)``; a class so workers can pickle it."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, sample: dict):
        image, label, key = decode_sample(sample)
        return self.transform(image), label, key


class ShardedEpochSampler(torch.utils.data.Sampler):
    """This process's share of a seeded permutation per epoch, equal across processes, resumable mid-epoch.

    Yields ``(index, augmentation seed)`` pairs for :class:`Transformed`.
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


def resolve_workers(requested: int) -> int:
    """``-1``: one worker process per CPU this process may use (:func:`~barlowtwins.runtime.usable_cpus`), at most 8."""
    return min(8, usable_cpus()) if requested < 0 else requested


def _worker_seed(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader(dataset, workers: int, device: torch.device, **kwargs) -> DataLoader:
    return DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_seed,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        **kwargs,
    )


def _shard_stream(
    shards: list[str],
    transform: Callable,
    batch_size: int,
    workers: int,
    device: torch.device,
    *,
    training: bool,
    seed: int = 0,
    shuffle_buffer: int = 0,
    collate: Callable = default_collate,
) -> DataLoader:
    """One pass over the shards, split by worker (and by process while training), in batches."""
    pipeline = wds.WebDataset(
        shards,
        shardshuffle=False,
        nodesplitter=wds.split_by_node if training else None,
        workersplitter=wds.split_by_worker,
        empty_check=not training,
    )
    if shuffle_buffer:
        pipeline = pipeline.shuffle(shuffle_buffer, seed=seed)
    pipeline = pipeline.map(_DecodeTransform(transform)).batched(batch_size, collation_fn=collate, partial=not training)
    if not training:
        workers = min(workers, len(shards))  # a worker without a shard fails inside WebDataset
    return _loader(pipeline, workers, device, batch_size=None)


def batches(
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    workers: int,
    device: torch.device,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    collate: Callable = default_collate,
) -> DataLoader:
    """One pass over every sample: in order, or (map-style only) in an order seeded by ``shuffle_seed``.

    With several workers, shard batches arrive interleaved across workers: use the ids, not the position.
    """
    if source.samples is None:
        if shuffle_seed is not None:
            raise BarlowTwinsError("shuffled passes need map-style data; select the samples into memory first")
        return _shard_stream(source.shards, transform, batch_size, workers, device, training=False, collate=collate)
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return _loader(
        Transformed(source.samples, transform),
        workers,
        device,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        drop_last=drop_last,
        collate_fn=collate,
    )


def training_batches(
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    start_epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = DataConfig.shuffle_buffer,
) -> Iterator:
    """Endless stream of this process's training batches; the caller takes ``steps_per_epoch`` per epoch.

    Map-style data: a seeded permutation per epoch, resumable at an exact batch. Shards: a fresh
    shard order per pass (the same on every process), split by process and by worker, shuffled in a
    buffer; resuming reseeds the stream rather than replaying it.
    """
    if source.samples is not None:
        sampler = ShardedEpochSampler(len(source.samples), batch_size, seed)
        dataset = Transformed(source.samples, transform)
        loader = _loader(dataset, workers, device, batch_size=batch_size, sampler=sampler, drop_last=True)
        for epoch in itertools.count(start_epoch):
            sampler.set_epoch(epoch, skip_batches if epoch == start_epoch else 0)
            yield from loader
        return
    if len(source.shards) < distributed.world_size():  # a process without shards would wait forever
        raise BarlowTwinsError(
            f"{len(source.shards)} shards cannot be split over {distributed.world_size()} processes; "
            "write at least one shard per process (better: several per data-loading worker)"
        )
    for pass_index in itertools.count():
        order = list(source.shards)
        random.Random(seed + 1000 * start_epoch + skip_batches + pass_index).shuffle(order)
        yield from _shard_stream(
            order,
            transform,
            batch_size,
            workers,
            device,
            training=True,
            seed=seed + pass_index,
            shuffle_buffer=shuffle_buffer,
        )


class _Stored:
    """Worker-side transform: an image as the store keeps it (``cache.stored_image`` or ``stored_full``)."""

    def __init__(self, size: int, square: bool):
        self.size, self.square = size, square

    def __call__(self, image):
        if self.square:
            return np.array(cache.stored_image(image, self.size))  # writable: collation wraps it in a tensor
        return _Whole(*cache.stored_full(image, self.size))


class _Whole:
    """A whole stored image and its original size, passed from a worker as one pickled object: torch would turn
    a bare array into a tensor in shared memory, one file descriptor per image, and run out of them."""

    def __init__(self, pixels: np.ndarray, original: tuple[int, int]):
        self.pixels, self.original = pixels, original


def _as_lists(batch: list) -> tuple[list, ...]:
    """Collation for images of several shapes: the batch's fields as lists."""
    return tuple(list(field) for field in zip(*batch, strict=True))


def store_mode(source: ImageSource, size: int, mode: str, square: bool = True) -> str:
    """``mode`` with "auto" resolved: "memory" when the store takes under a quarter of the available RAM, else
    "disk" when it takes under half the free disk of the cache, else "off" (decode every step)."""
    if mode != "auto":
        return mode
    needed = cache.stored_bytes(source.num_samples, size) if square else estimated_bytes(source, size)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed < available / 4:
        return "memory"
    free = shutil.disk_usage(_existing_parent(cache.default_cache_dir())).free
    return "disk" if needed < free / 2 else "off"


def estimated_bytes(source: ImageSource, size: int, sample: int = 32) -> int:
    """Bytes of a ``full`` store of ``source`` at ``size``, from the headers of ``sample`` evenly spaced images."""
    if source.samples is not None:
        picks = np.linspace(0, source.num_samples - 1, min(sample, source.num_samples)).round().astype(int)
        images = [source.samples.open(int(i)) for i in picks]
    else:
        images = [open_image(s.image, s.key) for s in read_samples(source.shards, limit=sample)]
    per_image = [3 * np.prod(cache.full_shape(image.height, image.width, size)) for image in images]
    return int(np.mean(per_image) * source.num_samples) if per_image else 0


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def decoded(
    source: ImageSource, size: int, mode: str, cache_dir: str, workers: int, square: bool = True
) -> cache.DecodedImages:
    """Every image of ``source`` decoded once, in memory or in a disk cache reused across runs: ``square``
    (test-time input: shorter side ``size``, centre crop) or whole (shorter side at most ``size``).

    ``mode`` "auto": see :func:`store_mode` ("off" is not an option here: then in memory).
    Decoding runs in ``workers`` DataLoader processes. Rows are in the order of one ordered pass.
    """
    mode = store_mode(source, size, mode, square)
    collate = default_collate if square else _as_lists
    loader = batches(source, _Stored(size, square), 64, workers, torch.device("cpu"), collate=collate)
    rows = (
        (image.numpy() if square else (image.pixels, image.original), int(label), i)
        for images, labels, ids in loader
        for image, label, i in zip(images, labels, ids, strict=True)
    )
    if mode in ("memory", "off"):
        return cache.decode_all(rows, source.num_samples, size, progress="decoding", square=square)
    files = source.shards or (source.samples.images.paths if isinstance(source.samples.images, FileImages) else [])
    key = cache.cache_key(source.description, files, size, square)
    directory = cache_dir or cache.default_cache_dir()
    return cache.decode_all(rows, source.num_samples, size, directory, key, "decoding", square)


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The seed of one batch's views: a function of (run seed, epoch, batch, process) only, so resuming at a
    batch boundary replays exactly the views an uninterrupted run draws."""
    return (((seed * 1_000_003 + epoch) * 10_000_019 + batch) * 1_009 + rank) % 2**63


def cached_training_batches(
    images: cache.DecodedImages,
    views: Callable,
    batch_size: int,
    seed: int,
    device: torch.device,
    start_epoch: int = 0,
    skip_batches: int = 0,
    side: Callable[[], int] | None = None,
) -> Iterator:
    """Endless ``(views, labels, ids)`` batches: a seeded permutation per epoch split over processes (as
    :class:`ShardedEpochSampler`), rows gathered from the decoded images, ``views(uint8 batch, generator)``
    made on ``device`` when the batch is asked for; with ``side``, ``views(uint8 batch, generator, side())``,
    the side asked for then (low resolution first: the side of the step the batch is for)."""
    sampler = ShardedEpochSampler(len(images), batch_size, seed)
    for epoch in itertools.count(start_epoch):
        first = skip_batches if epoch == start_epoch else 0
        sampler.set_epoch(epoch, first)
        order = np.fromiter((index for index, _ in sampler), dtype=np.int64)
        for batch, start in enumerate(range(0, len(order), batch_size), start=first):
            rows = order[start : start + batch_size]
            uint8 = images.batch(rows).to(device, non_blocking=True)
            generator = torch.Generator().manual_seed(batch_seed(seed, epoch, batch, sampler.rank))
            made = views(uint8, generator) if side is None else views(uint8, generator, side())
            yield made, torch.from_numpy(images.labels[rows]), [images.ids[i] for i in rows]
