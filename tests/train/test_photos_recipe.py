"""The photos-cpu recipe on real photos (Imagenette): the folder is read as its README counts it, and the
recipe's path (ImageNet normalisation, low resolution first, per-sample crops of 224 px photos) trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from barlowtwins.cli import main
from barlowtwins.data import open_source
from barlowtwins.dataset_stats import IMAGENET_MEAN, IMAGENET_STD
from barlowtwins.recipes import make_config

# Imagenette's README: validation photos per class (WordNet id)
VAL_COUNTS = {
    "n01440764": 387,
    "n02102040": 395,
    "n02979186": 357,
    "n03000684": 386,
    "n03028079": 409,
    "n03394916": 394,
    "n03417042": 389,
    "n03425413": 419,
    "n03445777": 399,
    "n03888257": 390,
}


def test_the_imagenette_folder_reads_as_its_readme_counts_it(imagenette_dir):
    samples = open_source([str(imagenette_dir / "val")]).samples
    assert len(samples) == 3925 and samples.classes == sorted(VAL_COUNTS)
    counts = np.bincount(samples.labels, minlength=10)
    assert dict(zip(samples.classes, counts.tolist())) == VAL_COUNTS


def test_the_photos_recipe_normalises_photos_as_photos_and_starts_small():
    config = make_config("photos-cpu")
    assert (config.augment.mean, config.augment.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert config.train.progressive_start < config.augment.image_size


def _subset(source: Path, out: Path, per_class: int) -> Path:
    """The first ``per_class`` photos of two classes, as symlinks in an ImageFolder tree."""
    for wnid in sorted(VAL_COUNTS)[:2]:
        (out / wnid).mkdir(parents=True)
        for photo in sorted((source / wnid).iterdir())[:per_class]:
            (out / wnid / photo.name).symlink_to(photo)
    return out


@pytest.mark.slow
def test_the_photos_recipe_trains_on_real_photos_and_scores_them(imagenette_dir, tmp_path):
    photos = _subset(imagenette_dir / "val", tmp_path / "photos", per_class=24)
    run = tmp_path / "run"
    args = ["pretrain", "--recipe", "photos-cpu", "--data", str(photos), "--eval-data", str(photos)]
    args += ["--epochs", "2", "--batch-size", "16", "--projector", "64-64", "--image-size", "48"]
    args += ["--set", "train.progressive_start=24", "--workers", "0", "--precision", "fp32"]
    args += ["--set", "monitor.knn_every_epochs=0", "--set", "monitor.picture_every=0", "--out", str(run)]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 * 48 // 16 and np.isfinite([r["loss"] for r in records]).all()
    knn = json.loads((run / "eval" / "knn.json").read_text())["results"]
    assert set(knn) == {"pretrained", "random_init"} and 0 <= knn["pretrained"]["top1"]["20"] <= 100
