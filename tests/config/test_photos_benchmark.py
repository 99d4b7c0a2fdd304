"""benchmarks/photos.py and its lightly arm: the lightly arm's optimiser is solo-learn's Barlow Twins setting (and
its LARS is lightly's plus solo-learn's clip), and the report's table is built from the rows' results; and
benchmarks/photos_init.py's steps and table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# vturrisi/solo-learn scripts/pretrain/cifar/barlow.yaml and imagenet-100/barlow.yaml (the same optimiser), with
# the code defaults they rely on: solo/args/pretrain.py (momentum 0.9, lr x batch/256), solo/methods/base.py
# (warmup_cosine: warmup_epochs 10, warmup_start_lr 3e-5, min_lr 0).
SOLO_LEARN = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-4, "eta": 0.02, "clip_lr": True}
SOLO_LEARN |= {"exclude_bias_n_norm": True, "warmup_epochs": 10, "warmup_start_lr": 3e-5, "min_lr": 0.0}
SOLO_LEARN |= {"scale_loss": 0.1}


def test_lightly_arm_uses_solo_learns_barlow_twins_settings():
    arm = _load("photos_lightly")
    assert {**arm.SOLO_LARS, **arm.SOLO_SCHEDULE} == SOLO_LEARN
    assert arm.LIGHTLY_SGD == {"lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4}  # lightly's Imagenette benchmark
    assert arm.lr_at(0, 100, 10, 0.15, 3e-5, 0.0) == pytest.approx(3e-5)
    assert arm.lr_at(10, 100, 10, 0.15, 3e-5, 0.0) == pytest.approx(0.15)
    assert arm.lr_at(100, 100, 10, 0.15, 3e-5, 0.0) == pytest.approx(0.0)


def test_solo_learn_lars_is_lightlys_lars_plus_the_clip():
    """Without clip_lr, solo-learn's step equals lightly's LARS with biases and norms in a group without decay."""
    lars = pytest.importorskip("lightly.utils.lars", reason="lightly not installed (pip install -e '.[bench]')")
    arm = _load("photos_lightly")
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    settings = dict(lr=0.5, momentum=0.9, weight_decay=1e-2)
    solo = arm.SoloLARS(nets[0].parameters(), **settings, eta=0.02, exclude_bias_n_norm=True)
    matrices = [p for p in nets[1].parameters() if p.ndim > 1]
    vectors = [p for p in nets[1].parameters() if p.ndim == 1]
    groups = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}]
    theirs = lars.LARS(groups, **settings, trust_coefficient=0.02)
    x = torch.randn(16, 6)
    for _ in range(3):
        for net, optimizer in zip(nets, (solo, theirs), strict=True):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    for mine, other in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(mine, other)


def test_report_table_from_rows(tmp_path, monkeypatch):
    photos = _load("photos")
    monkeypatch.setattr(photos, "machine", lambda: "a test machine")
    row = {"row": "ours", "arm": "ours", "seed": 0, "minutes": 20.0, "train_minutes": 20.0, "steps": 500}
    row |= {"images_per_s": 53.3, "knn20": 61.25, "knn200": 58.0, "floor20": 30.0, "floor200": 28.5}
    row |= {"linear": 64.0, "linear_floor": 33.0, "precision": "bfloat16", "command": "barlowtwins pretrain"}
    failed = {"row": "lightly", "arm": "lightly", "seed": 0, "minutes": 20.0, "error": "boom", "command": "python"}
    photos.write_report([row, failed], tmp_path, "Imagenette", "fast")
    report = (tmp_path / "report.md").read_text()
    assert "| ours | 0 | 20 | 20.0 | 500 | 53 | 61.2 (30.0) | 58.0 (28.5) | 64.0 (33.0) | bfloat16 |" in report
    assert "| lightly | 0 | 20 | failed: boom |" in report
    assert json.loads((tmp_path / "report.json").read_text())[0]["knn20"] == 61.25
    assert (tmp_path / "report.png").is_file()


def test_init_study_runs_its_steps_in_order_and_tables_the_three_arms(tmp_path, monkeypatch):
    """benchmarks/photos_init.py: CIFAR's run, its backbone scored on the photos, the continued run from that very
    directory, and scratch for the sum of the minutes; each step skipped once its output exists; one table row per
    arm from the runs' own kNN and timing files, and the line --init logged."""
    _load("photos")
    study = _load("photos_init")
    monkeypatch.setattr(study, "machine", lambda: "a test machine")
    monkeypatch.setattr(sys, "argv", ["photos_init.py", "--out", str(tmp_path)])
    args = SimpleNamespace(cifar="c10", train="tr", val="va", cifar_minutes=20.0, continue_minutes=10.0, seed=0)
    plan = study.steps(args, tmp_path)
    assert [arm for arm, _, _ in plan] == ["CIFAR alone"] * 4 + ["CIFAR, continued", "scratch"]
    assert plan[0][1][plan[0][1].index("--data") + 1] == "c10/cifar10-train-{000000..000009}.tar"
    continued, scratch, scored = plan[4][1], plan[5][1], plan[3][1]
    assert scored[scored.index("--checkpoint") + 1] == str(plan[2][2]) and "--image-size" in scored
    assert continued[continued.index("--init") + 1] == str(tmp_path / "cifar") == plan[1][1][3]
    assert continued[continued.index("--time-budget") + 1] == "10m"
    assert scratch[scratch.index("--time-budget") + 1] == "30m"

    def knn(path: Path, ours: float, floor: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pretrained, random_init = {"20": ours, "200": ours - 1}, {"20": floor, "200": 30}
        results = {"pretrained": {"top1": pretrained}, "random_init": {"top1": random_init}}
        path.write_text(json.dumps({"results": results}))

    for name, steps in (("cifar", 3000), ("continued", 400), ("scratch", 1300)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "timing.json").write_text(json.dumps({"steps": steps}))
    knn(tmp_path / "cifar-on-imagenette.json", 40.0, 35.0)
    for exported in ("cifar-backbone.pth", "cifar-backbone-plain.pth"):
        (tmp_path / exported).write_bytes(b"")
    knn(tmp_path / "continued" / "eval" / "knn.json", 60.5, 35.0)
    knn(tmp_path / "scratch" / "eval" / "knn.json", 64.0, 35.0)
    (tmp_path / "stdout.txt").write_text("--init x (checkpoint.pt, sha256 ab): backbone 120/120 tensors taken\n")
    calls = []
    monkeypatch.setattr(study, "execute", lambda *a, **k: calls.append(a))
    for arm, command, done in plan:
        study.run(arm, command, done, tmp_path / "stdout.txt")
    assert calls == []  # every output exists: nothing runs again
    study.report(args, tmp_path, plan)
    report = (tmp_path / "report.md").read_text()
    assert "| CIFAR alone | 20 on CIFAR-10 | 3000 | 40.0 (35.0) | 39.0 (30.0) |" in report
    assert "| CIFAR, continued | 20 + 10 on Imagenette | 400 | 60.5 (35.0) | 59.5 (30.0) |" in report
    assert "| scratch | 30 on Imagenette | 1300 | 64.0 (35.0) | 63.0 (30.0) |" in report
    assert "backbone 120/120 tensors taken" in report
