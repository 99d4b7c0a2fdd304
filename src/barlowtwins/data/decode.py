"""Image files and bytes to 8-bit RGB, in one place: every reader (folders, shards, the store) decodes here.

Decoding is lazy where it can be: :func:`open_image` reads only the header, so the caller can learn the size,
draw its crops on the original image and then ask for a reduced-size decode (:func:`reduce_for`: libjpeg's
DCT scaling through PIL's ``draft``, 1/2, 1/4 or 1/8 of each side) before :func:`to_rgb` decodes. PIL wheels
bundle libjpeg-turbo, so this is the same decoder as ``torchvision.io.decode_jpeg`` on the CPU, which has no
DCT scaling (benchmarks/decoders.py measures both).

Conversions that PIL's ``convert("RGB")`` gets wrong are done here: 16-bit and 32-bit integer images ("I;16",
"I") are scaled to 8 bits instead of clipped (a 16-bit PNG would come out nearly all white), float images
("F") are taken as [0, 1] or [0, 255] by their range; CMYK (Adobe-inverted JPEGs included, which PIL undoes
on reading) goes through PIL's ``(255 - c)(255 - k) / 255`` rule; palette and grey images with transparency are
composited on black as ``convert("RGB")`` does.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from barlowtwins.errors import BarlowTwinsError

DRAFT_FORMATS = ("JPEG",)  # formats whose decoder can scale while decoding (libjpeg's DCT scaling)


def open_image(file: str | Path | bytes, name: str) -> Image.Image:
    """The image at a path, or in encoded bytes, opened lazily: its header read, its pixels not yet decoded."""
    try:
        return Image.open(io.BytesIO(file) if isinstance(file, bytes) else file)
    except Exception as error:
        raise BarlowTwinsError(f"cannot read image {name} ({error}); remove or replace the file") from None


def reduce_for(image: Image.Image, needed: tuple[int, int]) -> float:
    """Ask for a decode at the smallest DCT scale that keeps at least ``needed`` (width, height) pixels.

    Only for lazily opened JPEGs (else nothing changes). Returns the scale of the decode, 1.0 when full size.
    """
    if image.format not in DRAFT_FORMATS:
        return 1.0  # (a JPEG already decoded ignores draft too: it has no tile left to scale)
    width, height = image.size
    image.draft("RGB", (max(1, needed[0]), max(1, needed[1])))
    return image.size[0] / width


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """``image`` decoded and converted to 8-bit RGB; a BarlowTwinsError naming ``name`` if it cannot be."""
    try:
        image.load()
        if image.mode == "RGB":
            return image
        if image.mode.startswith("I") or image.mode == "F":
            return Image.fromarray(_to_8bit(np.asarray(image), image.mode)).convert("RGB")
        if image.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
            return image.convert("RGBA").convert("RGB")
        return image.convert("RGB")
    except BarlowTwinsError:
        raise
    except Exception as error:
        raise BarlowTwinsError(f"cannot decode image {name} ({error}); remove or replace the file") from None


def decode(file: str | Path | bytes, name: str) -> Image.Image:
    """The whole image at ``file`` (a path or encoded bytes) as 8-bit RGB."""
    with open_image(file, name) as image:
        rgb = to_rgb(image, name)
        return rgb.copy() if rgb is image else rgb  # closing the file frees the opened image, not a converted one


def _to_8bit(array: np.ndarray, mode: str) -> np.ndarray:
    """A one-channel integer or float image in 8 bits: 16-bit ranges divided by 257 (65535 -> 255), 8-bit kept."""
    values = array.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    elif mode.startswith("I;16") or (values.size and values.max() > 255):
        top = 65535.0
    else:
        top = 255.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
