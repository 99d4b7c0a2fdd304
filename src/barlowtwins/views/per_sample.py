"""The two asymmetric distorted views of paper §2.2 per sample, on PIL images, as the official ``main.py`` makes them.

Both views: random resized crop (bicubic), horizontal flip, colour jitter, grayscale. Gaussian blur and
solarization have different probabilities per view (blur 1.0 / 0.1, solarization 0.0 / 0.2); both are main.py's
own operations on the PIL image (``ImageFilter.GaussianBlur``, ``ImageOps.solarize``), not torchvision's. An
operation whose probability is 0 is left out of the pipeline, so printing a view shows exactly what it does;
that is also how Fig. 3's "remove augmentations one by one" ablation is run. Every random draw comes from torch's
generator, so a sample's views depend on the seed its loader sets (``data.loaders.Transformed``) alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from barlowtwins.config import AugmentConfig

SOLARIZE_THRESHOLD = 128  # ImageOps.solarize's default, as main.py calls it


class GaussianBlur:
    """main.py's blur: with probability ``p``, PIL's ``ImageFilter.GaussianBlur(sigma)``, sigma uniform in ``sigma``
    (main.py: ``random.random() * 1.9 + 0.1``, i.e. U(0.1, 2.0)). PIL's ``radius`` argument IS the standard
    deviation of the Gaussian (PIL's docs: "radius - Standard deviation of the Gaussian kernel"; PIL approximates
    it with three extended box blurs, Gwosdek et al. 2011), so sigma is passed as it is."""

    def __init__(self, p: float, sigma: tuple[float, float]):
        self.p, self.sigma = p, (float(sigma[0]), float(sigma[1]))

    def draw_sigma(self) -> float:
        return float(torch.empty(1).uniform_(*self.sigma))

    def __call__(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(1)) >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(self.draw_sigma()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


class Solarization:
    """main.py's solarization: with probability ``p``, ``ImageOps.solarize`` (pixels from 128 up inverted)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image, SOLARIZE_THRESHOLD) if float(torch.rand(1)) < self.p else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, threshold={SOLARIZE_THRESHOLD})"


def view_transform(
    image_size: int,
    crop_scale: tuple[float, float] = AugmentConfig.crop_scale,
    flip_p: float = AugmentConfig.flip_p,
    jitter: tuple[float, float, float, float] = AugmentConfig.jitter,
    jitter_p: float = AugmentConfig.jitter_p,
    grayscale_p: float = AugmentConfig.grayscale_p,
    blur_p: float = AugmentConfig.blur_p[0],
    blur_sigma: tuple[float, float] = AugmentConfig.blur_sigma,
    solarize_p: float = AugmentConfig.solarize_p[0],
    mean: tuple[float, float, float] = AugmentConfig.mean,
    std: tuple[float, float, float] = AugmentConfig.std,
) -> T.Compose:
    """One view's pipeline in main.py's order: PIL image in, normalised float tensor (3, image_size, image_size) out."""
    ops: list[Callable] = [T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if flip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=flip_p))
    if jitter_p > 0 and any(jitter):
        brightness, contrast, saturation, hue = jitter
        ops.append(T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_p))
    if grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        ops.append(GaussianBlur(blur_p, blur_sigma))
    if solarize_p > 0:
        ops.append(Solarization(solarize_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class TwoViews:
    """Maps one image to its two distorted views ``(y_a, y_b)``."""

    def __init__(self, view_a: Callable, view_b: Callable):
        self.view_a = view_a
        self.view_b = view_b

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_a(image), self.view_b(image)

    def __repr__(self) -> str:
        return f"TwoViews(\n  view_a={self.view_a},\n  view_b={self.view_b}\n)"


def two_views(
    image_size: int,
    crop_scale: tuple[float, float] = AugmentConfig.crop_scale,
    flip_p: float = AugmentConfig.flip_p,
    jitter: tuple[float, float, float, float] = AugmentConfig.jitter,
    jitter_p: float = AugmentConfig.jitter_p,
    grayscale_p: float = AugmentConfig.grayscale_p,
    blur_p: tuple[float, float] = AugmentConfig.blur_p,
    blur_sigma: tuple[float, float] = AugmentConfig.blur_sigma,
    solarize_p: tuple[float, float] = AugmentConfig.solarize_p,
    mean: tuple[float, float, float] = AugmentConfig.mean,
    std: tuple[float, float, float] = AugmentConfig.std,
) -> TwoViews:
    """The paper's asymmetric pair: ``blur_p`` and ``solarize_p`` give (view A, view B) probabilities."""
    return TwoViews(*asymmetric_pair(view_transform, locals()))


def pair_settings(augment: dict) -> dict:
    """An ``AugmentConfig``'s fields for the two views alone (the small views are the batched path's own)."""
    return {k: v for k, v in augment.items() if k not in ("small_views", "small_size", "small_crop_scale")}


def asymmetric_pair(make_view: Callable, params: dict) -> tuple:
    """View A and view B of paper §2.2 from one view's builder: the same operations and parameters, except
    the blur and solarization probabilities, which ``params`` gives as (view A, view B) pairs."""
    shared = {k: v for k, v in params.items() if k not in ("blur_p", "solarize_p")}
    blur_p, solarize_p = params["blur_p"], params["solarize_p"]
    return tuple(make_view(**shared, blur_p=blur_p[view], solarize_p=solarize_p[view]) for view in (0, 1))
