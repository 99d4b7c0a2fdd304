"""The two asymmetric views of paper §2.2 for a whole uint8 batch at once, on the batch's device.

Same operations, parameters and per-sample distributions as the PIL path of ``per_sample.two_views`` (BYOL's
augmentation table: crop, flip, colour jitter p=0.8, grayscale p=0.2, blur 1.0 / 0.1, solarization 0.0 / 0.2),
written with vectorised torch ops (``colour``) so a batch of N images costs a few dozen tensor operations instead
of N PIL pipelines; on a CPU they run a few images at a time, so that each slice stays in the cache. Each random
parameter is drawn per sample on the CPU from the caller's ``torch.Generator``, so the same generator state
gives the same parameters on any device and bit-identical views on the same one, however the batch is sliced.
An operation with probability 0 is skipped and draws nothing. Views A and B can be made at a smaller side than
``image_size`` with the same draws (low resolution first: :class:`BatchedViews`).

Differences from the PIL path, all in pixel values rather than in distributions:

* crop + resize is ``torchvision.ops.roi_align``: bilinear, averaging ``ceil(box / size)`` sampling points
  per output pixel and side when shrinking, where PIL uses an antialiased bicubic filter; and the outermost
  output pixels interpolate with the pixels just outside the box, where PIL repeats the box's edge;
* everything after the crop stays float32 in [0, 1], where PIL rounds to uint8 after each operation, and the
  colour operations follow torchvision's tensor formulas (``adjust_*``, ``rgb_to_grayscale``, ``gaussian_blur``
  with BYOL's 23 px kernel at 224 px) rather than PIL's ``ImageEnhance``, ``convert("L")`` and box-filter
  Gaussian blur; sigma is drawn from the same U(0.1, 2.0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import get_worker_info
from torchvision.ops import roi_align

from barlowtwins.config import AugmentConfig
from barlowtwins.views.colour import ColourParams, apply_colour, blur_kernel_size, draw_colour
from barlowtwins.views.crops import Range, sample_crop_boxes
from barlowtwins.views.per_sample import asymmetric_pair

A = AugmentConfig  # every default below is the config's own
# On a CPU the colour operations take large images (from ONE_IMAGE_BYTES of float pixels: 148 px and up) one at a
# time, so an image and its temporaries stay in the core's cache (2 MB here), and smaller ones in slices of at most
# CPU_SLICE_BYTES (a whole CIFAR batch: below malloc's 32 MB ceiling, its temporaries are reused). A whole batch of
# 64 at 224 px (38 MB a view) went through memory, its temporaries too large for malloc to reuse (fresh pages every
# time): 6.2 / 7.4 / 8.1 CPU ms a pair at batch 16 / 32 / 64; one image at a time, with colour.py's faster blur, hue
# and contrast, 2.3 / 2.6 / 2.6 (2026-12-06). Slices of 42 CIFAR images cost 1.4x a whole batch of 128.
ONE_IMAGE_BYTES = 2**18
CPU_SLICE_BYTES = 2**24


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each float image to its (top, left, h, w) box and resize it to size x size with ``roi_align``.

    Bilinear, with ``ceil(box / size)`` sampling points averaged per output pixel along each side when
    shrinking (a box filter over bilinear samples; PIL's bicubic is antialiased with a wider kernel).
    Enlarging is plain bilinear interpolation (``align_corners=False``); a box the size of the output is the
    identity.
    """
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    index = torch.arange(len(boxes), device=images.device, dtype=torch.float32)
    rois = torch.stack((index, left, top, left + w, top + h), dim=1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def slice_rows(images: torch.Tensor) -> int:
    """How many images the colour operations take at a time: a whole batch on a GPU; on a CPU one image from
    ``ONE_IMAGE_BYTES`` of float pixels, else as many as ``CPU_SLICE_BYTES`` hold."""
    if images.device.type != "cpu":
        return max(1, len(images))
    image_bytes = max(1, images[0].numel() * 4)
    return 1 if image_bytes >= ONE_IMAGE_BYTES else max(1, CPU_SLICE_BYTES // image_bytes)


def _float_like(images: torch.Tensor) -> torch.Tensor:
    """An uninitialised float32 tensor of ``images``' shape, in shared memory inside a DataLoader worker (the
    batch then reaches the main process without a copy, as ``default_collate`` does for its batches)."""
    if images.device.type == "cpu" and get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(images.numel() * 4)
        return torch.empty(0, dtype=torch.float32).set_(storage).view(images.shape)
    return torch.empty(images.shape, dtype=torch.float32, device=images.device)


class BatchedViews:
    """One view's pipeline (``per_sample.view_transform``) on a uint8 (N, 3, H, W) batch; same parameters.

    Returns float32 (N, 3, image_size, image_size) normalised with mean/std, on the images' device; or, given a
    ``side`` (low resolution first, ``train/resolution.py``), (N, 3, side, side): the same boxes and colour draws,
    the crop resized straight to ``side`` and coloured there, the blur scaled to it (:meth:`colour`), so the view
    is the image_size view resized to ``side``, up to resampling, at a fraction of the work.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: Range = A.crop_scale,
        flip_p: float = A.flip_p,
        jitter: tuple[float, float, float, float] = A.jitter,
        jitter_p: float = A.jitter_p,
        grayscale_p: float = A.grayscale_p,
        blur_p: float = A.blur_p[0],
        blur_sigma: Range = A.blur_sigma,
        solarize_p: float = A.solarize_p[0],
        mean: tuple[float, float, float] = A.mean,
        std: tuple[float, float, float] = A.std,
    ):
        self.image_size, self.crop_scale, self.flip_p = image_size, tuple(crop_scale), flip_p
        self.jitter, self.jitter_p, self.grayscale_p = tuple(jitter), jitter_p, grayscale_p
        self.blur_p, self.blur_sigma, self.solarize_p = blur_p, tuple(blur_sigma), solarize_p
        self.mean, self.std = tuple(mean), tuple(std)
        self.kernel_size = blur_kernel_size(image_size)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, side: int | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.crop_scale, generator)
        # roi_align needs floats; the 1/255 scaling waits until the (usually smaller) crop.
        return self.colour(resized_crop(images.float(), boxes, side or self.image_size).div_(255.0), generator)

    def colour(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Everything after the crop: flip, jitter, grayscale, blur, solarization, normalisation, of (N, 3, S, S)
        crops, uint8 (crops cut per sample by ``crops.CropViews``; a new float tensor out) or float in [0, 1]
        (changed in place). Every image's draws come first, then the operations run slice by slice. Crops of
        another side than image_size (low resolution first) are blurred as by :meth:`blur_at`."""
        params = draw_colour(
            len(images), generator, self.flip_p, self.jitter, self.jitter_p, self.grayscale_p, self.blur_p,
            self.blur_sigma, self.solarize_p,
        )  # fmt: skip
        params, kernel_size = self.blur_at(params, images.shape[-1])
        out = images if images.is_floating_point() else _float_like(images)
        mean = torch.tensor(self.mean, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=out.device).view(1, 3, 1, 1)
        step = slice_rows(out)
        for start in range(0, len(out), step):
            part = out[start : start + step]
            if out is not images:
                part.copy_(images[start : start + step]).div_(255.0)
            coloured = apply_colour(part, params.rows(start, start + step), self.jitter, kernel_size)
            torch.sub(coloured, mean, out=part).div_(std)
        return out

    def blur_at(self, params: ColourParams, side: int) -> tuple[ColourParams, int]:
        """The draws and the blur kernel's size for crops of ``side`` px. Sigma is drawn (and the kernel sized,
        about 10 % of the side) in pixels of an image_size view; at another side both scale by side / image_size
        (kernel: ``blur_kernel_size(side)``), so the view is blurred as the image_size view resized to ``side``
        would be. At image_size the draws and kernel are used as they are."""
        if side == self.image_size or params.sigma is None:
            return params, self.kernel_size
        return params._replace(sigma=params.sigma * (side / self.image_size)), blur_kernel_size(side)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class BatchedTwoViews:
    """Maps a uint8 batch to its two distorted view batches ``(y_a, y_b)``, view A drawn first."""

    def __init__(self, view_a: BatchedViews, view_b: BatchedViews):
        self.view_a, self.view_b = view_a, view_b

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, side: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views A and B at image_size, or at ``side`` (:class:`BatchedViews`): the same draws either way."""
        return self.view_a(images, generator, side), self.view_b(images, generator, side)

    def crop_specs(self) -> tuple[tuple[int, Range], ...]:
        """(output side, crop scale) of each view, for ``crops.CropViews``."""
        return tuple((v.image_size, v.crop_scale) for v in (self.view_a, self.view_b))

    def colour(self, crops: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views from uint8 crops (N, 2, 3, S, S), view A's then view B's, as ``CropViews`` cuts them."""
        pair = crops[0]
        return self.view_a.colour(pair[:, 0], generator), self.view_b.colour(pair[:, 1], generator)

    def __repr__(self) -> str:
        return f"BatchedTwoViews(\n  view_a={self.view_a},\n  view_b={self.view_b}\n)"


def batched_two_views(
    image_size: int,
    crop_scale: Range = A.crop_scale,
    flip_p: float = A.flip_p,
    jitter: tuple[float, float, float, float] = A.jitter,
    jitter_p: float = A.jitter_p,
    grayscale_p: float = A.grayscale_p,
    blur_p: Range = A.blur_p,
    blur_sigma: Range = A.blur_sigma,
    solarize_p: Range = A.solarize_p,
    mean: tuple[float, float, float] = A.mean,
    std: tuple[float, float, float] = A.std,
) -> BatchedTwoViews:
    """Batched ``per_sample.two_views``: ``blur_p`` and ``solarize_p`` give (view A, view B) probabilities."""
    return BatchedTwoViews(*asymmetric_pair(BatchedViews, locals()))


class WithSmallViews:
    """Multi-crop (Caron et al. 2020): the two views, then ``count`` small views per image as one batch
    ``(count * N, 3, size, size)``, small view ``j`` of image ``i`` at row ``j * N + i``."""

    def __init__(self, pair: BatchedTwoViews, small: BatchedViews, count: int):
        self.pair, self.small, self.count = pair, small, count

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, side: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The pair (at ``side`` if given, :class:`BatchedTwoViews`), then the small views at their own size."""
        y_a, y_b = self.pair(images, generator, side)  # drawn first: the pair is what it is without small views
        return y_a, y_b, torch.cat([self.small(images, generator) for _ in range(self.count)])

    def crop_specs(self) -> tuple[tuple[int, Range], ...]:
        return self.pair.crop_specs() + ((self.small.image_size, self.small.crop_scale),) * self.count

    def colour(self, crops: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """As ``BatchedTwoViews.colour``, then the small crops (N, count, 3, s, s), small view j of image i at
        row j * N + i."""
        y_a, y_b = self.pair.colour(crops[:1], generator)
        small = crops[1].transpose(0, 1).reshape(-1, *crops[1].shape[2:])
        return y_a, y_b, self.small.colour(small, generator)

    def __repr__(self) -> str:
        return f"WithSmallViews(\n  pair={self.pair},\n  {self.count} x small={self.small}\n)"


def training_views(
    small_views: int = A.small_views,
    small_size: int = A.small_size,
    small_crop_scale: Range = A.small_crop_scale,
    **pair: Any,
) -> BatchedTwoViews | WithSmallViews:
    """The batched views of an ``AugmentConfig``'s fields: the paper's two, and small views when asked
    (view B's operations at ``small_size`` and ``small_crop_scale``, without blur: a blurred 16 px crop is a smudge)."""
    views = batched_two_views(**pair)
    if not small_views:
        return views
    b = views.view_b
    small = BatchedViews(
        image_size=small_size,
        crop_scale=small_crop_scale,
        flip_p=b.flip_p,
        jitter=b.jitter,
        jitter_p=b.jitter_p,
        grayscale_p=b.grayscale_p,
        blur_p=0.0,
        solarize_p=b.solarize_p,
        mean=b.mean,
        std=b.std,
    )
    return WithSmallViews(views, small, small_views)
