"""Random resized crops drawn on the original image (paper §2.2, torchvision's ``RandomResizedCrop``).

The box of every crop is drawn on the image's original width and height with ``get_params``'s rule (area
fraction uniform in ``scale`` of the original area, log-uniform aspect ratio in 3/4-4/3, ten tries, then the
central fallback), whatever the image's shape and whatever resolution its pixels are held at. Cutting the box
out is an antialiased bicubic resize, the paper's (PIL's) filter: on pixels at the original resolution with
torch's uint8 kernel (``interpolate(mode="bicubic", antialias=True)``, PIL's kernel with a = -0.5 and its
support; 3x faster than PIL here, and 98.5 % of its values equal PIL's, the others off by 1/255 but for a few in
a million, mean difference 0.016/255 on the raccoon photos); on pixels held smaller (a store with a capped side,
or a JPEG decoded at 1/2, 1/4 or 1/8 of its size) with PIL, the same box scaled to them with sub-pixel precision.

:class:`CropViews` makes every view's crop of one image, per sample (in DataLoader workers); the colour
operations then run on the whole batch at once (:mod:`barlowtwins.views.batched`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from barlowtwins.data.decode import reduce_for, to_rgb

ASPECT_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# A JPEG is decoded at a reduced DCT scale only while every crop keeps this many decoded pixels per output pixel:
# then the antialiased bicubic still halves it, and the crops differ from torchvision's on the full decode by
# 0.4 / 255 on average, at most 3 / 255 (24 raccoon photos, tests/data/test_fullsize.py); at 1 they differ by up to 9.
DECODE_MARGIN = 2.0

Range = tuple[float, float]


def sample_crop_boxes(
    n: int, height: int, width: int, scale: Range, generator: torch.Generator, ratio: Range = ASPECT_RATIO
) -> torch.Tensor:
    """``RandomResizedCrop.get_params`` for n samples at once: int64 (n, 4) rows of (top, left, h, w).

    Ten candidates per sample (area fraction uniform in ``scale``, log-uniform aspect ratio); the first that
    fits is kept, else torchvision's central-crop fallback.
    """
    area = height * width * torch.empty(n, CROP_ATTEMPTS).uniform_(*scale, generator=generator).double()
    log_ratio = torch.empty(n, CROP_ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.double().exp()
    w = (area * aspect).sqrt().round().long()
    h = (area / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax of a 0/1 row is its first 1
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    position = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = (position[:, 0] * (height - h + 1)).long().clamp(max=height - h)
    left = (position[:, 1] * (width - w + 1)).long().clamp(max=width - w)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (width, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        fallback = (int(round(height * ratio[1])), height)
    else:
        fallback = (width, height)
    fb_w, fb_h = fallback
    found = fits.any(dim=1)
    boxes = torch.stack((top, left, h, w), dim=1)
    central = torch.tensor([(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w])
    return torch.where(found[:, None], boxes, central)


def full_resolution_side(image_size: int, min_scale: float, ratio: Range = ASPECT_RATIO) -> int:
    """The shorter side at which every box ``sample_crop_boxes`` can draw on a square image (area at least
    ``min_scale``, aspect ratio within ``ratio``) still spans ``image_size`` pixels along both sides, so each crop
    is a reduction of what is stored: ``ceil(image_size / sqrt(min_scale * min(ratio[0], 1 / ratio[1])))``.
    224 px from 8 % crops: 915 px; 32 px from 20 % crops: 83 px."""
    narrowest = min(ratio[0], 1 / ratio[1])
    return math.ceil(image_size / math.sqrt(min_scale * narrowest) - 1e-9)


def resized_crop(
    image: Image.Image | np.ndarray, box: Sequence[int], scale: tuple[float, float], size: int
) -> torch.Tensor:
    """The (top, left, h, w) ``box`` of the original image, cut from ``image`` (the original held at ``scale``
    = (x, y) of its width and height; a PIL image or stored uint8 (h, w, 3) pixels) and resized to size x size
    with an antialiased bicubic (module docstring): uint8 (3, size, size)."""
    top, left, h, w = (int(v) for v in box)
    if scale == (1.0, 1.0):  # torchvision's resized_crop: crop, then resize
        region = torch.from_numpy(_pixels(image, left, top, left + w, top + h)).permute(2, 0, 1)
        return F.interpolate(region[None], size=(size, size), mode="bicubic", antialias=True)[0]
    x0, y0, x1, y1 = left * scale[0], top * scale[1], (left + w) * scale[0], (top + h) * scale[1]
    x0i, y0i = math.floor(x0), math.floor(y0)
    height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
    x1i, y1i = min(math.ceil(x1), width), min(math.ceil(y1), height)
    region = _region(image, x0i, y0i, x1i, y1i)  # the whole pixels under the box: no filter reaches past it
    inner = (x0 - x0i, y0 - y0i, min(x1, x1i) - x0i, min(y1, y1i) - y0i)
    resized = region.resize((size, size), Image.Resampling.BICUBIC, box=inner)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


def _pixels(image: Image.Image | np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels [y0, y1) x [x0, x1) as a new contiguous uint8 (h, w, 3) array (writable, for torch; a store on
    disk is memory-mapped read-only)."""
    region = image.crop((x0, y0, x1, y1)) if isinstance(image, Image.Image) else image[y0:y1, x0:x1]
    return np.array(region)


def _region(image: Image.Image | np.ndarray, x0: int, y0: int, x1: int, y1: int) -> Image.Image:
    """Pixels [y0, y1) x [x0, x1) as a PIL image (of stored pixels, only the region is copied)."""
    if isinstance(image, Image.Image):
        return image.crop((x0, y0, x1, y1))
    return Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))


class CropViews:
    """Every view's random resized crop of one image, drawn on its original size: ``specs`` lists each view's
    (output side, crop scale range), view A and view B first. Picklable, for DataLoader workers."""

    def __init__(self, specs: Sequence[tuple[int, Range]]):
        self.specs = tuple((int(size), (float(scale[0]), float(scale[1]))) for size, scale in specs)

    def __call__(
        self, pixels: Image.Image | np.ndarray, original: tuple[int, int], name: str, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """uint8 crops of ``pixels`` (a PIL image, possibly opened lazily, or a stored (h, w, 3) array) whose
        original (height, width) is ``original``: (2, 3, S, S) for views A and B, then (k, 3, s, s) for any
        further views of another size."""
        height, width = original
        boxes = [
            box
            for scale, views in itertools.groupby(self.specs, key=lambda spec: spec[1])  # A and B: one draw of 2
            for box in sample_crop_boxes(len(list(views)), height, width, scale, generator)
        ]
        if isinstance(pixels, np.ndarray):
            image, scale = pixels, (pixels.shape[1] / width, pixels.shape[0] / height)
        else:
            # A lazily opened JPEG decodes at the smallest DCT scale that keeps every crop a 2x reduction.
            sides = [(size, min(int(box[2]), int(box[3]))) for (size, _), box in zip(self.specs, boxes, strict=True)]
            need = max(min(1.0, DECODE_MARGIN * size / side) for size, side in sides)
            reduce_for(pixels, (math.ceil(width * need), math.ceil(height * need)))
            image = to_rgb(pixels, name)
            scale = (image.width / width, image.height / height)
        crops = [resized_crop(image, box, scale, size) for (size, _), box in zip(self.specs, boxes, strict=True)]
        groups = (crops[:2], crops[2:]) if len(crops) > 2 else (crops,)  # views A and B share one size
        return tuple(torch.stack(group) for group in groups)

    def __repr__(self) -> str:
        return f"CropViews({', '.join(f'{size} px from {scale}' for size, scale in self.specs)})"
