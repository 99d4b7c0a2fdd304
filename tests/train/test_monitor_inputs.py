"""The monitor's kNN inputs are the evaluation's test-time views: one preprocessing (views.CropNormalize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from barlowtwins.data.loaders import decoded
from barlowtwins.data.sources import Samples, in_memory
from barlowtwins.train.monitor import eval_batches
from barlowtwins.views import CropNormalize, eval_resize, eval_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _monitor_and_eval_views(size: int, shapes: list[tuple[int, int]], batch_size: int = 4):
    """(the monitor's eval batches of a decoded store, eval_transform of each PIL image), in sample order."""
    rng = np.random.default_rng(size)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    source = in_memory(Samples(images, list(range(len(images))), [f"s{i}" for i in range(len(images))]), "test")
    store = decoded(source, eval_resize(size), "memory", "", 0)
    batches = list(eval_batches(store, size, MEAN, STD, batch_size))
    monitored = torch.cat([views for views, _, _ in batches])
    labels = torch.cat([labels for _, labels, _ in batches])
    assert labels.tolist() == list(range(len(images))) and [i for *_, ids in batches for i in ids] == store.ids
    transform = eval_transform(size, MEAN, STD)
    return monitored, torch.stack([transform(image) for image in images])


@pytest.mark.parametrize(
    "size, shapes",
    [
        (32, [(32, 32), (32, 83), (69, 32), (65, 48)]),  # 64 px or less: no resize, every aspect ratio
        (224, [(224, 224), (224, 275), (261, 336), (449, 224), (300, 400)]),  # B.1's 256 -> 224, any aspect
        (96, [(96, 96), (150, 150), (61, 61)]),  # square images at any size (enlarged too)
    ],
)
def test_monitor_eval_batches_equal_the_evaluation_transform_pixel_for_pixel(size, shapes):
    monitored, evaluated = _monitor_and_eval_views(size, shapes)
    assert monitored.shape == (len(shapes), 3, size, size) and monitored.dtype == torch.float32
    assert torch.equal(monitored, evaluated)


@pytest.mark.xfail(
    strict=True,
    reason="known gap: the store keeps a centre crop at the resize side (data.cache.stored_image), and cropping "
    "96 px from 110 px of that crop rounds differently from cropping 96 px out of the whole resized photo when "
    "(side - size) / 2 is odd: a 1 px shift along the longer side of non-square images (96, 128 px, ...)",
)
def test_monitor_eval_batches_of_non_square_images_at_96_px():
    monitored, evaluated = _monitor_and_eval_views(96, [(96, 144), (133, 147), (193, 96)])
    assert torch.equal(monitored, evaluated)


def test_crop_normalize_is_the_same_on_pil_images_and_uint8_batches():
    rng = np.random.default_rng(1)
    arrays = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    view = CropNormalize(32, MEAN, STD)
    batch = view(torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous())
    singles = torch.stack([view(Image.fromarray(a)) for a in arrays])
    assert torch.equal(batch, singles)
    top, left = round((40 - 32) / 2), round((50 - 32) / 2)  # by hand: centre crop, [0, 1], normalise
    crop = torch.from_numpy(arrays[:, top : top + 32, left : left + 32]).permute(0, 3, 1, 2).double() / 255
    by_hand = (crop - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(batch.double(), by_hand, atol=1e-6)
    assert view.size == (32, 32) and "CropNormalize(size=(32, 32)" in repr(eval_transform(32))


@pytest.mark.parametrize("size", [32, 96, 224])
def test_eval_transform_is_torchvisions_resize_crop_to_tensor_normalize(size):
    """B.1's test-time view as torchvision composes it, to the bit (what evaluations computed before)."""
    reference = T.Compose(
        [
            T.Resize(eval_resize(size), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    rng = np.random.default_rng(2)
    for h, w in ((size, size), (size + 37, size + 51), (2 * size + 1, size)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(eval_transform(size, MEAN, STD)(image), reference(image))
