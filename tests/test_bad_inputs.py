"""A corpus of bad inputs: each gets one line naming the problem (no traceback), exit status 2, and leaves
what was on disk as it was."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from barlowtwins.checkpoint import FORMAT
from barlowtwins.cli import main

PRETRAIN = [
    "pretrain",
    "--recipe",
    "demo",
    "--projector",
    "8-8",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--workers",
    "0",
]
DIGITS = ["--train-data", "digits", "--test-data", "digits:test", "--small-stem", "--workers", "0"]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(capsys, *argv: str) -> str:
    """Run the command; it must fail with status 2 and one ``barlowtwins: error:`` line, no traceback."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("barlowtwins: error: ")
    return line


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, samples: int) -> bytes:
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            for name, data in ((f"{i:06d}.png", png_bytes(i)), (f"{i:06d}.cls", str(i % 3).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A plain torchvision resnet18 state_dict (small stem shapes come from --small-stem: conv1 differs)."""
    from barlowtwins.models.backbones import build_backbone

    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(backbone.state_dict(), path)
    return path


@pytest.fixture
def existing_run(tmp_path) -> Path:
    """A directory holding files a failed command must not touch."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    return out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "optim.lr_weights must be >= 0 (got -1.0)"),
        (["--set", "optim.lr_biases=-0.5"], "optim.lr_biases must be >= 0"),
        (["--set", "optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0"),
        (["--set", "optim.momentum=1"], "optim.momentum must be in [0, 1) (got 1.0)"),
        (["--set", "optim.lars_eta=-1"], "optim.lars_eta must be >= 0"),
        (["--lambd", "-0.1"], "loss.lambd must be >= 0"),
        (["--limit", "-5"], "data.limit must be >= 0 (0: all)"),
        (["--set", "train.log_every=0"], "train.log_every must be >= 1"),
        (["--set", "knn.temperature=0"], "knn.temperature must be > 0"),
        (["--image-size", "0"], "augment.image_size must be at least 8 pixels"),
        (["--batch-size", "0"], "train.batch_size must be at least 2"),
        (["--epochs", "-1"], "train.epochs must be at least 1"),
        (["--set", "augment.crop_scale=[0.5,0.2]"], "augment.crop_scale must satisfy 0 < low <= high <= 1"),
        (["--set", "augment.small_crop_scale=[0,0.4]"], "augment.small_crop_scale must satisfy 0 < low <= high"),
        (["--lambd", "inf"], "loss.lambd must be a finite number (got inf)"),
        (["--lr", "inf"], "optim.lr_weights must be a finite number (got inf)"),
        (["--set", "optim.warmup_epochs=.nan"], "optim.warmup_epochs must be a finite number"),
        (["--device", "banana"], "device 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
        (["--set", "data.crops=fast"], "data.crops must be one of auto, sample, batch"),
        (["--set", "model.arch=[a"], "the value is not valid YAML"),
    ],
)
def test_out_of_range_pretrain_settings(existing_run, capsys, argv, message):
    before = snapshot(existing_run)
    assert message in error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(existing_run), *argv)
    assert snapshot(existing_run) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["knn", *DIGITS, "--k", "0"], "--k must be >= 1 (got (0,))"),
        (["knn", *DIGITS, "--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
        (["knn", *DIGITS, "--image-size", "0"], "--image-size must be >= 1 (got 0)"),
        (["knn", *DIGITS, "--temperature", "-1"], "--temperature must be > 0"),
        (["knn", *DIGITS, "--limit", "-1"], "--limit must be >= 0"),
        (["linear", *DIGITS, "--epochs", "0"], "--epochs must be >= 1"),
        (["linear", *DIGITS, "--lr", "-0.3"], "--lr must be >= 0"),
        (["semi", *DIGITS, "--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["transfer", *DIGITS, "--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["embed", "--data", "digits", "--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_out_of_range_evaluation_flags(weights, existing_run, capsys, argv, message):
    before = snapshot(existing_run)
    line = error_line(capsys, *argv, "--checkpoint", str(weights), "--arch", "resnet18", "--out", str(existing_run))
    assert message in line
    assert snapshot(existing_run) == before


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("zero.png", b""),
        ("truncated.png", png_bytes(7)[:30]),
        ("notes.png", b"this is text, not an image\n"),
        ("noise.jpg", bytes(range(256)) * 4),
    ],
)
def test_unreadable_images_name_the_file(tmp_path, capsys, name, data):
    folder = tmp_path / "images" / "class_a"
    folder.mkdir(parents=True)
    for i in range(6):
        (folder / f"ok{i}.png").write_bytes(png_bytes(10 * i))
    (folder / name).write_bytes(data)
    line = error_line(capsys, *PRETRAIN, "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"))
    assert name in line and ("cannot read image" in line or "cannot decode image" in line)


def test_truncated_shard_stops_pretrain_and_knn_with_its_name(tmp_path, weights, capsys):
    whole = write_shard(tmp_path / "whole.tar", 20)
    for cut, name in ((len(whole) // 2, "half.tar"), (3 * 512 + 100, "header.tar"), (4 * 512, "boundary.tar")):
        shard = tmp_path / name
        shard.write_bytes(whole[:cut])
        line = error_line(capsys, *PRETRAIN, "--data", str(shard), "--out", str(tmp_path / "run"))
        assert f"shard {shard}" in line and ("truncated" in line or "complete tar" in line)
        argv = ["knn", "--checkpoint", str(weights), "--arch", "resnet18", "--small-stem", "--workers", "0"]
        line = error_line(capsys, *argv, "--train-data", str(shard), "--test-data", str(tmp_path / "whole.tar"))
        assert f"shard {shard}" in line


def test_bad_brace_patterns_in_pretrain_and_embed(tmp_path, weights, capsys):
    pattern = str(tmp_path / "train-{000000..000003.tar")
    line = error_line(capsys, *PRETRAIN, "--data", pattern, "--out", str(tmp_path / "run"))
    assert f"shard pattern {pattern}" in line and "{000000..000009}" in line
    argv = [
        "embed",
        "--checkpoint",
        str(weights),
        "--arch",
        "resnet18",
        "--small-stem",
        "--data",
        pattern,
        "--out",
        str(tmp_path / "e"),
    ]
    assert f"shard pattern {pattern}" in error_line(capsys, *argv)


class RunsCode:
    """A pickle whose loading would create a file: ``weights_only`` loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_foreign_and_malicious_pickles_are_refused(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil, foreign = tmp_path / "evil.pt", tmp_path / "foreign.pt"
    torch.save({"state_dict": RunsCode(marker)}, evil)
    torch.save({"weights": pathlib.PurePosixPath("x")}, foreign)
    for path in (evil, foreign):
        argv = ["knn", "--checkpoint", str(path), "--arch", "resnet18", *DIGITS[:4]]
        assert f"cannot load {path} (UnpicklingError" in error_line(capsys, *argv)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(evil.read_bytes())
    assert "cannot load" in error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(run))
    assert not marker.exists()
    assert (run / "checkpoint.pt").read_bytes() == evil.read_bytes()


def test_unwritable_outputs(tmp_path, weights, monkeypatch, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    line = error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(a_file))
    assert f"cannot write the run directory {a_file} (File exists); pass another --out" in line
    argv = [
        "embed",
        "--checkpoint",
        str(weights),
        "--arch",
        "resnet18",
        "--small-stem",
        "--data",
        "digits",
        "--out",
        str(a_file),
    ]
    assert f"cannot write results to {a_file} (File exists)" in error_line(capsys, *argv)
    assert a_file.read_text() == "keep me\n"

    argv = ["knn", "--checkpoint", str(weights), "--arch", "resnet18", *DIGITS, "--out", str(tmp_path)]
    assert f"--out {tmp_path} is a directory; pass a file name such as" in error_line(capsys, *argv)

    read_only = tmp_path / "read-only"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == read_only:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    line = error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(read_only))
    assert f"cannot write the run directory {read_only} (Permission denied)" in line


def test_export_refuses_a_directory_and_a_config_naming_another_architecture(tmp_path, capsys):
    state = {f"backbone.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if "fc." not in k}
    config = {"model": {"arch": "resnet50", "small_stem": False}}
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "model": state, "config": config, "epoch": 1, "step": 3}, checkpoint)
    directory = tmp_path / "exports"
    directory.mkdir()
    line = error_line(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(directory))
    assert f"--out {directory} is a directory" in line
    out = tmp_path / "backbone.pth"
    line = error_line(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(out))
    assert "(its config names resnet50) do not fit the architecture" in line
    assert not out.exists() and not out.with_suffix(".json").exists() and not list(directory.iterdir())


def test_knn_k_larger_than_the_bank_is_clipped_and_reported(tmp_path, weights, capsys):
    out = tmp_path / "knn.json"
    argv = ["knn", "--checkpoint", str(weights), "--arch", "resnet18", *DIGITS, "--limit", "12", "--no-random-init"]
    assert main([*argv, "--k", "50", "5", "--image-size", "8", "--out", str(out)]) == 0
    assert "k=50 is larger than the bank (12 samples)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["k_clipped_to_bank"] == {"50": 12}
    assert set(report["results"]["pretrained"]["top1"]) == {"50", "5"}


def test_malformed_yaml_recipe_is_named_with_its_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  arch: resnet18\ntrain:\n  epochs: [1\n")
    line = error_line(capsys, "pretrain", "--recipe", str(recipe), "--data", "digits", "--out", str(tmp_path / "o"))
    assert f"recipe {recipe} is not valid YAML at line 5" in line and not (tmp_path / "o").exists()


def test_a_wrong_eval_data_fails_before_the_run_directory_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    line = error_line(capsys, *PRETRAIN, "--data", "digits", "--eval-data", "none", "--out", str(out))
    assert "--eval-data: no such file or directory: none" in line and not out.exists()


def test_an_architecture_that_contradicts_the_weights_is_refused(tmp_path, capsys):
    """``--arch`` / ``--small-stem`` for weights that record other values: an error naming both, not ignored."""
    run = tmp_path / "run"
    assert main([*PRETRAIN, "--data", "digits", "--limit", "16", "--out", str(run), "--set", "data.eval=[]"]) == 0
    knn = ["knn", "--checkpoint", str(run), "--train-data", "digits", "--test-data", "digits:test", "--limit", "64"]
    line = error_line(capsys, *knn, "--arch", "resnet50")
    assert "arch 'resnet50' contradicts" in line and "arch 'resnet18'" in line
    line = error_line(capsys, *knn, "--no-small-stem")
    assert "small_stem False contradicts" in line and "small_stem True" in line
