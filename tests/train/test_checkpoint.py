"""Atomic writes, weights_only loading, export into torchvision, and foreign state_dict errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

from barlowtwins import BarlowTwinsError, load_backbone
from barlowtwins.atomic import atomic_save
from barlowtwins.checkpoint import load_weights_into
from barlowtwins.models.backbones import build_backbone


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def failing_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left behind


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from barlowtwins.atomic import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "config.yaml")
        atomic_save({"a": 1}, tmp_path / "checkpoint.pt")
    finally:
        os.umask(previous)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644


def test_plain_torchvision_state_dict_loads_and_mismatches_are_listed(tmp_path):
    supervised = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(supervised.state_dict(), path)
    backbone, dim, info = load_backbone(path, arch="resnet18")
    assert dim == 512 and info["arch"] == "resnet18"
    torch.testing.assert_close(backbone.conv1.weight, supervised.conv1.weight)

    with pytest.raises(BarlowTwinsError, match=r"missing: layer1\.0\.bn3.*wrong shape: layer1\.0\.conv1\.weight"):
        load_backbone(path, arch="resnet50")
    bigger = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), bigger)
    with pytest.raises(BarlowTwinsError, match=r"unexpected: layer1\.2\.bn1\.bias"):
        load_backbone(bigger, arch="resnet18")
    with pytest.raises(BarlowTwinsError, match=r"wrong shape: conv1\.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"):
        load_backbone(path, arch="resnet18", small_stem=True)
    with pytest.raises(BarlowTwinsError, match="--arch"):
        load_backbone(path)


def test_dataparallel_prefixes_are_accepted():
    reference, _, _ = build_backbone("resnet18")
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    target, _, _ = build_backbone("resnet18")
    load_weights_into(target, state, "test")
    torch.testing.assert_close(target.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
