"""End-to-end pretraining on the built-in digits: run directory, resume, and the user-facing errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from barlowtwins.checkpoint import load_checkpoint
from barlowtwins.cli import main

TINY = [
    "--data",
    "digits",
    "--recipe",
    "demo",
    "--limit",
    "96",
    "--batch-size",
    "32",
    "--projector",
    "32-32",
    "--workers",
    "0",
    "--set",
    "train.log_every=1",
    "--precision",
    "fp32",  # "auto" measures bf16 against fp32, which a loaded machine can decide differently run to run
]


@pytest.mark.slow
def test_pretrain_writes_a_traceable_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "config.yaml", "meta.json", "metrics.jsonl", "loss.png", "tensorboard"} <= names
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["projector"] == "32-32"
    assert json.loads((out / "meta.json").read_text())["torch"] == torch.__version__
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    first = records[0]
    assert first["loss"] == pytest.approx(first["invariance"] + first["redundancy"], rel=1e-5)
    assert first["lr_weights"] == 0.0  # the warm-up starts at 0 (paper §2.2)
    assert {"on_diag_mean", "off_diag_rms", "off_diag_abs_mean", "images_per_s", "epoch"} <= set(first)
    state = load_checkpoint(out)  # weights_only=True inside
    assert (state["epoch"], state["step"]) == (1, 3)

    assert main(["pretrain", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    state = load_checkpoint(out)
    assert (state["epoch"], state["step"]) == (2, 6)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_message_names_epoch_and_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["pretrain", *TINY, "--epochs", "2", "--out", str(out)]) == 0  # the same epochs: finished, no resume
    assert f"resuming {out} from epoch 1, step 3" in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    args = [*TINY, "--epochs", "2", "--set", "train.checkpoint_every=2"]
    assert main(["pretrain", *args, "--out", str(straight)]) == 0

    from barlowtwins.train import loop as train

    real_lr_factor = train.lr_factor

    def crash_at_step_4(step, *rest):
        if step == 4:  # mid-epoch: steps 0-3 are done, the checkpoint of step 4 is on disk
            raise KeyboardInterrupt
        return real_lr_factor(step, *rest)

    monkeypatch.setattr(train, "lr_factor", crash_at_step_4)
    assert main(["pretrain", *args, "--out", str(interrupted)]) == 130
    assert load_checkpoint(interrupted)["step"] == 4
    monkeypatch.setattr(train, "lr_factor", real_lr_factor)
    assert main(["pretrain", *args, "--out", str(interrupted)]) == 0

    a, b = load_checkpoint(straight), load_checkpoint(interrupted)
    assert b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def run_error(capsys, *args) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last_line = err.splitlines()[-1]  # a failure mid-run may follow the progress bar's last state
    assert last_line.startswith("barlowtwins: error: ")
    return last_line


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert "no such file or directory: /nope" in run_error(
        capsys, "pretrain", "--data", "/nope", "--out", str(tmp_path)
    )
    assert "larger than the dataset (96 samples)" in run_error(
        capsys, "pretrain", *TINY, "--batch-size", "128", "--out", str(tmp_path / "big")
    )
    assert "unknown config key" in run_error(capsys, "pretrain", *TINY, "--set", "optim.lrr=1")
    assert "no training data" in run_error(capsys, "pretrain", "--recipe", "cifar10", "--out", str(tmp_path))

    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    err = run_error(capsys, "pretrain", *TINY, "--epochs", "1", "--out", str(out), "--lambd", "0.1")
    assert "different configuration (loss.lambd: 0.0051 -> 0.1)" in err
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    for i in range(3):
        (broken / "a" / f"ok{i}.jpg").write_bytes((tmp_path / "run" / "loss.png").read_bytes())
    err = run_error(
        capsys,
        "pretrain",
        *TINY[:0],
        "--data",
        str(broken),
        "--recipe",
        "demo",
        "--batch-size",
        "2",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "b"),
        "--projector",
        "8-8",
        "--epochs",
        "1",
    )
    assert "cannot read image" in err and "x.jpg" in err


@pytest.mark.slow
def test_demo_config_reports_knn_for_both_backbones(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            ["pretrain", *TINY, "--eval-data", "digits:test", "--eval-limit", "60", "--epochs", "1", "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "eval" / "knn.json").read_text())
    assert set(report["results"]) == {"pretrained", "random_init"}
    assert set(report["results"]["pretrained"]["top1"]) == {"20", "200"}
    assert all(0 <= v <= 100 for r in report["results"].values() for v in r["top1"].values())
    assert report["weights"]["random_init"]["seed"] == 0 and report["hyperparameters"]["image_size"] == 8


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path, capsys):
    """precision auto is measured once per run: the checkpoint records the choice and a resume reuses it (a loaded
    machine could otherwise measure differently and resume in another precision, no longer bit for bit)."""
    auto = [*(arg for arg in TINY if arg not in ("--precision", "fp32")), "--limit", "64"]  # 2 steps an epoch
    out = tmp_path / "run"
    assert main(["pretrain", *auto, "--epochs", "1", "--out", str(out)]) == 0
    first = load_checkpoint(out)["precision"]
    assert first in ("fp32", "bf16") and "precision auto: measured" in capsys.readouterr().out
    other = "bf16" if first == "fp32" else "fp32"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["precision"] = other  # as if the first run had measured the other way
    torch.save(state, out / "checkpoint.pt")
    assert main(["pretrain", *auto, "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision auto: measured" not in printed and f", {'bfloat16' if other == 'bf16' else 'fp32'}, " in printed
    assert load_checkpoint(out)["precision"] == other
