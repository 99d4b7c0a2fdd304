"""The batched views draw the PIL path's distributions and compute torchvision's formulas (paper §2.2).

Distributions are compared with the per-sample torchvision ops over thousands of draws (two-sample
Kolmogorov-Smirnov tests, binomial rates within 4 standard errors); pixel values are compared with
torchvision's functional ops at the same parameters. Every random test uses a fixed seed, so a pass or a
failure is reproducible; the thresholds say how unlikely a pass would be if the distributions differed.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import barlowtwins.views.batched as batched_module
import barlowtwins.views.colour as colour_module
from barlowtwins.dataset_stats import CIFAR10_MEAN, CIFAR10_STD
from barlowtwins.views.batched import BatchedViews, batched_two_views, resized_crop, training_views
from barlowtwins.views.colour import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    rgb_to_grayscale,
    sample_jitter,
    solarize,
)
from barlowtwins.views.crops import sample_crop_boxes
from barlowtwins.views.per_sample import two_views, view_transform

DRAWS = 4000
KS_P = 1e-3  # fixed seeds; with 4000 draws a KS test at this level detects CDF shifts of ~0.045


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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


def isolated_pair(**switched_on) -> dict:
    """``isolated`` for ``batched_two_views``: blur and solarization probabilities per view."""
    return {**isolated(), "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0), **switched_on}


def half_red_half_blue(n: int, size: int = 8) -> torch.Tensor:
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    images[:, 0, :, : size // 2] = 200
    images[:, 2, :, size // 2 :] = 200
    return images


def assert_rate(mask: torch.Tensor, p: float) -> None:
    """Within 4 binomial standard errors (a false alarm about once in 16,000 seeds)."""
    observed = mask.float().mean().item()
    assert abs(observed - p) <= 4 * (p * (1 - p) / mask.numel()) ** 0.5 + 1e-9, (observed, p)


def ks_same(a, b) -> None:
    result = stats.ks_2samp(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    assert result.pvalue > KS_P, result


# --- parameter distributions against torchvision's samplers -------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(100, 100), (20, 100)])
def test_crop_boxes_match_random_resized_crop(height, width):
    """Area fraction, log aspect ratio, position and fallback rate as ``RandomResizedCrop.get_params``."""
    ours = sample_crop_boxes(DRAWS, height, width, (0.08, 1.0), generator()).double()
    torch.manual_seed(1)
    image = torch.empty(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(DRAWS)])
    ref = ref.double()
    for boxes in (ours, ref):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = [b[:, 2] * b[:, 3] / (height * width) for b in (ours, ref)]
    ks_same(*area)
    ks_same(*[(b[:, 3] / b[:, 2]).log() for b in (ours, ref)])
    ks_same(*[b[:, 0] / (height - b[:, 2] + 1) for b in (ours, ref)])  # top, relative to its range
    ks_same(*[b[:, 1] / (width - b[:, 3] + 1) for b in (ours, ref)])
    fallback_box = torch.tensor([0.0, 0.0, height, round(height * 4 / 3)]) if width > height else None
    if fallback_box is not None:  # 20 x 100: about one draw in ten falls back to the central crop
        fallback_box[1] = (width - fallback_box[3]) // 2
        ref_rate = (ref == fallback_box).all(1).float().mean().item()
        assert 0.03 < ref_rate < 0.3
        assert_rate((ours == fallback_box).all(1), ref_rate)


def test_crop_fallback_is_torchvisions_central_crop():
    """On an 8 x 200 strip no candidate fits, so every box is the fallback; and on a tall strip too."""
    image = torch.empty(3, 8, 200)
    expected = torch.tensor(T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]))
    assert (sample_crop_boxes(50, 8, 200, (0.08, 1.0), generator()) == expected).all()
    tall = torch.tensor(T.RandomResizedCrop.get_params(torch.empty(3, 200, 8), [0.08, 1.0], [3 / 4, 4 / 3]))
    assert (sample_crop_boxes(50, 200, 8, (0.08, 1.0), generator()) == tall).all()


def test_jitter_factors_and_order_match_color_jitter():
    ours = sample_jitter(DRAWS, (0.4, 0.4, 0.2, 0.1), 0.8, generator())
    jitter = T.ColorJitter(0.4, 0.4, 0.2, 0.1)
    torch.manual_seed(2)
    draws = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) for _ in range(DRAWS)]
    ref_factors = torch.tensor([d[1:] for d in draws])
    for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        factor = ours.factors[:, column]
        assert factor.min() >= low and factor.max() <= high
        assert factor.min() < low + 0.01 * (high - low) and factor.max() > high - 0.01 * (high - low)
        ks_same(factor, ref_factors[:, column])
    assert_rate(ours.applied, 0.8)
    # Every image gets a permutation, and the 24 orders are equally likely (chi-square, 3 dof per ~170 draws).
    assert (ours.order.sort(dim=1).values == torch.arange(4)).all()
    orders = list(itertools.permutations(range(4)))
    counts = [(ours.order == torch.tensor(o)).all(1).sum().item() for o in orders]
    assert stats.chisquare(counts).pvalue > KS_P, counts
    ref_counts = [sum(tuple(d[0].tolist()) == o for d in draws) for o in orders]
    assert stats.chi2_contingency([counts, ref_counts]).pvalue > KS_P


def test_brightness_zero_clips_at_zero_like_torchvision():
    factors = sample_jitter(DRAWS, (1.5, 0.0, 0.0, 0.0), 1.0, generator()).factors[:, 0]
    assert factors.min() >= 0.0 and factors.max() <= 2.5
    assert factors.min() < 0.01  # [max(0, 1 - 1.5), 2.5] = [0, 2.5]


def test_blur_sigma_matches_gaussian_blur(monkeypatch):
    seen = []

    def spy(images, sigma, kernel_size):
        seen.append((sigma.clone(), kernel_size))
        return gaussian_blur(images, sigma, kernel_size)

    monkeypatch.setattr(colour_module, "gaussian_blur", spy)
    BatchedViews(224, **isolated(blur_p=1.0))(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), generator())
    assert seen[0][1] == blur_kernel_size(224) == 23  # BYOL's 23 px at 224 px
    first = len(seen)
    BatchedViews(8, **isolated(blur_p=1.0))(torch.zeros(DRAWS, 3, 8, 8, dtype=torch.uint8), generator())
    sigma = torch.cat([s for s, _ in seen[first:]])  # a CPU batch is coloured in slices
    assert len(sigma) == DRAWS and sigma.min() >= 0.1 and sigma.max() <= 2.0
    blur = T.GaussianBlur(23, sigma=(0.1, 2.0))
    torch.manual_seed(3)
    ks_same(sigma, [blur.get_params(*blur.sigma) for _ in range(DRAWS)])


# --- application rates, observed on the output --------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.0])
def test_flip_rate(p):
    out = BatchedViews(8, **isolated(flip_p=p))(half_red_half_blue(DRAWS), generator())
    flipped = out[:, 0, :, 0].mean(1) < out[:, 2, :, 0].mean(1)
    assert_rate(flipped, p)
    assert torch.equal(out[~flipped], half_red_half_blue(int((~flipped).sum())).float() / 255)
    assert torch.equal(out[flipped], half_red_half_blue(int(flipped.sum())).flip(-1).float() / 255)


def test_grayscale_rate_and_output():
    out = BatchedViews(8, **isolated(grayscale_p=0.2))(half_red_half_blue(DRAWS), generator())
    gray = (out[:, 0] == out[:, 1]).all((1, 2)) & (out[:, 1] == out[:, 2]).all((1, 2))
    assert_rate(gray, 0.2)
    assert torch.allclose(out[gray][:, 0, 0, 0], torch.tensor(0.2989 * 200 / 255))


@pytest.mark.parametrize("p", [0.2, 1.0])
def test_solarize_rate(p):
    bright = torch.full((DRAWS, 3, 4, 4), 200, dtype=torch.uint8)  # above the threshold of 128
    out = BatchedViews(4, **isolated(solarize_p=p))(bright, generator())
    solarized = (out * 255).round().amax((1, 2, 3)) == 55  # 255 - 200
    assert_rate(solarized, p)
    assert ((out * 255).round()[~solarized] == 200).all()


def test_colour_jitter_rate():
    images = half_red_half_blue(DRAWS)
    out = BatchedViews(8, **isolated(jitter_p=0.8))(images, generator())
    changed = (out != images.float() / 255).flatten(1).any(1)
    assert_rate(changed, 0.8)  # float factors: a jittered image keeps all its pixels with probability ~0


@pytest.mark.parametrize(("view_index", "p"), [(0, 1.0), (1, 0.1)])
def test_blur_rate_per_view(view_index, p):
    views = batched_two_views(8, **isolated_pair(blur_p=(1.0, 0.1), blur_sigma=(1.0, 2.0)))
    images = half_red_half_blue(DRAWS)
    out = views(images, generator())[view_index]
    blurred = (out != images.float() / 255).flatten(1).any(1)  # sigma >= 1 always smears the colour edge
    assert_rate(blurred, p)


def test_views_are_asymmetric_in_solarization_only():
    views = batched_two_views(4, **isolated_pair(solarize_p=(0.0, 0.2)))
    bright = torch.full((DRAWS, 3, 4, 4), 200, dtype=torch.uint8)
    y_a, y_b = views(bright, generator())
    assert ((y_a * 255).round() == 200).all()  # view A: solarization p = 0.0
    assert_rate((y_b * 255).round().amax((1, 2, 3)) == 55, 0.2)
    paper = batched_two_views(224)
    assert (paper.view_a.blur_p, paper.view_b.blur_p) == (1.0, 0.1)
    assert (paper.view_a.solarize_p, paper.view_b.solarize_p) == (0.0, 0.2)
    shared = {k: v for k, v in vars(paper.view_a).items() if k not in ("blur_p", "solarize_p")}
    assert shared == {k: v for k, v in vars(paper.view_b).items() if k not in ("blur_p", "solarize_p")}


# --- deterministic operations against torchvision's functional ops -----------------------------------------


def random_images(n: int = 16, size: int = 12) -> torch.Tensor:
    images = torch.rand(n, 3, size, size, generator=generator(4))
    images[0] = 0.5  # gray: zero chroma
    images[1, 1] = images[1, 0]  # ties between the maximum channels
    images[2, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # saturated red
    return images


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high", "atol"),
    [
        # Same formulas; torch.lerp and a float32 factor round differently from torchvision's
        # ratio * a + (1 - ratio) * b in the last bit of values <= 1, so a few ulp (1 ulp = 6e-8 at 0.5..1).
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0, 1e-6),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0, 1e-6),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0, 1e-6),
        # Hue: the same HSV model written with masks instead of branches; division by the chroma scales
        # rounding errors by 1 / chroma and the way back multiplies them by chroma again: measured 1.1e-6.
        (adjust_hue, TF.adjust_hue, -0.5, 0.5, 1e-5),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, low, high, atol):
    images = random_images()
    factors = torch.linspace(low, high, len(images))
    out = ours(images, factors)
    for image, factor, result in zip(images, factors, out):
        torch.testing.assert_close(result, theirs(image, float(factor)), atol=atol, rtol=0)


def test_grayscale_matches_torchvision_exactly():
    images = random_images()
    assert torch.equal(rgb_to_grayscale(images), TF.rgb_to_grayscale(images))


def test_color_jitter_applies_each_images_ops_in_its_own_order():
    """Against a loop of torchvision's ops in the drawn order: the hue tolerance (measured here 1.6e-6)."""
    images = random_images(64)
    params = sample_jitter(64, (0.4, 0.4, 0.2, 0.1), 0.8, generator(5))
    assert 0 < params.applied.sum() < 64
    out = images.clone()
    color_jitter(out, params)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i, image in enumerate(images):
        if params.applied[i]:
            for op in params.order[i].tolist():
                image = ops[op](image, float(params.factors[i, op]))
        torch.testing.assert_close(out[i], image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 7, 23])
def test_blur_matches_torchvision(kernel_size):
    """Separable per-image kernels against torchvision's 2-D kernel: float32 rounding of 2 x k against k^2
    products, measured up to 1e-6 at k = 23."""
    images = random_images(8, size=32)
    sigma = torch.linspace(0.1, 2.0, 8)
    out = gaussian_blur(images, sigma, kernel_size)
    for image, s, result in zip(images, sigma, out):
        expected = TF.gaussian_blur(image, [kernel_size, kernel_size], [float(s), float(s)])
        torch.testing.assert_close(result, expected, atol=5e-6, rtol=0)


def test_solarize_matches_torchvision_and_pil_on_uint8():
    """1 - x is exact for x >= 0.5 (Sterbenz), so only the rounding of v / 255 remains: < 1e-7."""
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    expected = TF.solarize(values, 128).float() / 255
    torch.testing.assert_close(solarize(values.float() / 255), expected, atol=1e-7, rtol=0)
    pil = Image.fromarray(values[0].permute(1, 2, 0).numpy())
    from_pil = TF.to_tensor(T.RandomSolarize(threshold=128, p=1.0)(pil))
    torch.testing.assert_close(solarize(values.float() / 255)[0], from_pil, atol=1e-7, rtol=0)
    assert expected[0, 0, 7, 15] == 127 / 255 and expected[0, 0, 8, 0] == 127 / 255  # 127 kept, 128 -> 127


def test_crop_of_the_whole_image_at_its_size_is_exact():
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=generator(6)).float()
    boxes = torch.tensor([[0, 0, 16, 16]] * 4)
    assert torch.equal(resized_crop(images, boxes, 16), images)


def test_enlarging_crop_is_bilinear_inside_the_box():
    """roi_align samples pixels just outside the box for the outermost output row and column, where
    crop-then-resize repeats the box's edge; everywhere else both are the same bilinear interpolation."""
    images = torch.rand(3, 3, 24, 30, generator=generator(7)) * 255
    boxes = torch.tensor([[3, 5, 20, 25], [0, 0, 24, 30], [11, 17, 13, 11]])
    out = resized_crop(images, boxes, 32)
    for image, (top, left, h, w), result in zip(images, boxes.tolist(), out):
        expected = TF.resized_crop(image, top, left, h, w, [32, 32], InterpolationMode.BILINEAR, antialias=False)
        torch.testing.assert_close(result[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-3, rtol=0)
        if (top, left, h, w) == (0, 0, 24, 30):  # no pixels outside the box: identical everywhere
            continue
        assert (result[:, 0] - expected[:, 0]).abs().max() > 1  # the border difference is real


def test_shrinking_crop_averages_instead_of_point_sampling():
    """Stripes 1 on, 2 off shrunk 3x: one sample per output pixel would hit a stripe's centre column (0 or 255);
    roi_align's 3 x 3 sampling points per output pixel sit on the pixel centres and average to 85 exactly."""
    images = torch.zeros(1, 3, 60, 60)
    images[..., ::3] = 255
    out = resized_crop(images, torch.tensor([[0, 0, 60, 60]]), 20)
    torch.testing.assert_close(out, torch.full_like(out, 85.0), atol=1e-3, rtol=0)


def test_shrinking_crop_is_close_to_the_pil_path_on_a_smooth_image():
    """Averaged bilinear samples vs PIL's antialiased bicubic (plus its uint8 rounding) on a smooth image of
    amplitude 100 and wavelengths >= 40 px: the filters differ slightly in width, measured <= 2.1 levels
    of 255, mean 0.7; allowed 4 and 1.5. A 1-pixel offset of the sampling grid would give ~10."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    smooth = torch.stack(
        [
            127.5 + 100 * torch.sin(xx / 9 + yy / 13),
            127.5 + 100 * torch.cos(yy / 7),
            127.5 + 100 * torch.sin((xx - yy) / 11),
        ]
    ).round()
    pil = Image.fromarray(smooth.byte().permute(1, 2, 0).numpy())
    boxes = torch.tensor([[0, 0, 128, 128], [10, 20, 100, 90], [5, 5, 64, 80]])
    out = resized_crop(smooth.expand(3, -1, -1, -1).contiguous(), boxes, 32)
    for (top, left, h, w), result in zip(boxes.tolist(), out):
        expected = TF.pil_to_tensor(TF.resized_crop(pil, top, left, h, w, [32, 32], InterpolationMode.BICUBIC))
        difference = (result - expected.float()).abs()
        assert difference.max() <= 4 and difference.mean() <= 1.5, (difference.max(), difference.mean())


# --- the whole pipeline ---------------------------------------------------------------------------------------


def test_with_every_random_op_off_it_equals_the_pil_path_bit_for_bit():
    array = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=generator(8))
    norm = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD)
    off = {**isolated(), **norm}
    out = BatchedViews(24, **off)(array, generator())
    pil_view = view_transform(24, **off)
    for image, result in zip(array, out):
        assert torch.equal(result, pil_view(Image.fromarray(image.permute(1, 2, 0).numpy())))
    grey = BatchedViews(24, **off)(torch.full((1, 3, 24, 24), 77, dtype=torch.uint8), generator())
    expected = (torch.tensor(77 / 255) - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    assert torch.equal(grey[0, :, 5, 7], expected)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 40), (20, 64)])
def test_output_shape_dtype_and_device(height, width):
    images = torch.randint(0, 256, (6, 3, height, width), dtype=torch.uint8)
    y_a, y_b = batched_two_views(32, solarize_p=(0.5, 0.5))(images, generator())
    for y in (y_a, y_b):
        assert y.shape == (6, 3, 32, 32) and y.dtype == torch.float32 and y.device == images.device
        assert torch.isfinite(y).all()
    assert not torch.equal(y_a, y_b)


@pytest.mark.parametrize("size", [16, 40])
def test_views_are_the_same_however_a_cpu_batch_is_sliced(monkeypatch, size):
    """On a CPU the colour operations run a few images at a time (one image, without masks, at 224 px): every
    image's draws come first, so the views are bit for bit those of the whole batch at once, for crops cut per
    sample (uint8 in) and whole-batch crops (CIFAR's path), with every operation on, blur and solarization too."""
    images = torch.randint(0, 256, (12, 3, 48, 48), dtype=torch.uint8, generator=generator(2))
    crops = (torch.randint(0, 256, (12, 2, 3, size, size), dtype=torch.uint8, generator=generator(3)),)
    views = batched_two_views(size, blur_p=(1.0, 0.5), solarize_p=(0.3, 0.5), grayscale_p=0.5)
    results = []
    for slice_bytes in (2**40, 1, 5 * size * size * 3 * 4):  # the whole batch, one image, five images
        monkeypatch.setattr(batched_module, "CPU_SLICE_BYTES", slice_bytes)
        results.append((*views(images, generator(4)), *views.colour(crops, generator(5))))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_same_seed_same_views_and_different_seed_different_views():
    images = torch.randint(0, 256, (32, 3, 40, 40), dtype=torch.uint8, generator=generator(9))
    views = batched_two_views(32, solarize_p=(0.3, 0.3))
    first, again, other = (views(images, generator(seed)) for seed in (11, 11, 12))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(not torch.equal(a, b) for a, b in zip(first, other))
    g = generator(11)
    views(images, g)
    assert not torch.equal(views(images, g)[0], first[0])  # the generator advances between calls


def test_probability_zero_ops_are_never_called(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("an op with probability 0 ran")

    for name in ("gaussian_blur", "solarize", "rgb_to_grayscale", "color_jitter"):
        monkeypatch.setattr(colour_module, name, boom)
    images = half_red_half_blue(16)
    out = BatchedViews(8, **isolated(jitter=(0.4, 0.4, 0.2, 0.1)))(images, generator())
    assert torch.equal(out, images.float() / 255)
    with pytest.raises(AssertionError, match="probability 0"):  # the spies do catch an op that runs
        BatchedViews(8, **isolated(solarize_p=1.0))(images, generator())


def test_neutral_jitter_components_are_skipped(monkeypatch):
    called = []

    def recording(op):
        def run(images, factor):
            called.append(op.__name__)
            return op(images, factor)

        return run

    monkeypatch.setattr(colour_module, "JITTER_OPS", tuple(recording(op) for op in colour_module.JITTER_OPS))
    BatchedViews(8, **isolated(jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0))(half_red_half_blue(16), generator())
    assert set(called) == {"adjust_brightness"}  # hue 0 is not a round trip through HSV, as in torchvision


def test_same_keywords_and_defaults_as_two_views():
    assert inspect.signature(batched_two_views).parameters.keys() == inspect.signature(two_views).parameters.keys()
    for name, parameter in inspect.signature(two_views).parameters.items():
        assert inspect.signature(batched_two_views).parameters[name].default == parameter.default


def test_rejects_non_uint8_input():
    with pytest.raises(ValueError, match="uint8"):
        BatchedViews(8)(torch.rand(2, 3, 8, 8), generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=generator(10))
    views = batched_two_views(32, solarize_p=(0.3, 0.3))
    cpu = views(images, generator(1))
    gpu = views(images.cuda(), generator(1))
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)


def test_small_views_come_after_the_pair_view_by_view_at_their_size_without_blur():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=generator(3))
    pair = batched_two_views(32, solarize_p=(0.0, 0.2))
    views = training_views(3, 16, (0.05, 0.4), image_size=32, solarize_p=(0.0, 0.2))
    y_a, y_b, y_small = views(images, generator(4))
    first_a, first_b = pair(images, generator(4))
    assert torch.equal(y_a, first_a) and torch.equal(y_b, first_b)  # the pair is drawn first, as without
    assert y_small.shape == (15, 3, 16, 16) and torch.isfinite(y_small).all()
    assert views.small.blur_p == 0 and views.small.solarize_p == 0.2 and views.small.crop_scale == (0.05, 0.4)
    assert not torch.equal(y_small[:5], y_small[5:10])  # each small view draws its own crops
    assert isinstance(training_views(image_size=32), type(pair))  # none asked: the paper's two views
