"""The two views do what the recipe says, checked statistically over many draws (paper §2.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from torchvision import transforms as T

from barlowtwins import eval_transform, two_views, view_transform
from barlowtwins.recipes import load_recipe
from barlowtwins.views.per_sample import GaussianBlur, Solarization

DRAWS = 2000


def half_red_half_blue(size: int = 32) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[:, : size // 2, 0] = 200
    array[:, size // 2 :, 2] = 200
    return Image.fromarray(array)


def isolated(**switched_on) -> dict:
    """View arguments with every random operation off except the named ones; crops keep the whole image."""
    off = dict(
        crop_scale=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
        solarize_p=0.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return {**off, **switched_on}


def fraction(transform, image, test) -> float:
    return sum(bool(test(transform(image))) for _ in range(DRAWS)) / DRAWS


def assert_rate(observed: float, p: float) -> None:
    """Within 5 binomial standard deviations (a false alarm about once in 3.5 million runs)."""
    assert abs(observed - p) <= 5 * (p * (1 - p) / DRAWS) ** 0.5 + 1e-9, (observed, p)


@pytest.mark.parametrize("p", [0.5, 0.0])
def test_flip_probability(p):
    view = view_transform(32, **isolated(flip_p=p))
    flipped = fraction(view, half_red_half_blue(), lambda x: x[0, :, 0].mean() < x[2, :, 0].mean())
    assert_rate(flipped, p)


def test_grayscale_probability():
    view = view_transform(32, **isolated(grayscale_p=0.2))
    gray = fraction(view, half_red_half_blue(), lambda x: torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2]))
    assert_rate(gray, 0.2)


@pytest.mark.parametrize("p", [0.2, 1.0])
def test_solarize_probability(p):
    bright = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))  # above the threshold of 128
    view = view_transform(16, **isolated(solarize_p=p))
    solarized = fraction(view, bright, lambda x: (x * 255).round().max() == 55)  # 255 - 200
    assert_rate(solarized, p)


def test_colour_jitter_probability():
    image = half_red_half_blue()
    view = view_transform(32, **isolated(jitter_p=0.8))
    plain = view_transform(32, **isolated())(image)
    changed = fraction(view, image, lambda x: not torch.equal(x, plain))
    # A drawn jitter can round back to the same pixels only for factors within ~1/200 of neutral: < 2% of draws.
    assert 0.8 - 0.02 - 5 * (0.16 / DRAWS) ** 0.5 <= changed <= 0.8 + 5 * (0.16 / DRAWS) ** 0.5


def find_random_apply(view: T.Compose, kind: type) -> T.RandomApply:
    return next(t for t in view.transforms if isinstance(t, T.RandomApply) and isinstance(t.transforms[0], kind))


def find_op(view: T.Compose, kind: type):
    return next(t for t in view.transforms if isinstance(t, kind))


@pytest.fixture
def blur_radii(monkeypatch) -> list[float]:
    """The radius of every ``ImageFilter.GaussianBlur`` made from now on (PIL's blur, still applied)."""
    radii = []
    real = ImageFilter.GaussianBlur

    def recording(radius):
        radii.append(radius)
        return real(radius)

    monkeypatch.setattr(ImageFilter, "GaussianBlur", recording)
    return radii


@pytest.mark.parametrize(("view_index", "p"), [(0, 1.0), (1, 0.1)])
def test_blur_probability_per_view(view_index, p, blur_radii):
    calls = blur_radii
    view = (two_views(32).view_a, two_views(32).view_b)[view_index]
    image = half_red_half_blue()
    for _ in range(DRAWS):
        view(image)
    assert_rate(len(calls) / DRAWS, p)


def test_blur_is_pils_gaussian_blur_with_sigma_uniform_in_the_range_as_main_py(blur_radii, monkeypatch):
    """main.py: ``img.filter(ImageFilter.GaussianBlur(random.random() * 1.9 + 0.1))``; PIL's radius is the
    Gaussian's standard deviation. The radii passed to PIL through a whole view follow U(0.1, 2.0) (KS, seeded),
    and a view with the range pinned to one sigma blurs exactly as PIL does."""
    radii = blur_radii
    view = two_views(16, crop_scale=(1.0, 1.0)).view_a
    assert find_op(view, GaussianBlur).sigma == (0.1, 2.0)
    torch.manual_seed(0)
    image = half_red_half_blue(16)
    for _ in range(DRAWS):
        view(image)
    assert len(radii) == DRAWS and min(radii) >= 0.1 and max(radii) <= 2.0
    assert stats.kstest(radii, stats.uniform(loc=0.1, scale=1.9).cdf).pvalue > 1e-3
    monkeypatch.undo()  # PIL's own blur again (the fixture's recorder shares this monkeypatch)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    blurred = view_transform(24, **isolated(blur_p=1.0, blur_sigma=(1.3, 1.3)))(photo)
    expected = T.ToTensor()(photo.filter(ImageFilter.GaussianBlur(1.3)))
    assert torch.equal(blurred, expected) and not torch.equal(blurred, T.ToTensor()(photo))


def test_solarization_is_pils_solarize_at_128_as_main_py():
    photo = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("RGB")
    out = view_transform(16, **isolated(solarize_p=1.0))(photo)
    assert torch.equal(out, T.ToTensor()(ImageOps.solarize(photo, 128)))
    assert repr(Solarization(0.2)) == "Solarization(p=0.2, threshold=128)"


def test_paper_views_are_asymmetric_only_in_blur_and_solarization():
    views = two_views(224)
    kinds_a = [type(t).__name__ for t in views.view_a.transforms]
    kinds_b = [type(t).__name__ for t in views.view_b.transforms]
    assert "Solarization" not in kinds_a  # view A: solarization p = 0.0
    assert find_op(views.view_b, Solarization).p == 0.2
    assert (find_op(views.view_a, GaussianBlur).p, find_op(views.view_b, GaussianBlur).p) == (1.0, 0.1)
    crop = views.view_a.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.08, 1.0)
    assert crop.interpolation == T.InterpolationMode.BICUBIC and crop.size == (224, 224)
    jitter = find_random_apply(views.view_a, T.ColorJitter)
    assert jitter.p == 0.8
    cj = jitter.transforms[0]
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
    assert [k for k in kinds_a if k != "Solarization"] == [k for k in kinds_b if k != "Solarization"]
    order = ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "GaussianBlur"]
    assert kinds_b == order + ["Solarization", "ToTensor", "Normalize"]  # main.py's order


def test_crop_area_spans_the_scale_range():
    image = Image.new("RGB", (100, 100))
    areas = [
        (lambda box: box[2] * box[3] / 100**2)(T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)))
        for _ in range(DRAWS)
    ]
    assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
    assert np.mean(np.array(areas) < 0.3) > 0.15 and np.mean(np.array(areas) > 0.7) > 0.15


def test_cifar_recipe_has_no_blur_and_makes_32px_views():
    augment = load_recipe("cifar10")["augment"]
    views = two_views(
        **{**{"image_size": 224}, **{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}}
    )
    for view in (views.view_a, views.view_b):
        assert not any(isinstance(t, GaussianBlur) for t in view.transforms)
    y_a, y_b = views(half_red_half_blue(32))
    assert y_a.shape == y_b.shape == (3, 32, 32)


def test_eval_transform_resizes_then_centre_crops():
    array = np.zeros((300, 400, 3), dtype=np.uint8)
    array[150, 200] = 255
    out = eval_transform(224, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(array))
    assert out.shape == (3, 224, 224)
    peak = (out[0] == out[0].max()).nonzero().float().mean(0)
    assert abs(peak[0] - 112) <= 2 and abs(peak[1] - 112) <= 2  # the centre stays the centre


def test_small_images_are_evaluated_as_they_are_and_large_ones_by_b1():
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = eval_transform(32, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(array))
    assert torch.equal(out, torch.from_numpy(array).permute(2, 0, 1).float() / 255)  # untouched CIFAR pixels
    resized = eval_transform(32, mean=(0, 0, 0), std=(1, 1, 1), resize_ratio=256 / 224)(Image.fromarray(array))
    assert not torch.equal(resized, out)  # B.1's rule stays available: resize 37, centre-crop 32
    ops = eval_transform(224).transforms
    assert ops[0].size == 256 and ops[1].size == (224, 224)  # above 64 px: B.1's 256 -> 224
