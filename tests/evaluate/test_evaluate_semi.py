"""Semi-supervised fine-tuning (B.2): the step schedule, two learning rates, subsets and their list files."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from torch import nn
from torchvision import transforms as T

from barlowtwins.cli import main
from barlowtwins.config import SemiConfig
from barlowtwins.data import ImageSource, digits, in_memory, open_source, sample_index, select_samples
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.semi import finetune
from barlowtwins.evaluate.subsets import balanced_subset, match_ids, read_subset_file, write_subset_file
from barlowtwins.models.backbones import build_backbone


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STEP_FACTORS = [1.0] * 12 + [0.2] * 4 + [0.04] * 4  # B.2: x0.2 after the 12th and the 16th of 20 epochs


def test_finetune_moves_backbone_and_classifier_at_their_own_rates():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = [p.detach().clone() for p in backbone.parameters()]
    data = in_memory(digits("train").subset(range(40)), "digits")
    model, history = finetune(backbone, 8, 10, data, T.ToTensor(), SemiConfig(batch_size=16), seed=0)
    assert len(history) == 20
    assert [h["lr_backbone"] for h in history] == pytest.approx([0.002 * f for f in STEP_FACTORS])
    assert [h["lr_classifier"] for h in history] == pytest.approx([0.5 * f for f in STEP_FACTORS])
    assert not model.training
    assert all(not torch.equal(a, b) for a, b in zip(before, model[0].parameters(), strict=True))  # fine-tuned


def test_balanced_subset_keeps_the_class_proportions_and_is_reproducible():
    labels = np.asarray(digits("train").labels)
    subset = balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[subset], minlength=10)
    expected = [max(1, round(0.1 * n)) for n in np.bincount(labels)]
    assert counts.tolist() == expected
    assert np.array_equal(subset, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(subset, balanced_subset(labels, 0.1, seed=4))
    assert len(np.unique(subset)) == len(subset)
    assert balanced_subset(labels, 0.001, seed=0).size == 10  # at least one per class
    with pytest.raises(BarlowTwinsError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_subset_file_round_trip_and_simclr_style_file_names(tmp_path):
    ids = [f"/data/train/n0{c}/img_{i}.JPEG" for c in range(3) for i in range(4)]
    write_subset_file([ids[1], ids[6]], tmp_path / "subset.txt")
    assert (tmp_path / "subset.txt").read_text() == f"{ids[1]}\n{ids[6]}\n"
    assert match_ids(read_subset_file(tmp_path / "subset.txt"), ids, "x").tolist() == [1, 6]
    # SimCLR's lists name files, not paths.
    assert match_ids(["img_2.JPEG"], [i for i in ids if "n00" in i], "x").tolist() == [2]
    with pytest.raises(BarlowTwinsError, match="names 3 samples"):
        match_ids(["img_2.JPEG"], ids, "x")
    with pytest.raises(BarlowTwinsError, match="1 listed samples are not in the data: nope.JPEG"):
        match_ids(["nope.JPEG"], ids, "x")


def _write_shards(directory, per_shard: int, shards: int) -> list[str]:
    """Small WebDataset shards of real digits: KEY.png + KEY.cls, keys unique across shards."""
    import io

    data = digits("train")
    paths = []
    for s in range(shards):
        path = directory / f"digits-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                index = s * per_shard + i
                image, label, _ = data[index]
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                for extension, payload in (("png", buffer.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"sample{index:05d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(str(path))
    return paths


def test_sample_index_of_shards_matches_webdataset_and_subsets_select_by_key(tmp_path):
    shards = _write_shards(tmp_path, per_shard=30, shards=2)
    source = open_source(shards)
    ids, labels = sample_index(source)
    reference = [(s["__key__"], int(s["cls"])) for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)]
    assert list(zip(ids, labels.tolist(), strict=True)) == reference
    positions = balanced_subset(labels, 0.2, seed=0)
    chosen = select_samples(source, positions, "subset")
    assert isinstance(chosen, ImageSource) and chosen.samples is not None
    chosen_ids, chosen_labels = sample_index(chosen)
    assert chosen_ids == [ids[i] for i in positions]
    assert chosen_labels.tolist() == labels[positions].tolist()
    image, label, _ = chosen.samples[0]
    assert image.size == (8, 8) and label == labels[positions[0]]


@pytest.mark.slow
def test_cli_semi_draws_saves_and_reuses_the_same_subset(tmp_path):
    torch.manual_seed(0)
    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    common = ["semi", "--checkpoint", str(tmp_path / "w.pth"), "--arch", "resnet18", "--small-stem"]
    common += ["--train-data", "digits", "--test-data", "digits:test", "--image-size", "8", "--workers", "0"]
    common += ["--limit", "200", "--epochs", "1", "--no-random-init"]
    assert main([*common, "--fraction", "0.1", "--out", str(tmp_path / "a.json")]) == 0
    subset_file = tmp_path / "a-subset.txt"
    listed = read_subset_file(subset_file)
    labels = np.asarray(digits("train").labels)[:200]
    assert listed == [str(i) for i in balanced_subset(labels, 0.1, seed=0)]  # dataset positions as ids
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["subset"]["size"] == len(listed) and report["subset"]["file"] == str(subset_file)
    assert report["hyperparameters"]["milestones"] == [12, 16] and report["hyperparameters"]["weight_decay"] == 0
    assert set(report["results"]) == {"pretrained"}
    assert main([*common, "--subset", str(subset_file), "--out", str(tmp_path / "b.json")]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["subset"]["per_class"] == report["subset"]["per_class"]
    assert again["results"]["pretrained"]["top1"] == report["results"]["pretrained"]["top1"]  # same subset, seed
