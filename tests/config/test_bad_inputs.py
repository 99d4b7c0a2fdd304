"""A corpus of bad inputs: each gets one line naming the problem (no traceback), exit status 2, and leaves
what was on disk as it was."""

from __future__ import annotations

import io
import json
import pathlib
import re
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
        (["--projector", "0-8"], "projector spec '0-8' must be positive layer widths joined by '-'"),
        (["--projector", "abc"], "projector spec 'abc' must be positive layer widths joined by '-'"),
        (["--set", "model.predictor=x-y"], "projector spec 'x-y' must be positive layer widths"),
        (["--set", "optim.final_lr_ratio=2"], "optim.final_lr_ratio must be in [0, 1] (got 2.0)"),
        (["--set", "optim.warmup_epochs=-1"], "optim.warmup_epochs must be >= 0 (got -1.0)"),
        (["--set", "train.precision=fp8"], "train.precision must be one of auto, bf16, fp16, fp32 (got 'fp8')"),
        (["--set", "data.views=wrong"], "data.views must be one of batched, pil"),
        (["--set", "data.cache=ram"], "data.cache one of auto, memory, disk, off (got 'batched', 'ram')"),
        (["--set", "optim.optimizer=adam"], "optim.optimizer must be one of lars, sgd, adamw (got 'adam')"),
        (["--set", "loss.formulation=fast"], "loss.formulation must be one of auto, cross, gram (got 'fast')"),
        (["--set", "loss.objective=x"], "loss.objective must be one of barlow_twins, "),
        (["--set", "loss.objective=cross_entropy", "--set", "loss.formulation=gram"], "needs each C_ij"),
        (["--set", "loss.temperature=0"], "loss.temperature must be positive (got 0.0)"),
        (["--set", "model.momentum=2"], "model.momentum must be in [0, 1] (got 2.0)"),
        (["--set", "augment.flip_p=2"], "augmentation probabilities must lie in [0, 1]"),
        (["--set", "augment.solarize_p=[0,1.5]"], "augmentation probabilities must lie in [0, 1]"),
        (["--set", "augment.blur_sigma=[0,1]"], "augment.blur_sigma must be > 0 (got (0.0, 1.0))"),
        (["--set", "augment.std=[0,1,1]"], "augment.std must be > 0 (got (0.0, 1.0, 1.0))"),
        (["--set", "knn.k=[]"], "knn.k must be positive integers (got ())"),
        (["--set", "train.time_budget=abc"], "time budget 'abc' must be a positive duration such as 90s, 20m"),
        (["--set", "train.checkpoint_every=-1"], "train.checkpoint_every must be >= 0 (0: once per epoch) (got -1)"),
        (["--set", "data.workers=-2"], "data.workers must be >= -1 (-1: one per usable CPU) (got -2)"),
        (["--set", "data.shuffle_buffer=0"], "data.shuffle_buffer must be >= 1 (got 0)"),
        (["--set", "monitor.picture_every=-5"], "monitor.picture_every must be -1 (auto), 0 (off) or positive"),
        (["--set", "monitor.knn_bank_limit=0"], "the monitor's limits and block at least 1"),
        (["--set", "augment.stored_size=-1"], "unknown config key(s) in 'augment': augment.stored_size; valid keys"),
        (["--projector", "100000000-100000000"], "projector 100000000-100000000 needs ~120 PB for its weights, "),
        (["--projector", "3000000-3000000"], "use a narrower projector (the paper's is 8192-8192-8192)"),
        (["--image-size", "100000"], "image size 100000 needs ~5.2 TB of activations per view (~21 TB for "),
        (["--image-size", "300000"], "use a smaller --image-size (the paper's is 224)"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
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
    ids=lambda value: f"{value[0]} {value[-2]} {value[-1]}" if isinstance(value, list) else None,
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
    ids=["zero-byte png", "truncated png", "text as png", "noise as jpg"],
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
    line = error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(run))
    assert f"no readable checkpoint in {run} (checkpoint.pt holds Python objects beside tensors (e.g. " in line
    assert f"move {run / 'checkpoint.pt'} away" in line
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


def test_an_absurd_image_size_is_refused_before_the_cache_is_touched(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BARLOWTWINS_CACHE", str(cache))
    out = tmp_path / "run"
    line = error_line(capsys, *PRETRAIN, "--data", "digits", "--out", str(out), "--image-size", "100000")
    assert "image size 100000 needs ~5.2 TB of activations per view" in line and "available" in line
    assert not cache.exists() and not out.exists()  # refused up front: no lock file, no run directory


@pytest.mark.parametrize("recipe", ["demo", "cifar10", "cifar10-cpu", "cifar10-vit", "imagenet", "photos-cpu"])
def test_the_memory_estimate_never_refuses_a_shipped_recipe_on_a_4_gb_machine(recipe):
    from barlowtwins.recipes import make_config
    from barlowtwins.validation import check_memory, projector_bytes

    config = make_config(recipe)
    check_memory(config, available=4 * 10**9)
    if recipe == "imagenet":  # the paper's 8192-8192-8192 on ResNet-50 with LARS: 151 M parameters x 12 bytes
        assert projector_bytes(2048, [8192, 8192, 8192], "lars") == 12 * (2048 * 8192 + 2 * 8192 * 8192 + 3 * 8192)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # (2048·16384 + 2·16384²) weights + 3·16384 biases, × 4 bytes × (weight, gradient, momentum) = 6.85 GB
        ({"model": {"projector": "16384-16384-16384"}}, "projector 16384-16384-16384 needs ~6.8 GB"),
        # 151 M parameters × 4 bytes × (weight, gradient, two Adam moments) = 2.42 GB
        ({"model": {"projector": "8192-8192-8192"}, "optim": {"optimizer": "adamw"}}, "needs ~2.4 GB"),
        # 4 bytes × (3·2000² input + 2·64·1000² stem conv and batch-norm outputs) = 0.56 GB
        ({"augment": {"image_size": 2000}}, "image size 2000 needs ~0.56 GB of activations per view"),
    ],
    ids=["wide projector", "adamw's second moment", "large images"],
)
def test_the_memory_estimate_refuses_beyond_twice_the_available_memory(settings, message):
    from barlowtwins.errors import BarlowTwinsError
    from barlowtwins.recipes import make_config
    from barlowtwins.validation import check_memory

    config = make_config("imagenet", [settings])
    with pytest.raises(BarlowTwinsError, match=rf"{re.escape(message)}.*this machine has 1 GB available"):
        check_memory(config, available=10**9)
    check_memory(config, available=10**11)  # the same settings with 100 GB: accepted
