"""The whole user path on a few hundred real CIFAR-10 images from the shards:
pretrain a few steps, resume, kNN, export, reload the backbone into torchvision."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from barlowtwins.checkpoint import load_backbone, load_checkpoint
from barlowtwins.cli import main
from barlowtwins.models.backbones import apply_small_stem

pytestmark = [pytest.mark.slow, pytest.mark.cifar]


def test_cifar_pretrain_resume_knn_export_reload(cifar_dir, tmp_path, capsys):
    train = str(cifar_dir / "cifar10-train-{000000..000009}.tar")
    test = str(cifar_dir / "cifar10-test-{000000..000001}.tar")
    out = tmp_path / "c10"
    pretrain = (
        f"pretrain --data {train} --eval-data {test} --recipe cifar10 --limit 64 --eval-limit 40 --batch-size 32 "
        f"--projector 256-256-256 --out {out} --set train.log_every=1 --set knn.k=[50,20]"
    ).split()
    assert main([*pretrain, "--epochs", "1"]) == 0
    assert load_checkpoint(out)["step"] == 2
    capsys.readouterr()
    assert main([*pretrain, "--epochs", "2"]) == 0
    assert f"resuming {out} from epoch 1, step 2" in capsys.readouterr().out
    assert load_checkpoint(out)["step"] == 4
    report = json.loads((out / "eval" / "knn.json").read_text())
    assert report["test_data"].startswith("first 40 samples") and report["train_data"].startswith("first 64")
    assert report["results"]["random_init"]["top1"]["50"] > 10.0  # ten classes: chance is 10%

    knn = f"knn --checkpoint {out} --train-data {train} --test-data {test} --limit 64 --test-limit 40 --k 20"
    knn = [*knn.split(), "--out", f"{out}/k.json"]
    assert main(knn) == 0
    assert "kNN top-1 (k=20" in capsys.readouterr().out
    knn_eval = json.loads((out / "k.json").read_text())
    assert knn_eval["hyperparameters"]["image_size"] == 32  # taken from the checkpoint's pretraining config
    for backbone in ("pretrained", "random_init"):  # same bank, queries, weights and initial weights
        ours, theirs = knn_eval["results"][backbone]["top1"]["20"], report["results"][backbone]["top1"]["20"]
        assert ours == pytest.approx(theirs, abs=0.01)

    exported = tmp_path / "resnet18.pth"
    assert main(["export", "--checkpoint", str(out), "--out", str(exported)]) == 0
    state_dict = torch.load(exported, weights_only=True)
    model = torchvision.models.resnet18()
    apply_small_stem(model)
    result = model.load_state_dict(state_dict, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    assert json.loads(exported.with_suffix(".json").read_text())["arch"] == "resnet18"

    ours, _, _ = load_backbone(out)
    model.fc = torch.nn.Identity()
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model.eval()(images), ours.eval()(images))
