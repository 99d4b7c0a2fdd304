"""Views made at a side (low resolution first on the whole-batch path, ``BatchedViews(..., side)``): the same
crop boxes and colour draws as at ``image_size``, the crop resized straight to the side and the blur scaled to it,
so a view made at side s is the image_size view resized to s up to resampling; without a side, nothing changes.

References are independent of the code under test: ``F.interpolate`` (bilinear, antialiased: how the training
loop shrinks views made at full size) and torchvision's ``gaussian_blur``. Images are smooth (wavelengths of at
least 16 output pixels), so the two resampling chains compared (roi_align straight to s, against roi_align at
image_size then an antialiased reduction) differ by little; the tolerances are a few times what they measure
(noted beside each); views of other draws miss them by 200x, a blur left unscaled, or none, by 6x to 60x.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import barlowtwins.views.batched as batched_module
import barlowtwins.views.colour as colour_module
from barlowtwins.views.batched import BatchedViews, batched_two_views, training_views
from barlowtwins.views.colour import blur_kernel_size, gaussian_blur

SIZE, SIDE = 64, 32  # image_size, and the side asked for (low resolution first's usual half)
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # outputs in [0, 1], so the tolerances read as pixels


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shrink(views: torch.Tensor, side: int) -> torch.Tensor:
    """What the training loop does to views made at full size (``train.resolution.resize_views``)."""
    return F.interpolate(views, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): per channel, a few sinusoids of wavelength size / 2 to size, random phases and
    directions, in [0.1, 0.9] (128 px images cropped to views of 32 px: at least 16 view pixels a wavelength)."""
    g = generator(seed)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.full((n, 3, size, size), 0.5)
    for _ in range(3):
        angle, phase = torch.rand(2, n, 3, 1, 1, generator=g) * 2 * math.pi
        wavelength = size * (0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g))
        out += 0.13 * torch.sin(2 * math.pi * (x * angle.cos() + y * angle.sin()) / wavelength + phase)
    return out.mul_(255).round_().to(torch.uint8)


@pytest.mark.parametrize("ops", ["crop only", "every op"])
def test_a_view_made_at_a_side_is_the_full_size_view_resized(monkeypatch, ops):
    """Same boxes, same draws (the generator ends in the same state, so the next batches are the same), and the
    pixels of the full-size view shrunk as the loop shrinks it: on average within 2e-3 (measured 5e-4 for the
    crop alone, 9e-4 with every operation), at most 0.04 (measured 0.010 / 0.022)."""
    off = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
    settings = off if ops == "crop only" else {"grayscale_p": 0.3, "blur_p": 0.5, "solarize_p": 0.3}
    view = BatchedViews(SIZE, **settings, **PLAIN)
    images = smooth_images(16, 2 * SIZE)
    boxes = []
    real_crop = batched_module.resized_crop

    def recording_crop(images, crop_boxes, size):
        boxes.append((crop_boxes.clone(), size))
        return real_crop(images, crop_boxes, size)

    monkeypatch.setattr(batched_module, "resized_crop", recording_crop)
    full_draws, side_draws = generator(1), generator(1)
    full, at_side = view(images, full_draws), view(images, side_draws, SIDE)
    assert at_side.shape == (16, 3, SIDE, SIDE) and full.shape == (16, 3, SIZE, SIZE)
    assert [size for _, size in boxes] == [SIZE, SIDE] and torch.equal(boxes[0][0], boxes[1][0])
    assert torch.equal(full_draws.get_state(), side_draws.get_state())
    assert torch.equal(view(images, full_draws), view(images, side_draws))  # the next batch, bit for bit

    expected = shrink(full, SIDE)
    error = (at_side - expected).abs()
    assert error.mean() < 2e-3 and error.max() < 0.04, (error.mean(), error.max())
    other_draws = (shrink(view(images, generator(2)), SIDE) - expected).abs().mean()
    assert other_draws > 20 * error.mean()  # the tolerance tells the same draws from others


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_the_blur_at_a_side_is_the_full_size_blur_resized(sigma):
    """Blurring the shrunk view with sigma scaled by side / image_size (and BYOL's kernel of the side) against
    torchvision's blur at 128 px, then the shrink: on average within 0.01 (measured 5e-3 at sigma 1, where a 0.5 px
    sampled Gaussian is a little narrower than the continuous one, 1.3e-3 at sigma 2), inside the 2 px border
    (reflect padding differs there) at most 0.03 (measured 0.017 / 0.001). The sigma of the full-size view left as
    it is, or no blur, misses by more than 4x (measured 11x / 47x and 6x / 64x)."""
    size, side = 128, 64
    images = F.interpolate(torch.rand(2, 3, 32, 32, generator=generator(0)), size=(size, size), mode="bicubic")
    images = images.clamp_(0.0, 1.0)  # detail of about 4 px at 128 px: what the blur takes away
    only_blur = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "solarize_p": 0.0, **PLAIN}
    view = BatchedViews(size, blur_p=1.0, blur_sigma=(sigma, sigma), **only_blur)
    ours = view.colour(shrink(images, side), generator(1))
    kernel = blur_kernel_size(size)
    expected = shrink(TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma]), side)
    unscaled = TF.gaussian_blur(shrink(images, side), [blur_kernel_size(side)] * 2, [sigma, sigma])

    error = (ours - expected).abs()
    assert error.mean() < 0.01 and error[..., 2:-2, 2:-2].max() < 0.03, (error.mean(), error.max())
    for wrong in (unscaled, shrink(images, side)):
        assert (wrong - expected).abs().mean() > 4 * error.mean()


def test_the_blur_at_a_side_takes_the_drawn_sigma_scaled_and_the_sides_kernel(monkeypatch):
    seen = []

    def spy(images, sigma, kernel_size):
        seen.append((sigma.clone(), kernel_size))
        return gaussian_blur(images, sigma, kernel_size)

    monkeypatch.setattr(colour_module, "gaussian_blur", spy)
    view = BatchedViews(128, blur_p=1.0, **PLAIN)
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=generator(0))
    view(images, generator(3))
    full = seen[:]
    seen.clear()
    view(images, generator(3), 48)
    assert {k for _, k in full} == {blur_kernel_size(128)} == {13}
    assert {k for _, k in seen} == {blur_kernel_size(48)} == {5}
    assert torch.allclose(torch.cat([s for s, _ in seen]), torch.cat([s for s, _ in full]) * 48 / 128)


def test_without_a_side_or_at_image_size_the_views_are_unchanged():
    """No side (progressive off, ``barlowtwins views``, the benchmarks) and a side equal to image_size (the last
    steps) give the views as before, bit for bit (tests/data/test_batched_views.py holds them to the paper's
    operations, tests/train/test_speed_path.py to resuming)."""
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=generator(0))
    views = batched_two_views(32, blur_p=(1.0, 0.5), solarize_p=(0.0, 0.5), grayscale_p=0.3)
    plain, none, at_size = (
        views(images, generator(4)),
        views(images, generator(4), None),
        views(images, generator(4), 32),
    )
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, none, at_size, strict=True))


def test_with_small_views_only_the_pair_takes_the_side():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=generator(3))
    views = training_views(2, 12, (0.05, 0.4), image_size=32, solarize_p=(0.0, 0.2))
    y_a, y_b, small = views(images, generator(4), 16)
    full_a, full_b, full_small = views(images, generator(4))
    assert y_a.shape == y_b.shape == (5, 3, 16, 16)
    assert torch.equal(small, full_small)  # drawn after the pair, from the same draws: the same small views
    assert torch.equal(views.pair.view_a(images, generator(4), 16), y_a)
