"""Training batches of views cut per sample (paper §2.2's crops of the whole original image), coloured per batch.

Each sample's crops are cut in a loader worker (:class:`Cropped`): from a stored row, or from an image decoded
there. The colour operations then run on the whole batch, seeded per batch: inside the worker's collation when
training on the CPU (the workers share that work; the main process keeps its cores for the model), on the device
in the main process otherwise (a GPU does them in no time). Either way the same generator draws the same numbers
on the CPU, so the views are the same, and resuming at a batch reproduces them exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from barlowtwins import distributed
from barlowtwins.config import DataConfig
from barlowtwins.data import cache
from barlowtwins.data.loaders import ShardedEpochSampler, batch_seed, training_batches
from barlowtwins.data.sources import ImageSource, Samples


class Cropped(Dataset):
    """``(crop(pixels, original size, id, generator), label, id, tag)`` of each sample: the crops of every view
    from stored rows (a ``DecodedImages``) or from images decoded here (``Samples``, opened lazily so the crop
    can ask for a reduced-size decode). Items are ``(index, seed, *tag)``: the generator of each sample's crops
    is seeded by its seed alone; the tag (epoch, batch) travels with the sample to the collation."""

    def __init__(self, images: cache.DecodedImages | Samples, crop: Callable):
        self.images, self.crop = images, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, ...]):
        index, seed, *tag = item
        generator = torch.Generator().manual_seed(seed)
        images = self.images
        if isinstance(images, cache.DecodedImages):
            pixels, original = images.image(index), images.original_size(index)
        else:
            pixels = images.open(index)
            original = (pixels.height, pixels.width)
        name = images.ids[index]
        return self.crop(pixels, original, name, generator), int(images.labels[index]), name, tuple(tag)


class NumberedBatches(Sampler):
    """Endless batches: epoch after epoch from ``start_epoch`` (the first skipping ``skip_batches``), the sampler's
    ``(index, seed)`` pairs in batches of ``batch_size`` (the last partial one dropped), each item tagged with its
    epoch and batch number. One pass of a loader over them never ends, so its workers never drain at an epoch's end
    (with 200 photos in batches of 64, an epoch is 3 batches, and one of two workers sat out every third)."""

    def __init__(self, sampler: ShardedEpochSampler, batch_size: int, start_epoch: int = 0, skip_batches: int = 0):
        self.sampler, self.batch_size = sampler, batch_size
        self.start_epoch, self.skip_batches = start_epoch, skip_batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        size = self.batch_size
        for epoch in itertools.count(self.start_epoch):
            first = self.skip_batches if epoch == self.start_epoch else 0
            self.sampler.set_epoch(epoch, first)
            items = list(self.sampler)
            for number, start in enumerate(range(0, len(items) - size + 1, size), start=first):
                yield [(index, seed, epoch, number) for index, seed in items[start : start + size]]


class Collate:
    """Stacks a batch's crops; with ``colour``, makes its views there, from the batch's own seeded generator."""

    def __init__(self, colour: Callable | None, seed: int, rank: int):
        self.colour, self.seed, self.rank = colour, seed, rank

    def generator(self, tag: tuple[int, int]) -> torch.Generator:
        epoch, batch = tag
        return torch.Generator().manual_seed(batch_seed(self.seed, epoch, batch, self.rank))

    def __call__(self, samples: list) -> tuple:
        crops = tuple(torch.stack(parts) for parts in zip(*(s[0] for s in samples), strict=True))
        labels = torch.tensor([s[1] for s in samples])
        tag = samples[0][3]
        views = self.colour(crops, self.generator(tag)) if self.colour is not None else None
        return views, crops if views is None else None, labels, [s[2] for s in samples], tag


def cropped_training_batches(
    images: cache.DecodedImages | Samples,
    crop: Callable,
    colour: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    start_epoch: int = 0,
    skip_batches: int = 0,
) -> Iterator:
    """Endless ``(views, labels, ids)`` batches: per epoch a seeded permutation split over processes (as
    :class:`ShardedEpochSampler`), each sample's crops cut in ``workers`` processes (:class:`Cropped`, one pass
    over :class:`NumberedBatches`, so the workers run on from epoch to epoch), then ``colour(uint8 crops,
    generator)`` per batch: in the workers when ``device`` is the CPU, else on ``device``."""
    sampler = ShardedEpochSampler(len(images), batch_size, seed)
    collate = Collate(colour if device.type == "cpu" else None, seed, sampler.rank)
    loader = DataLoader(
        Cropped(images, crop),
        batch_sampler=NumberedBatches(sampler, batch_size, start_epoch, skip_batches),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,  # coloured float batches are large: 2 per worker
    )
    for views, crops, labels, ids, tag in loader:
        if views is None:
            crops = tuple(c.to(device, non_blocking=True) for c in crops)
            views = colour(crops, collate.generator(tag))
        yield views, labels, ids


class _Cropping:
    """Worker-side transform of streamed samples: every view's crop of a decoded image (the worker's torch RNG)."""

    def __init__(self, crop: Callable):
        self.crop = crop

    def __call__(self, image) -> tuple[torch.Tensor, ...]:
        return self.crop(image, (image.height, image.width), "", None)


def streamed_cropped_batches(
    source: ImageSource,
    crop: Callable,
    colour: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    start_epoch: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = DataConfig.shuffle_buffer,
) -> Iterator:
    """As :func:`cropped_training_batches` for WebDataset shards streamed without a store: each image decoded as
    it streams and cropped in the worker, ``colour`` on ``device`` with the generator of the batch's position
    (streams are reshuffled on resume, as :func:`loaders.training_batches` says)."""
    stream = training_batches(
        source, _Cropping(crop), batch_size, workers, seed, device, start_epoch, skip_batches, shuffle_buffer
    )
    collate = Collate(colour, seed, distributed.rank())
    for batch, (crops, labels, ids) in zip(itertools.count(skip_batches), stream):
        crops = tuple(c.to(device, non_blocking=True) for c in crops)
        yield colour(crops, collate.generator((start_epoch, batch))), labels, list(ids)
