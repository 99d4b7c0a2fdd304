"""The two asymmetric distorted views of paper §2.2 (BYOL's augmentation parameters), and the test-time view.

Both views: random resized crop (bicubic), horizontal flip, colour jitter, grayscale. Gaussian blur and
solarization have different probabilities per view (blur 1.0 / 0.1, solarization 0.0 / 0.2). An
operation whose probability is 0 is left out of the pipeline, so printing a view shows exactly what it
does; that is also how Fig. 3's "remove augmentations one by one" ablation is run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from barlowtwins.config import AugmentConfig, EvalInputs

B1_RESIZE_RATIO = 256 / 224  # appendix B.1 test time: resize to 256, centre-crop 224
SMALL_IMAGES = 64  # at this size or below, evaluate images as they are (solo-learn's and lightly's CIFAR protocol)


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the image side, as BYOL (23 px at 224 px)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


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
    """One view's pipeline: PIL image in, normalised float tensor (3, image_size, image_size) out."""
    ops: list[Callable] = [T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if flip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=flip_p))
    if jitter_p > 0 and any(jitter):
        brightness, contrast, saturation, hue = jitter
        ops.append(T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_p))
    if grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), sigma=blur_sigma)], p=blur_p))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=128, p=solarize_p))
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


def eval_transform(
    image_size: int,
    mean: tuple[float, float, float] = AugmentConfig.mean,
    std: tuple[float, float, float] = AugmentConfig.std,
    resize_ratio: float = EvalInputs.resize_ratio,
) -> T.Compose:
    """Deterministic test-time view: resize to ``image_size * resize_ratio``, then :class:`CropNormalize`.

    ``resize_ratio`` 0 picks the rule: B.1's 256/224 above 64 px; images of 64 px or less as they are (ratio 1:
    a 32 px CIFAR image stays untouched), as the libraries evaluate CIFAR, so numbers compare with theirs.
    """
    return T.Compose(
        [
            T.Resize(eval_resize(image_size, resize_ratio), interpolation=T.InterpolationMode.BICUBIC),
            CropNormalize(image_size, mean, std),
        ]
    )


def eval_resize(image_size: int, resize_ratio: float = EvalInputs.resize_ratio) -> int:
    """The shorter side the test-time view resizes to before its centre crop of ``image_size`` (see above)."""
    return round(image_size * (resize_ratio or (B1_RESIZE_RATIO if image_size > SMALL_IMAGES else 1.0)))


class CropNormalize:
    """The test-time view after its resize: centre crop ``image_size``, scale to [0, 1], normalise.

    Takes a PIL image (as ``CenterCrop`` + ``ToTensor`` + ``Normalize``) or uint8 pixels, one image (3, H, W) or
    a batch (B, 3, H, W), such as rows the decoded store keeps at :func:`eval_resize`; the same pixels either way.
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float] = AugmentConfig.mean,
        std: tuple[float, float, float] = AugmentConfig.std,
    ):
        self.size = (image_size, image_size)
        self.mean, self.std = mean, std

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        image = TF.center_crop(image, list(self.size))
        pixels = TF.to_tensor(image) if isinstance(image, Image.Image) else image.float().div(255)
        return TF.normalize(pixels, self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mean={self.mean}, std={self.std})"
