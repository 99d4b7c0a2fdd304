"""What pretraining trains on: the views of each batch, from the run's settings (paper §2.2).

One function, :func:`view_batches`, used by the loop, ``barlowtwins views`` and the benchmarks, so all of them
see the same pixels for the same settings and seed. The batched views (``data.views=batched``) come one of
three ways, chosen from the data:

* images of one small shape stored as they are (CIFAR-10, STL-10, the digits): whole uint8 batches cropped and
  coloured on the training device (``batched_views``), as before;
* any other images (full-size photos of any shape): each image stored whole at full aspect ratio, its shorter
  side capped at ``data.stored_size``; every view's crop drawn on the original image and cut with PIL's bicubic
  in loader workers (``crops.CropViews``), the colour operations then batched on the device;
* ``data.cache=off``, or a store too large for memory and disk: the same, decoding each image when it is read,
  a JPEG at a reduced DCT scale when every crop is much smaller than the photo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from barlowtwins import distributed
from barlowtwins.batched_views import training_views
from barlowtwins.config import AugmentConfig, DataConfig, PretrainConfig
from barlowtwins.crops import CropViews, full_resolution_side
from barlowtwins.data import (
    ImageSource,
    Samples,
    in_memory,
    open_source,
    resolve_workers,
    sample_index,
    select_samples,
    training_batches,
)
from barlowtwins.data.cache import DecodedImages
from barlowtwins.data.cropped import cropped_training_batches, streamed_cropped_batches
from barlowtwins.data.loaders import cached_training_batches, decoded, store_mode
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import select_device
from barlowtwins.train.preflight import check_batch_size
from barlowtwins.views import pair_settings, two_views

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
) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor, list[str]]]:
    """This process's endless ``(views, labels, ids)`` training batches from ``step`` on, as ``pretrain`` draws
    them: views normalised on ``device`` (default: ``train.device``), the data opened from ``data.train`` unless
    ``source`` is given. Resuming at ``step`` gives exactly the batches an uninterrupted run draws there (map-style
    data; streamed shards are reshuffled instead)."""
    t, d, a = config.train, config.data, config.augment
    device = device or select_device(t.device)
    source = source or open_source(d.train, d.root, d.download, d.limit)
    per_process, workers = t.batch_size // distributed.world_size(), resolve_workers(d.workers)
    start_epoch, skip = divmod(step, max(1, source.num_samples // t.batch_size))
    side = stored_side(d, a)
    mode = store_mode(source, side, d.cache, square=False)
    images = decoded(source, side, mode, d.cache_dir, workers, square=False) if mode != "off" else None
    if d.views == "pil":
        if images is not None:
            source = in_memory(Samples(_StoredImages(images), images.labels, images.ids), source.description)
        views = two_views(**pair_settings(dataclasses.asdict(a)))
        return training_batches(
            source, views, per_process, workers, t.seed, device, start_epoch, skip, d.shuffle_buffer
        )
    views = training_views(**dataclasses.asdict(a))
    if images is not None and whole_batches(images, a.image_size, d.crops):
        return cached_training_batches(images, views, per_process, t.seed, device, start_epoch, skip)
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


def draw_views(
    config: PretrainConfig, count: int, device: torch.device | None = None
) -> tuple[torch.Tensor, list[str], ImageSource]:
    """The first ``count`` view pairs ``pretrain`` would train on with ``config`` (same code, same seeds), as
    uint8 (count, 2, 3, S, S), view A then view B, before normalisation; their sample ids, and the source."""
    source = _checked_source(config)
    mean = torch.tensor(config.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.augment.std).view(1, 3, 1, 1)
    pairs, ids = [], []
    for views, _, batch_ids in view_batches(config, device, source):
        pair = torch.stack([(v[: count - len(ids)].float().cpu() * std + mean) for v in views[:2]], dim=1)
        pairs.append(pair.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8))
        ids += batch_ids[: count - len(ids)]
        if len(ids) == count:
            return torch.cat(pairs), ids, source
    raise AssertionError("view_batches is endless")


def time_views(config: PretrainConfig, count: int, device: torch.device | None = None) -> tuple[float, float]:
    """Seconds until the first batch can be drawn (opening the data, building the store), then pairs/s of
    ``count`` view pairs drawn as training draws them (data + views alone, no model)."""
    import time

    started = time.perf_counter()
    batches = view_batches(config, device, _checked_source(config))
    ready = time.perf_counter()
    drawn = 0
    while drawn < count:
        views, _, _ = next(batches)
        drawn += len(views[0])
    if views[0].device.type == "cuda":
        torch.cuda.synchronize()
    return ready - started, drawn / (time.perf_counter() - ready)


def _checked_source(config: PretrainConfig) -> ImageSource:
    d = config.data
    source = open_source(d.train, d.root, d.download, d.limit)
    check_batch_size(config.train.batch_size, source.num_samples, flag="--set train.batch_size=")
    return source


def write_views(config: PretrainConfig, count: int, out: str | Path, shown: int = 16) -> Path:
    """``out/views.pt`` (the pairs of :func:`draw_views`) and ``out/views.png`` (the first ``shown`` of them, each
    beside its source image); returns ``out``."""
    from barlowtwins.plots import views_figure

    pairs, ids, source = draw_views(config, count)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(pairs, out / "views.pt.tmp")
    (out / "views.pt.tmp").replace(out / "views.pt")
    everyone, _ = sample_index(source)
    position = {name: i for i, name in enumerate(everyone)}
    picked = select_samples(source, [position[i] for i in ids[:shown]], "shown")
    by_id = {picked.samples.ids[i]: picked.samples[i][0] for i in range(picked.num_samples)}
    figure = views_figure([by_id[i] for i in ids[:shown]], pairs[:shown], ids[:shown], config.augment.image_size)
    figure.savefig(out / "views.png", dpi=100)
    return out
