"""The colour operations of paper §2.2's views on float batches in [0, 1], one random draw per image.

Flip, colour jitter, grayscale, Gaussian blur and solarization with BYOL's parameters, as torchvision's tensor
formulas (``adjust_*``, ``rgb_to_grayscale``, ``gaussian_blur``) with one parameter per image.
:func:`draw_colour` draws every image's parameters from the caller's generator first, in a fixed order;
:func:`apply_colour` then applies them to any slice of the batch, so the same draws give the same pixels whether
a batch is coloured whole (on a GPU) or a few images at a time (on a CPU, where a slice that stays in the cache is
about 3x faster per image than a batch of 64 that does not: ``views.batched.CPU_SLICE_BYTES``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
# Blur taps of weight below this are left out: each adds less than 1e-7 of a pixel in [0, 1], so the result stays
# within 3e-6 of the full kernel (23 taps at 224 px, of which sigma 2 needs 10 a side, sigma 1 5, sigma 0.5 2).
TAP_FLOOR = 1e-7


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the image side, as BYOL (23 px at 224 px)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``, ``ratio * image + (1 - ratio) * other`` clamped to [0, 1], as one lerp. ``other``
    (N, 1, H, W) or (N, 1, 1, 1); a per-image value is spread over a plane first (a lerp from a value broadcast
    over every pixel does not vectorise on a CPU: 6x slower)."""
    plane = other.expand(len(image), 1, *image.shape[-2:]).contiguous()
    return torch.lerp(plane, image, _per_sample(ratio, image)).clamp_(0.0, 1.0)


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
    # Float masks (1 where the channel holds the maximum, r before g before b): boolean ones cost 3x here.
    is_r = torch.eq(r, maxc, out=torch.empty_like(maxc))
    is_g = torch.eq(g, maxc, out=torch.empty_like(maxc)).mul_(1.0 - is_r)
    is_b = (1.0 - is_r).sub_(is_g)
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


def blur_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernel for each sigma: float32 (N, kernel_size), each row summing to 1."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, device=sigma.device)
    pdf = torch.exp(-0.5 * (x / sigma.view(-1, 1)).pow(2))
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``F.gaussian_blur`` with one sigma per image, reflect padding: along the width, then the height, each as
    the centre tap plus symmetric pairs of shifted copies (a few elementwise passes that vectorise, where a
    depthwise convolution does not on a CPU). Each image's taps below ``TAP_FLOOR`` weigh 0 (adding nothing,
    exactly, so an image comes out the same whichever images share its slice); pairs that weigh 0 for every
    image are skipped."""
    weights = blur_kernels(sigma.to(images.device, torch.float32), kernel_size)
    weights = weights.masked_fill(weights < TAP_FLOOR, 0.0)
    half = kernel_size // 2
    needed = int((weights[:, half + 1 :] > 0).any(dim=0).sum())  # weights fall off from the centre
    for dim in (-1, -2):
        images = _symmetric_pass(images, weights, half, needed, dim)
    return images


def _symmetric_pass(images: torch.Tensor, weights: torch.Tensor, half: int, taps: int, dim: int) -> torch.Tensor:
    """One separable pass along ``dim``: centre weight times the image plus, for j = 1..taps, weight j times the
    sum of the image shifted by -j and +j, reflected at the border (as torchvision pads)."""
    pad = (taps, taps, 0, 0) if dim == -1 else (0, 0, taps, taps)
    padded = F.pad(images, pad, mode="reflect") if taps else images
    size = images.shape[dim]
    out = padded.narrow(dim, taps, size) * weights[:, half].view(-1, 1, 1, 1)
    pair = torch.empty_like(out)
    for j in range(1, taps + 1):
        torch.add(padded.narrow(dim, taps - j, size), padded.narrow(dim, taps + j, size), out=pair)
        out.addcmul_(pair, weights[:, half + j].view(-1, 1, 1, 1))
    return out


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


class ColourParams(NamedTuple):
    """Every image's colour draws (None: the operation is off and drew nothing)."""

    flip: torch.Tensor | None  # bool (N,)
    jitter: JitterParams | None
    gray: torch.Tensor | None  # bool (N,)
    blur: torch.Tensor | None  # bool (N,)
    sigma: torch.Tensor | None  # float32 (N,)
    solarize: torch.Tensor | None  # bool (N,)

    def rows(self, start: int, stop: int) -> ColourParams:
        """The draws of images ``start`` to ``stop``."""

        def pick(value):
            if isinstance(value, JitterParams):
                return JitterParams(*(part[start:stop] for part in value))
            return None if value is None else value[start:stop]

        return ColourParams(*(pick(value) for value in self))


def draw_colour(
    n: int,
    generator: torch.Generator,
    flip_p: float,
    jitter: tuple[float, float, float, float],
    jitter_p: float,
    grayscale_p: float,
    blur_p: float,
    blur_sigma: tuple[float, float],
    solarize_p: float,
) -> ColourParams:
    """One view's colour draws for n images, in the order the operations run; an operation with probability 0
    draws nothing (so the draws of the others do not depend on it)."""
    flip = torch.rand(n, generator=generator) < flip_p if flip_p > 0 else None
    jittered = sample_jitter(n, jitter, jitter_p, generator) if jitter_p > 0 and any(jitter) else None
    gray = torch.rand(n, generator=generator) < grayscale_p if grayscale_p > 0 else None
    blur = sigma = None
    if blur_p > 0:
        blur = torch.rand(n, generator=generator) < blur_p
        sigma = _uniform(n, *blur_sigma, generator)
    solarized = torch.rand(n, generator=generator) < solarize_p if solarize_p > 0 else None
    return ColourParams(flip, jittered, gray, blur, sigma, solarized)


def apply_colour(
    images: torch.Tensor, params: ColourParams, jitter: tuple[float, float, float, float], kernel_size: int
) -> torch.Tensor:
    """Flip, jitter (only its components of non-zero strength, as torchvision), grayscale, blur and solarize
    float (N, 3, S, S) images in [0, 1] with the N images' draws: in place, returned. A single image takes the
    same operations without masks, the choices being plain booleans, and comes back as a new tensor."""
    ops = tuple(i for i, strength in enumerate(jitter) if strength > 0)
    if len(images) == 1:
        return _apply_one(images, params, ops, kernel_size)
    if params.flip is not None:
        _apply_where(images, params.flip, _flip)
    if params.jitter is not None:
        color_jitter(images, params.jitter, ops)
    if params.gray is not None:
        _apply_where(images, params.gray, _gray)
    if params.blur is not None:
        _apply_where(images, params.blur, lambda x, s: gaussian_blur(x, s, kernel_size), params.sigma)
    if params.solarize is not None:
        _apply_where(images, params.solarize, solarize)
    return images


def _apply_one(image: torch.Tensor, params: ColourParams, ops: Sequence[int], kernel_size: int) -> torch.Tensor:
    """:func:`apply_colour` of one image (1, 3, S, S): the calls the masks make, in their order, chained; a
    grayscale image is blurred and solarized as its one plane (the same values, a third of the work)."""
    if params.flip is not None and bool(params.flip[0]):
        image = _flip(image)
    if params.jitter is not None and bool(params.jitter.applied[0]):
        for op in params.jitter.order[0].tolist():
            if op in ops:
                image = JITTER_OPS[op](image, params.jitter.factors[:, op])
    if params.gray is not None and bool(params.gray[0]):
        image = rgb_to_grayscale(image)
    if params.blur is not None and bool(params.blur[0]):
        image = gaussian_blur(image, params.sigma, kernel_size)
    if params.solarize is not None and bool(params.solarize[0]):
        image = solarize(image)
    return image.expand(-1, 3, -1, -1)


def _flip(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    return rgb_to_grayscale(images).expand_as(images)
