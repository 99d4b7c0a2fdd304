"""Full-size images the paper's way: crops drawn on the whole original image on every path, cut as torchvision
cuts them, decoded right (16-bit, CMYK, reduced-size JPEG), resumable, and CIFAR-size data as before."""

from __future__ import annotations

import dataclasses
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from barlowtwins.cli import main
from barlowtwins.config import AugmentConfig, DataConfig, PretrainConfig, TrainConfig
from barlowtwins.data import open_source
from barlowtwins.data.cache import stored_full
from barlowtwins.data.decode import decode, open_image, reduce_for, to_rgb
from barlowtwins.data.loaders import ShardedEpochSampler, cached_training_batches, decoded
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.views import crops as crops_module
from barlowtwins.views.batched import training_views
from barlowtwins.views.batches import stored_side, view_batches
from barlowtwins.views.cropped_batches import NumberedBatches
from barlowtwins.views.crops import CropViews, full_resolution_side, resized_crop, sample_crop_boxes

CPU = torch.device("cpu")
SHAPES = [(150, 100), (100, 150), (200, 40), (90, 90)]  # (width, height): landscape, portrait, a strip, square
KS_P = 1e-3
NO_COLOUR = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like: smooth colour gradients, texture and noise (JPEG sizes as a photo's, edges to find)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        128 + 100 * np.sin(x / (7 + 3 * c) + rng.uniform(0, 6)) * np.cos(y / (11 + 2 * c) + rng.uniform(0, 6))
        for c in range(3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo_folder(root: Path, shapes, copies: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (width, height) in enumerate(shapes):
        for copy in range(copies):
            photo(width, height, seed=10 * i + copy).save(root / f"p{i}-{copy}.jpg", quality=92)
    return root


def config(folder, batch: int, workers: int = 0, **data) -> PretrainConfig:
    augment = AugmentConfig(image_size=16, blur_p=(0.0, 0.0))
    return PretrainConfig(
        data=DataConfig(train=(str(folder),), workers=workers, **data),
        augment=augment,
        train=TrainConfig(batch_size=batch, seed=3),
    )


def record_boxes(monkeypatch) -> list:
    """Every box that the crop path cuts, with the original (height, width) it was drawn on."""
    seen, real = [], crops_module.resized_crop

    def recording(image, box, scale, size):
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
        seen.append(([int(v) for v in box], (round(height / scale[1]), round(width / scale[0]))))
        return real(image, box, scale, size)

    monkeypatch.setattr(crops_module, "resized_crop", recording)
    return seen


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_crop_boxes_are_torchvisions_on_the_whole_original_and_reach_every_pixel(tmp_path, monkeypatch, cache):
    """Through the training path, stored smaller than the originals (cap 60 px) or decoded every step: per shape,
    area fraction, aspect ratio and position match ``RandomResizedCrop.get_params`` on the original (KS), and
    the crops together cover every pixel of every photo (the old centre-square store never saw 3/5 of the strip)."""
    folder = photo_folder(tmp_path / "photos", SHAPES, copies=8)
    seen = record_boxes(monkeypatch)
    batches = view_batches(config(folder, 32, cache=cache, stored_size=60), CPU)
    for _ in range(40):  # 40 batches x 32 images x 2 views: 640 boxes per shape
        next(batches)
    torch.manual_seed(1)
    for width, height in SHAPES:
        ours = torch.tensor([box for box, original in seen if original == (height, width)], dtype=torch.float64)
        assert len(ours) == 640
        image = torch.empty(3, height, width)
        ref = torch.tensor([T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in ours]).double()
        for ours_stat, ref_stat in zip(box_stats(ours, height, width), box_stats(ref, height, width), strict=True):
            assert stats.ks_2samp(ours_stat.numpy(), ref_stat.numpy()).pvalue > KS_P, (width, height)
        ours_cover, ref_cover = coverage(ours, height, width), coverage(ref, height, width)
        assert ours_cover.any(axis=(0, 1)).all() and ours_cover.any(axis=(0, 2)).all()  # every column and row
        assert np.abs(ours_cover.mean(axis=0) - ref_cover.mean(axis=0)).max() < 0.1  # each pixel as often as theirs


def box_stats(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Area fraction of the original, log aspect ratio, centre relative to the original."""
    top, left, h, w = boxes.unbind(1)
    return h * w / (height * width), (w / h).log(), (top + h / 2) / height, (left + w / 2) / width


def coverage(boxes: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(boxes, height, width): whether each box covers each pixel."""
    covered = np.zeros((len(boxes), height, width), dtype=bool)
    for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
        covered[i, top : top + h, left : left + w] = True
    return covered


def test_stored_images_keep_the_whole_picture_with_a_capped_shorter_side():
    image = photo(300, 120, seed=0)
    row, original = stored_full(image, 60)
    assert original == (120, 300) and row.shape == (60, 150, 3)
    np.testing.assert_array_equal(row, np.asarray(image.resize((150, 60), Image.Resampling.BICUBIC)))
    small, original = stored_full(image, 500)  # never enlarged
    assert original == (120, 300)
    np.testing.assert_array_equal(small, np.asarray(image))
    assert full_resolution_side(224, 0.08) == 915 and full_resolution_side(32, 0.2) == 83
    # every box the rule can draw on a square of that side spans at least 224 px: a reduction when cut
    boxes = sample_crop_boxes(20000, 915, 915, (0.08, 1.0), torch.Generator().manual_seed(0))
    assert boxes[:, 2:].min() >= 224
    assert stored_side(DataConfig(), AugmentConfig()) == 915
    assert stored_side(DataConfig(stored_size=256), AugmentConfig()) == 256


def test_a_crop_of_pixels_held_at_full_size_is_torchvisions_resized_crop_to_rounding():
    """Stored pixels at full size are cut with torch's uint8 antialiased bicubic (PIL's filter, 3x faster): against
    torchvision's resized_crop (PIL) at the same boxes, most values equal, the rest off by one level but for a
    rare one at a sharp edge (raccoon photos, 160 crops: 98.5 % equal, mean 0.016 of 255, 4 in 100,000 off by
    more than 1). A PIL image is cut the same way; pixels held smaller go through PIL with the scaled box."""
    image = photo(160, 110, seed=1)
    generator = torch.Generator().manual_seed(5)
    differences = []
    for box in sample_crop_boxes(40, 110, 160, (0.08, 1.0), generator).tolist():
        expected = TF.resized_crop(image, *box, [24, 24], interpolation=T.InterpolationMode.BICUBIC)
        ours = resized_crop(np.asarray(image), box, (1.0, 1.0), 24)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 24, 24)
        assert torch.equal(resized_crop(image, box, (1.0, 1.0), 24), ours)
        differences.append((ours.permute(1, 2, 0).int() - torch.from_numpy(np.array(expected)).int()).abs())
    every = torch.stack(differences).float()
    assert (every == 0).float().mean() > 0.95 and every.mean() < 0.05 and (every > 1).float().mean() < 1e-3


def _crops_against_torchvision(path: Path, size: int, lazily: bool, seed: int) -> float:
    """Mean absolute difference (0-255) of CropViews' two crops of a JPEG against torchvision's resized_crop
    of the fully decoded original at the same boxes."""
    original = decode(str(path), str(path))
    pixels = open_image(str(path), str(path)) if lazily else stored_full(original, full_resolution_side(size, 0.08))[0]
    crop = CropViews([(size, (0.08, 1.0)), (size, (0.08, 1.0))])
    views = crop(pixels, (original.height, original.width), path.name, torch.Generator().manual_seed(seed))[0]
    boxes_generator = torch.Generator().manual_seed(seed)
    boxes = sample_crop_boxes(2, original.height, original.width, (0.08, 1.0), boxes_generator)  # A and B: one draw
    refs = [
        TF.resized_crop(original, *b.tolist(), [size, size], interpolation=T.InterpolationMode.BICUBIC) for b in boxes
    ]
    ref = torch.from_numpy(np.stack([np.asarray(r) for r in refs]).transpose(0, 3, 1, 2).copy())
    return (views.float() - ref.float()).abs().mean().item()


def test_real_photos_cut_from_reduced_pixels_agree_with_torchvision_on_the_original(raccoon_dir):
    """Raccoon photos (real JPEGs of several shapes): crops from a store capped at the default rule's side, and
    from a JPEG decoded at a reduced DCT scale, against torchvision on the full original: mean absolute difference
    at most 3.5 of 255 per photo and 1 of 255 over all (measured: 0.4 / 0.2 on average, at most 3.0 / 0.5)."""
    paths = sorted((raccoon_dir / "JPEGImages").glob("*.jpg"))[:24]
    assert len({Image.open(p).size for p in paths}) > 5
    for lazily in (True, False):
        differences = [_crops_against_torchvision(path, 64, lazily, seed=i) for i, path in enumerate(paths)]
        assert max(differences) < 3.5 and np.mean(differences) < 1.0, differences


def test_large_jpegs_decode_at_a_reduced_scale_only_when_every_crop_allows_it():
    encoded = io.BytesIO()
    photo(1600, 1200, seed=2).save(encoded, format="JPEG", quality=90)
    image = open_image(encoded.getvalue(), "big")
    assert reduce_for(image, (400, 300)) == 0.25 and image.size == (400, 300)
    image = open_image(encoded.getvalue(), "big")
    assert reduce_for(image, (1000, 700)) == 1.0 and image.size == (1600, 1200)
    png = io.BytesIO()
    photo(64, 64, seed=2).save(png, format="PNG")
    assert reduce_for(open_image(png.getvalue(), "png"), (8, 8)) == 1.0


def test_sixteen_bit_and_cmyk_images_come_out_right(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(decode(str(tmp_path / "deep.png"), "deep.png")).astype(np.float64)
    assert np.abs(rgb - (ramp / 257.0)[:, :, None]).max() <= 0.5  # not clipped to white
    cmyk = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "print.jpg", quality=100)
    stored = np.asarray(Image.open(tmp_path / "print.jpg")).astype(np.float64)  # what the JPEG holds
    expected = (255 - stored[..., :3]) * (255 - stored[..., 3:]) / 255
    assert np.abs(np.asarray(decode(str(tmp_path / "print.jpg"), "p")).astype(np.float64) - expected).max() <= 0.5
    assert to_rgb(Image.fromarray(np.full((4, 4), 1000, dtype=np.int32), mode="I"), "i").getpixel((0, 0)) == (4, 4, 4)


@pytest.mark.parametrize(("cache", "workers"), [("memory", 0), ("off", 2)])
def test_resuming_mid_epoch_gives_exactly_the_views_of_an_uninterrupted_run(tmp_path, cache, workers):
    folder = photo_folder(tmp_path / "photos", SHAPES, copies=3)  # 12 photos, batch 4: 3 steps an epoch
    settings = config(folder, 4, workers=workers, cache=cache)
    straight = view_batches(settings, CPU)
    run = [next(straight) for _ in range(5)]
    resumed = view_batches(settings, CPU, step=4)
    views, labels, ids = next(resumed)
    assert ids == run[4][2]
    for ours, theirs in zip(views, run[4][0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert sorted(i for batch in run[:3] for i in batch[2]) == sorted(str(p) for p in folder.iterdir())


def test_the_batches_run_on_from_epoch_to_epoch_in_one_pass_of_the_loader():
    """One endless pass: its workers never drain at an epoch's end (200 photos in batches of 64 left one of two
    workers idle through every third batch). Each epoch is a fresh permutation; a resumed one skips its first
    batches; every item carries its epoch and batch number."""
    sampler = ShardedEpochSampler(10, 4, seed=0)
    batches = NumberedBatches(sampler, 4, start_epoch=3, skip_batches=1)
    drawn = list(itertools.islice(iter(batches), 5))
    assert [batch[0][2:] for batch in drawn] == [(3, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
    assert len({i for batch in drawn[1:3] for i, *_ in batch}) == 8  # epoch 4: 8 distinct photos of 10, 2 dropped
    assert [i for i, *_ in drawn[1]] != [i for i, *_ in drawn[3]]  # epoch 5: another permutation


def test_cifar_size_data_takes_the_whole_batch_path_bit_for_bit(cifar_dir):
    """CIFAR-10 images (one shape, 32 px) are cropped a whole batch at a time as before: the same batches as
    the previous path, its square store of the images at the view size."""
    shards = [str(cifar_dir / "cifar10-train-000000.tar")]
    settings = PretrainConfig(
        data=DataConfig(train=tuple(shards), limit=256, workers=0),
        augment=AugmentConfig(image_size=32, crop_scale=(0.2, 1.0), blur_p=(0.0, 0.0)),
        train=TrainConfig(batch_size=64, seed=1),
    )
    source = open_source(settings.data.train, limit=256)
    ours = view_batches(settings, CPU, source)
    square = decoded(source, 32, "memory", "", workers=0)  # the previous store: resize 32 + centre crop 32
    before = cached_training_batches(square, training_views(**dataclasses.asdict(settings.augment)), 64, 1, CPU)
    for _ in range(5):
        (new, labels, ids), (old, old_labels, old_ids) = next(ours), next(before)
        assert ids == old_ids and torch.equal(labels, old_labels)
        for a, b in zip(new, old, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_views_command_writes_the_training_views_before_normalisation(tmp_path, capsys):
    """With every colour operation off and whole-image crops of square photos at the view size, a view pair is
    the photo itself: the command's tensor holds the training path's pixels, un-normalised exactly."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        photo(16, 16, seed=i).save(folder / f"{i}.png")
    sets = ["augment.image_size=16", "augment.crop_scale=[1.0,1.0]", "train.batch_size=4", "data.workers=0"]
    sets += [f"augment.{k}={v if not isinstance(v, tuple) else list(v)}" for k, v in NO_COLOUR.items()]
    args = ["views", "--data", str(folder), "--count", "6", "--out", str(tmp_path / "v")]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    pairs = torch.load(tmp_path / "v" / "views.pt")
    assert pairs.shape == (6, 2, 3, 16, 16) and pairs.dtype == torch.uint8
    assert (tmp_path / "v" / "views.png").stat().st_size > 10_000
    originals = {np.asarray(Image.open(p)).tobytes() for p in folder.iterdir()}
    for pair in pairs:
        assert torch.equal(pair[0], pair[1])
        assert pair[0].permute(1, 2, 0).numpy().tobytes() in originals
    assert (
        main(["views", "--data", str(folder), "--count", "10", "--bench"] + [a for s in sets for a in ("--set", s)])
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    count, rate = last.split(", ")
    assert count == "10 pairs"
    assert rate.endswith(" pairs/s") and float(rate.split()[0]) > 0


def test_an_unreadable_photo_is_named_in_one_line(tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos", SHAPES[:2], copies=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for cache in ("memory", "off"):
        args = ["views", "--data", str(folder), "--count", "4", "--bench", "--set", "train.batch_size=5"]
        assert main(args + ["--set", f"data.cache={cache}", "--set", "data.workers=0"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "broken.jpg" in error, error


def photo_shards(directory: Path, count: int = 6) -> list[str]:
    """Two WebDataset shards of ``count`` JPEG photos each, landscape and portrait in turn."""
    import webdataset as wds

    shards = []
    for s in range(2):
        shards.append(str(directory / f"photos-{s}.tar"))
        with wds.TarWriter(shards[-1]) as sink:
            for i in range(count):
                encoded = io.BytesIO()
                photo(*SHAPES[i % 2], seed=10 * s + i).save(encoded, format="JPEG", quality=90)
                sink.write({"__key__": f"s{s}-{i:02d}", "jpg": encoded.getvalue(), "cls": str(i % 3).encode()})
    return shards


def test_streamed_shards_are_stored_whole_by_several_workers(tmp_path):
    """Decoding streamed shards into the whole-image store in 2 workers (rows of several shapes cross processes
    as pickled objects: as bare arrays each took a file descriptor, and 50,000 CIFAR images ran out of them)."""
    shards = photo_shards(tmp_path, count=40)
    images = decoded(open_source(shards), 60, "memory", "", workers=2, square=False)
    assert len(images) == 80 and images.shape is None
    assert {images.original_size(i) for i in range(80)} == {(100, 150), (150, 100)}
    assert {images.image(i).shape for i in range(80)} == {(60, 90, 3), (90, 60, 3)}
    from torch.utils.data import default_convert

    from barlowtwins.data.loaders import _Stored

    crossing = default_convert(_Stored(60, square=False)(photo(150, 100, seed=0)))
    assert not isinstance(crossing, (torch.Tensor, list, tuple))  # one pickled object, no shared-memory tensors


def test_streamed_shards_decoded_every_step_are_cropped_from_the_whole_photo(tmp_path, monkeypatch):
    """Shards streamed with ``data.cache=off`` (a dataset too large to store): each photo is decoded as it
    streams and both views' boxes are drawn on its original size."""
    shards = photo_shards(tmp_path)
    seen = record_boxes(monkeypatch)
    settings = PretrainConfig(
        data=DataConfig(train=tuple(shards), cache="off", workers=0, shuffle_buffer=4),
        augment=AugmentConfig(image_size=16, blur_p=(0.0, 0.0)),
        train=TrainConfig(batch_size=4, seed=2),
    )
    batches = view_batches(settings, CPU)
    for _ in range(6):
        views, labels, ids = next(batches)
        assert [v.shape for v in views] == [(4, 3, 16, 16)] * 2 and len(ids) == 4
    assert len(seen) == 48
    assert {original for _, original in seen} == {(100, 150), (150, 100)}
    for (top, left, h, w), (height, width) in seen:
        assert 0 <= top <= height - h and 0 <= left <= width - w and h * w >= 0.08 * height * width - height - width


def test_crops_setting_chooses_the_path_and_refuses_what_cannot_be(tmp_path, monkeypatch):
    """``data.crops=sample`` cuts uniform small images per sample (the paper's antialiased bicubic) instead of whole
    batches; ``batch`` is refused for photos of several shapes and without a store."""
    folder = tmp_path / "squares"
    folder.mkdir()
    for i in range(8):
        photo(24, 24, seed=i).save(folder / f"{i}.png")
    seen = record_boxes(monkeypatch)
    next(view_batches(config(folder, 4), CPU))
    assert seen == []  # auto: one shape, stored as it is, 24 <= 2 x 16: whole batches
    next(view_batches(config(folder, 4, crops="sample"), CPU))
    assert len(seen) == 8
    mixed = photo_folder(tmp_path / "photos", SHAPES[:2], copies=2)
    for settings in (config(mixed, 4, crops="batch"), config(folder, 4, crops="batch", cache="off")):
        with pytest.raises(BarlowTwinsError, match="data.crops=batch"):
            next(view_batches(settings, CPU))
