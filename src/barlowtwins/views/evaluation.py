"""The test-time view of every evaluation (appendix B.1): resize, centre crop, normalise; no randomness."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from barlowtwins.config import AugmentConfig, EvalInputs

B1_RESIZE_RATIO = 256 / 224  # appendix B.1 test time: resize to 256, centre-crop 224
SMALL_IMAGES = 64  # at this size or below, evaluate images as they are (solo-learn's and lightly's CIFAR protocol)


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
