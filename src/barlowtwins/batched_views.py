"""The two asymmetric views of paper §2.2 for a whole uint8 batch at once, on the batch's device.

Same operations, parameters and per-sample distributions as the PIL path of ``views.two_views`` (BYOL's
augmentation table: crop, flip, colour jitter p=0.8, grayscale p=0.2, blur 1.0 / 0.1, solarization 0.0 / 0.2),
written with vectorised torch ops so a batch of N images costs a few dozen tensor operations instead of N PIL
pipelines. Each random parameter is drawn per sample on the CPU from the caller's ``torch.Generator``, so
the same generator state gives the same parameters on any device and bit-identical views on the same one.
An operation with probability 0 is skipped and draws nothing.

Differences from the PIL path, all in pixel values rather than in distributions:

* crop + resize is ``torchvision.ops.roi_align``: bilinear, averaging ``ceil(box / size)`` sampling points
  per output pixel and side when shrinking, where PIL uses an antialiased bicubic filter; and the outermost
  output pixels interpolate with the pixels just outside the box, where PIL repeats the box's edge;
* everything after the crop stays float32 in [0, 1], where PIL rounds to uint8 after each operation, and the
  colour operations follow torchvision's tensor formulas (``adjust_*``, ``rgb_to_grayscale``) rather than
  PIL's ``ImageEnhance`` and ``convert("L")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from barlowtwins.config import AugmentConfig
from barlowtwins.crops import Range, sample_crop_boxes
from barlowtwins.views import asymmetric_pair, blur_kernel_size

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
A = AugmentConfig  # every default below is the config's own


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


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``, ``ratio * image + (1 - ratio) * other`` clamped to [0, 1], as one lerp."""
    return torch.lerp(other.expand_as(image), image, _per_sample(ratio, image)).clamp_(0.0, 1.0)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of (N, 3, H, W) images as (N, 1, H, W), with torchvision's weights."""
    r, g, b = images.unbind(dim=-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_brightness`` with one factor per image."""
    return (images * _per_sample(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_contrast``: blend with the mean of each image's grayscale version."""
    return _blend(images, rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_saturation``: blend with each image's grayscale version."""
    return _blend(images, rgb_to_grayscale(images), factor)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_hue``: shift the HSV hue of each image by its factor (in turns, within [-0.5, 0.5]).

    Hue in sixths of a turn is ``2c + (x[c+1] - x[c+2]) / chroma`` for the channel c holding the maximum; back
    to RGB, channel n in (5, 3, 1) for (r, g, b) is ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + hue) mod 6``. Masks multiply instead of ``torch.where``, several times slower on CPU.
    """
    r, g, b = images.unbind(dim=-3)
    maxc = images.amax(dim=-3)
    chroma = maxc - images.amin(dim=-3)
    is_r = r == maxc
    is_g = (g == maxc).logical_and_(~is_r)
    is_b = ~(is_r | is_g)
    hue6 = (g - b).mul_(is_r)
    hue6 += (b - r).add_(chroma, alpha=2.0).mul_(is_g)
    hue6 += (r - g).add_(chroma, alpha=4.0).mul_(is_b)
    # Any hue error moves the output by at most chroma times that error, so tiny chromas may be clamped.
    hue6.div_(chroma.clamp(min=1e-12)).add_(6.0 * factor.to(images.device, images.dtype).view(-1, 1, 1))
    out = torch.empty_like(images)
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        k = hue6 + offset
        k -= torch.floor(k * (1 / 6)).mul_(6.0)
        torch.addcmul(maxc, chroma, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), value=-1.0, out=out[:, channel])
    return out


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # torchvision's fn_idx order


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``F.gaussian_blur`` with one sigma per image: separable depthwise convolution, reflect padding."""
    n, c, h, w = images.shape
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, device=images.device)
    pdf = torch.exp(-0.5 * (x / sigma.to(images.device).view(-1, 1)).pow(2))
    kernel = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect").view(1, n * c, h + 2 * pad, w + 2 * pad)
    blurred = F.conv2d(padded, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    blurred = F.conv2d(blurred, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return blurred.view(n, c, h, w)


def solarize(images: torch.Tensor) -> torch.Tensor:
    """``RandomSolarize(threshold=128)`` of the PIL path on [0, 1] floats: ``min(x, 1 - x)``.

    PIL inverts uint8 pixels v >= 128, which is min(v, 255 - v); on floats this is rounding to uint8 first.
    """
    return torch.minimum(images, 1.0 - images)


def _apply_where(
    images: torch.Tensor, mask: torch.Tensor, op: Callable[..., torch.Tensor], *args: torch.Tensor
) -> None:
    """Replace, in place, the images selected by a CPU mask with ``op`` of them (per-sample args indexed too)."""
    if bool(mask.all()):
        images.copy_(op(images, *args))
        return
    index = mask.nonzero().squeeze(1)
    if len(index) == 0:
        return
    device_index = index.to(images.device)
    images.index_copy_(0, device_index, op(images.index_select(0, device_index), *(a[index] for a in args)))


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


class JitterParams(NamedTuple):
    """Per-image colour jitter draws: whether it applies, the four factors and the order of the four ops."""

    applied: torch.Tensor  # bool (N,)
    factors: torch.Tensor  # float32 (N, 4): brightness, contrast, saturation, hue
    order: torch.Tensor  # int64 (N, 4): a uniformly random permutation of 0..3 per image


def sample_jitter(
    n: int, jitter: tuple[float, float, float, float], p: float, generator: torch.Generator
) -> JitterParams:
    """``RandomApply([ColorJitter(*jitter)], p)`` draws for n images: factors uniform in [max(0, 1 - x), 1 + x]
    for brightness, contrast and saturation, hue uniform in [-h, h], and a random order per image."""
    b, c, s, h = jitter
    ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
    applied = torch.rand(n, generator=generator) < p
    factors = torch.stack([_uniform(n, low, high, generator) for low, high in ranges], dim=1)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    return JitterParams(applied, factors, order)


def color_jitter(images: torch.Tensor, params: JitterParams, ops: Sequence[int] = (0, 1, 2, 3)) -> None:
    """Apply, in place, ``ColorJitter`` with drawn params: each image's ops in its own order (only ``ops``)."""
    for step in range(4):
        for op in ops:
            chosen = params.applied & (params.order[:, step] == op)
            _apply_where(images, chosen, JITTER_OPS[op], params.factors[:, op])


class BatchedViews:
    """One view's pipeline (``views.view_transform``) on a uint8 (N, 3, H, W) batch; same parameters.

    Returns float32 (N, 3, image_size, image_size) normalised with mean/std, on the images' device.
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
        self.jitter_ops = tuple(i for i, strength in enumerate(self.jitter) if strength > 0)  # as torchvision

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.crop_scale, generator)
        # roi_align needs floats; the 1/255 scaling waits until the (usually smaller) crop.
        return self.colour(resized_crop(images.float(), boxes, self.image_size).div_(255.0), generator)

    def colour(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Everything after the crop, in place on float (N, 3, S, S) crops in [0, 1]: flip, jitter, grayscale,
        blur, solarization, normalisation (crops cut per sample by ``crops.CropViews`` come in here)."""
        n = len(out)
        if self.flip_p > 0:
            _apply_where(out, torch.rand(n, generator=generator) < self.flip_p, lambda x: x.flip(-1))
        if self.jitter_p > 0 and self.jitter_ops:
            color_jitter(out, sample_jitter(n, self.jitter, self.jitter_p, generator), self.jitter_ops)
        if self.grayscale_p > 0:
            gray = torch.rand(n, generator=generator) < self.grayscale_p
            _apply_where(out, gray, lambda x: rgb_to_grayscale(x).expand_as(x))
        if self.blur_p > 0:
            blur = torch.rand(n, generator=generator) < self.blur_p
            sigma = _uniform(n, *self.blur_sigma, generator)
            _apply_where(out, blur, lambda x, s: gaussian_blur(x, s, self.kernel_size), sigma)
        if self.solarize_p > 0:
            _apply_where(out, torch.rand(n, generator=generator) < self.solarize_p, solarize)
        mean = torch.tensor(self.mean, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=out.device).view(1, 3, 1, 1)
        return out.sub_(mean).div_(std)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "jitter_ops")
        return f"{type(self).__name__}({fields})"


class BatchedTwoViews:
    """Maps a uint8 batch to its two distorted view batches ``(y_a, y_b)``, view A drawn first."""

    def __init__(self, view_a: BatchedViews, view_b: BatchedViews):
        self.view_a, self.view_b = view_a, view_b

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_a(images, generator), self.view_b(images, generator)

    def crop_specs(self) -> tuple[tuple[int, Range], ...]:
        """(output side, crop scale) of each view, for ``crops.CropViews``."""
        return tuple((v.image_size, v.crop_scale) for v in (self.view_a, self.view_b))

    def colour(self, crops: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views from uint8 crops (N, 2, 3, S, S), view A's then view B's, as ``CropViews`` cuts them."""
        pair = crops[0].float().div_(255.0)
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
    """Batched ``views.two_views``: ``blur_p`` and ``solarize_p`` give (view A, view B) probabilities."""
    return BatchedTwoViews(*asymmetric_pair(BatchedViews, locals()))


class WithSmallViews:
    """Multi-crop (Caron et al. 2020): the two views, then ``count`` small views per image as one batch
    ``(count * N, 3, size, size)``, small view ``j`` of image ``i`` at row ``j * N + i``."""

    def __init__(self, pair: BatchedTwoViews, small: BatchedViews, count: int):
        self.pair, self.small, self.count = pair, small, count

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        y_a, y_b = self.pair(images, generator)  # drawn first: the pair is what it is without small views
        return y_a, y_b, torch.cat([self.small(images, generator) for _ in range(self.count)])

    def crop_specs(self) -> tuple[tuple[int, Range], ...]:
        return self.pair.crop_specs() + ((self.small.image_size, self.small.crop_scale),) * self.count

    def colour(self, crops: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """As ``BatchedTwoViews.colour``, then the small crops (N, count, 3, s, s), small view j of image i at
        row j * N + i."""
        y_a, y_b = self.pair.colour(crops[:1], generator)
        small = crops[1].transpose(0, 1).reshape(-1, *crops[1].shape[2:])
        return y_a, y_b, self.small.colour(small.float().div_(255.0), generator)

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
