"""Which way a run's training views are made: :func:`view_batches`, from the run's settings (paper §2.2).

One function, used by the training loop, ``barlowtwins views`` and the benchmarks, so all of them see the same
pixels for the same settings and seed. The batched views (``data.views=batched``) come one of three ways, chosen
from the data:

* images of one small shape stored as they are (CIFAR-10, STL-10, the digits): whole uint8 batches cropped and
  coloured on the training device (:mod:`barlowtwins.views.batched`), as before;
* any other images (full-size photos of any shape): each image stored whole at full aspect ratio, its shorter
  side capped at ``data.stored_size``; every view's crop drawn on the original image and cut in loader workers
  (:class:`~barlowtwins.views.crops.CropViews`), the colour operations then made a batch at a time;
* ``data.cache=off``, or a store too large for memory and disk: the same, decoding each image when it is read,
  a JPEG at a reduced DCT scale when every crop is much smaller than the photo.

``data.views=pil`` makes both views per sample with the official pipeline's operations instead
(:mod:`barlowtwins.views.per_sample`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from barlowtwins import distributed
from barlowtwins.config import AugmentConfig, DataConfig, PretrainConfig
from barlowtwins.data import ImageSource, Samples, in_memory, open_source, resolve_workers, training_batches
from barlowtwins.data.cache import DecodedImages
from barlowtwins.data.loaders import cached_training_batches, decoded, store_mode
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import select_device
from barlowtwins.views.batched import training_views
from barlowtwins.views.cropped_batches import cropped_training_batches, streamed_cropped_batches
from barlowtwins.views.crops import CropViews, full_resolution_side
from barlowtwins.views.per_sample import pair_settings, two_views

WHOLE_BATCH_LIMIT = 2  # whole-batch crops (roi_align) for stored images at most this many times the view's side


def stored_side(data: DataConfig, augment: AugmentConfig) -> int:
    """The cap on a stored image's shorter side: ``data.stored_size``, or (0) the side at which every crop of
    every view is still a reduction of the stored pixels (``crops.full_resolution_side``; 915 px for 224 px
    views from 8 % crops, so ImageNet's photos, mostly under 500 px, are stored as they are)."""
    if data.stored_size:
        return data.stored_size
    views = [(augment.image_size, augment.crop_scale[0])]
    if augment.small_views:
        views.append((augment.small_size, augment.small_crop_scale[0]))
    return max(full_resolution_side(size, scale) for size, scale in views)


def whole_batches(images: DecodedImages, image_size: int, crops: str = DataConfig.crops) -> bool:
    """Whether the stored images are cropped a whole batch at a time (``data.crops``). "auto": when they share
    one shape, are stored as they are (so the crops are drawn on the original image) and are at most
    ``WHOLE_BATCH_LIMIT`` x the view's side (larger photos are reduced by PIL's antialiased bicubic instead).
    "batch" needs one shape and no reduction too: it is refused otherwise."""
    possible = images.shape is not None and not images.resized
    if crops == "batch" and not possible:
        raise BarlowTwinsError(
            "data.crops=batch needs images of one shape stored as they are; these differ in shape or were reduced "
            "to data.stored_size: use data.crops=auto"
        )
    if crops != "auto":
        return crops == "batch"
    return possible and max(images.shape) <= WHOLE_BATCH_LIMIT * image_size


def view_batches(
    config: PretrainConfig,
    device: torch.device | None = None,
    source: ImageSource | None = None,
    step: int = 0,
    side: Callable[[], int] | None = None,
) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor, list[str]]]:
    """This process's endless ``(views, labels, ids)`` training batches from ``step`` on, as ``pretrain`` draws
    them: views normalised on ``device`` (default: ``train.device``), the data opened from ``data.train`` unless
    ``source`` is given. Resuming at ``step`` gives exactly the batches an uninterrupted run draws there (map-style
    data; streamed shards are reshuffled instead).

    ``side`` (low resolution first): called as each batch is made, the side its views A and B should have. The
    whole-batch path makes them at that side (each batch is made in this process when it is asked for); every
    other path (crops cut in loader workers, streamed shards, ``data.views=pil``) makes them ahead, at
    ``augment.image_size`` as without it, and the training loop shrinks them (``train.resolution.resize_views``).
    Without it, every view is made at ``augment.image_size``."""
    t, d, a = config.train, config.data, config.augment
    device = device or select_device(t.device)
    source = source or open_source(d.train, d.root, d.download, d.limit)
    per_process, workers = t.batch_size // distributed.world_size(), resolve_workers(d.workers)
    start_epoch, skip = divmod(step, max(1, source.num_samples // t.batch_size))
    stored = stored_side(d, a)
    mode = store_mode(source, stored, d.cache, square=False)
    images = decoded(source, stored, mode, d.cache_dir, workers, square=False) if mode != "off" else None
    if d.views == "pil":
        if images is not None:
            source = in_memory(Samples(_StoredImages(images), images.labels, images.ids), source.description)
        views = two_views(**pair_settings(dataclasses.asdict(a)))
        return training_batches(
            source, views, per_process, workers, t.seed, device, start_epoch, skip, d.shuffle_buffer
        )
    views = training_views(**dataclasses.asdict(a))
    if images is not None and whole_batches(images, a.image_size, d.crops):
        return cached_training_batches(images, views, per_process, t.seed, device, start_epoch, skip, side)
    if images is None and d.crops == "batch":
        raise BarlowTwinsError("data.crops=batch crops stored images: set data.cache (not off), or data.crops=auto")
    crop = CropViews(views.crop_specs())
    if images is None and source.samples is None:  # streamed shards, decoded as they stream
        return streamed_cropped_batches(
            source, crop, views.colour, per_process, workers, t.seed, device, start_epoch, skip, d.shuffle_buffer
        )
    pixels = images if images is not None else source.samples
    return cropped_training_batches(pixels, crop, views.colour, per_process, workers, t.seed, device, start_epoch, skip)


class _StoredImages:
    """Stored rows as PIL images, for the PIL views (``data.views=pil``) of a store."""

    def __init__(self, images: DecodedImages):
        self.images = images

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.images.image(index)))
