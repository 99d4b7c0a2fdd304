"""A corrupt latest checkpoint is survivable: runs keep the previous one beside it (rotated atomically), a resume
says which file it skipped and why and goes on from the other, and with none readable names the files to move."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from barlowtwins import atomic
from barlowtwins.atomic import rotate_save, rotation_temporary
from barlowtwins.checkpoint import (
    FORMAT,
    TRAINING,
    finish_rotation,
    load_checkpoint,
    load_file,
    previous_path,
    read_checkpoint,
    resume_state,
)
from barlowtwins.cli import main
from barlowtwins.errors import BarlowTwinsError

# 4 steps per epoch, 8 steps, a checkpoint every 2 steps: the finished run holds step 8 and, as previous, step 6.
RUN = [
    "pretrain",
    "--recipe",
    "demo",
    "--data",
    "digits",
    "--limit",
    "64",
    "--batch-size",
    "16",
    "--arch",
    "timm:test_resnet",
    "--projector",
    "32-32",
    "--workers",
    "0",
    "--precision",
    "fp32",
    "--epochs",
    "2",
    "--set",
    "data.eval=[]",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "monitor.picture_every=0",
]


def state(step: int = 3, **model: torch.Tensor) -> dict:
    """A small checkpoint of the training format."""
    weights = model or {"w": torch.arange(6.0)}
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(6)}}, "param_groups": [{"params": [0]}]}
    return {"format": FORMAT, "model": weights, "optimizer": optimizer, "step": step, "config": {}}


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


CORRUPTIONS = {
    "truncated": (_truncated, "truncated or corrupt"),
    "zero-byte": (lambda data: b"", "empty, 0 bytes"),
    "random-byte": (lambda data: os.urandom(len(data)), "truncated or corrupt"),
    "last-bytes-cut": (lambda data: data[:-10], "truncated or corrupt"),
    "bytes-flipped": (_flipped, "checksum of its entry"),
    "text": (lambda data: b"checkpoint\n", "truncated or corrupt"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_damaged_file_is_named_with_why(tmp_path, name):
    path = tmp_path / "checkpoint.pt"
    torch.save(state(w=torch.arange(50_000.0)), path)  # mostly tensor data, as a real checkpoint
    damage, why = CORRUPTIONS[name]
    path.write_bytes(damage(path.read_bytes()))
    loaded, problem = read_checkpoint(path, FORMAT, TRAINING)
    assert loaded is None and why in problem


BAD_CONTENT = {
    "plain-state-dict": ({"w": torch.ones(2)}, "is not a training checkpoint made by 'barlowtwins pretrain'"),
    "other-format": ({**state(), "format": "barlowtwins-detection/1"}, "is not a training checkpoint"),
    "no-optimizer": ({k: v for k, v in state().items() if k != "optimizer"}, "lacks optimizer"),
    "no-step": ({k: v for k, v in state().items() if k != "step"}, "lacks step"),
    "model-not-a-dict": ({**state(), "model": [torch.ones(2)]}, "lacks the model and optimizer state_dicts"),
    "a-list": ([torch.ones(2)], "is not a training checkpoint"),
    "nan-weight": (state(w=torch.tensor([1.0, float("nan")])), "non-finite values (in w)"),
    "inf-weight": (state(w=torch.tensor([float("inf")])), "non-finite values (in w)"),
    "inf-momentum": (
        {**state(), "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([float("-inf")])}}}},
        "non-finite values (in optimizer state 0 momentum_buffer)",
    ),
}


@pytest.mark.parametrize("name", BAD_CONTENT)
def test_a_readable_file_of_the_wrong_content_is_named_with_why(tmp_path, name):
    content, why = BAD_CONTENT[name]
    torch.save(content, tmp_path / "checkpoint.pt")
    loaded, problem = read_checkpoint(tmp_path / "checkpoint.pt", FORMAT, TRAINING)
    assert loaded is None and why in problem


def test_integer_tensors_and_a_whole_checkpoint_are_read(tmp_path):
    torch.save(state(w=torch.arange(4), b=torch.zeros(2)), tmp_path / "checkpoint.pt")
    loaded, problem = read_checkpoint(tmp_path / "checkpoint.pt", FORMAT, TRAINING)
    assert problem is None and torch.equal(loaded["model"]["w"], torch.arange(4))


def test_rotation_keeps_the_replaced_checkpoint_and_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    rotate_save(state(1), path, previous_path(path))
    rotate_save(state(2), path, previous_path(path))
    assert previous_path(path).name == "checkpoint.prev.pt"
    assert torch.load(path)["step"] == 2 and torch.load(previous_path(path))["step"] == 1

    def full_disk(obj, handle):
        handle.write(b"part")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        rotate_save(state(3), path, previous_path(path))
    monkeypatch.undo()
    assert torch.load(path)["step"] == 2 and torch.load(previous_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


class Killed(BaseException):
    """A kill: nothing catches it, no clean-up runs past it."""


def _kill_at_rename(monkeypatch, of: str) -> None:
    """Die at the first ``os.replace`` of the file named ``of`` (after the write, between or before renames)."""
    real = os.replace

    def replace(src, dst):
        if Path(src).name == of:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_a_kill_between_the_two_renames_leaves_the_new_checkpoint_to_finish(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    rotate_save(state(1), path, previous_path(path))
    rotate_save(state(2), path, previous_path(path))
    _kill_at_rename(monkeypatch, rotation_temporary(path).name)
    with pytest.raises(Killed):
        rotate_save(state(3), path, previous_path(path))
    monkeypatch.undo()
    assert not path.exists() and torch.load(previous_path(path))["step"] == 2
    assert finish_rotation(path, FORMAT, TRAINING) == f"completed the interrupted save of {path} (step 3)"
    assert resume_state(path, FORMAT, TRAINING)[0]["step"] == 3
    assert not rotation_temporary(path).exists()


def test_a_kill_midway_through_the_first_write_leaves_nothing_to_resume(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(state(1), rotation_temporary(path))
    rotation_temporary(path).write_bytes(_truncated(rotation_temporary(path).read_bytes()))
    assert finish_rotation(path, FORMAT, TRAINING) is None  # the temporary is not whole: left for the clean-up
    assert resume_state(path, FORMAT, TRAINING) == (None, None)


def test_a_missing_latest_falls_back_on_the_previous_and_says_so(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(state(4), previous_path(path))
    loaded, note = resume_state(path, FORMAT, TRAINING)
    assert loaded["step"] == 4
    assert note == f"{tmp_path}: checkpoint.pt is missing; resuming from checkpoint.prev.pt (step 4)"


@pytest.mark.parametrize("name", ["truncated", "zero-byte", "random-byte"])
def test_both_unreadable_is_one_line_naming_the_files_to_move(tmp_path, name):
    path = tmp_path / "checkpoint.pt"
    damage = CORRUPTIONS[name][0]
    for file in (path, previous_path(path)):
        torch.save(state(), file)
        file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(BarlowTwinsError) as raised:
        resume_state(path, FORMAT, TRAINING, set_aside=True)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"no readable checkpoint in {tmp_path} (checkpoint.pt ")
    assert f"; checkpoint.prev.pt {read_checkpoint(previous_path(path), FORMAT, TRAINING)[1]})" in message
    assert f"move {path} and {previous_path(path)} away (e.g. mv {path} {path}.bad)" in message
    assert path.is_file() and previous_path(path).is_file()  # nothing moved while failing


# End to end through the command line: a finished run (steps 8 and 6 on disk), damaged, then run again.


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out, load_checkpoint(out)["model"]


def _copy(finished, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    assert load_checkpoint(out)["step"] == 8 and load_checkpoint(previous_path(out / "checkpoint.pt"))["step"] == 6
    return out


def _same_weights(out: Path, reference: dict[str, torch.Tensor]) -> bool:
    weights = load_checkpoint(out)["model"]
    return weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


@pytest.mark.parametrize("name", ["truncated", "zero-byte", "random-byte"])
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_and_says_so(finished, tmp_path, capsys, name):
    out = _copy(finished, tmp_path)
    latest = out / "checkpoint.pt"
    damaged = CORRUPTIONS[name][0](latest.read_bytes())
    latest.write_bytes(damaged)
    why = read_checkpoint(latest, FORMAT, TRAINING)[1]
    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        f"barlowtwins: warning: {out}: checkpoint.pt {why}; resuming from checkpoint.prev.pt (step 6), "
        "the unreadable file kept as checkpoint.pt.bad" in err.splitlines()
    )
    assert (out / "checkpoint.pt.bad").read_bytes() == damaged
    assert _same_weights(out, finished[1])  # steps 7 and 8 again, bit for bit
    assert load_checkpoint(previous_path(latest))["step"] == 6  # the good previous one was kept, not the damage


def test_both_checkpoints_damaged_is_a_one_line_error_naming_them(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(_truncated((out / name).read_bytes()))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"barlowtwins: error: no readable checkpoint in {out} (checkpoint.pt cannot be read: ")
    assert f"move {out / 'checkpoint.pt'} and {out / 'checkpoint.prev.pt'} away" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_run_killed_between_the_renames_resumes_to_the_same_weights(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def third_save_killed(obj, handle):  # the third checkpoint (step 6) dies between its renames
        real_save(obj, handle)
        if isinstance(obj, dict) and obj.get("step") == 6:
            _kill_at_rename(monkeypatch, rotation_temporary(out / "checkpoint.pt").name)

    monkeypatch.setattr(torch, "save", third_save_killed)
    with pytest.raises(Killed):
        main([*RUN, "--out", str(out)])
    monkeypatch.undo()
    assert not (out / "checkpoint.pt").exists()
    assert torch.load(out / "checkpoint.prev.pt")["step"] == 4
    assert torch.load(rotation_temporary(out / "checkpoint.pt"))["step"] == 6
    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"barlowtwins: warning: completed the interrupted save of {out / 'checkpoint.pt'} (step 6)" in err
    assert _same_weights(out, finished[1])
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["truncated", "zero-byte", "random-byte", "text"])
def test_damaged_weights_for_evaluation_are_named_not_taken_for_python_objects(tmp_path, name):
    path = tmp_path / "backbone.pth"
    torch.save({"w": torch.arange(50_000.0)}, path)
    path.write_bytes(CORRUPTIONS[name][0](path.read_bytes()))
    with pytest.raises(BarlowTwinsError) as raised:
        load_file(path)
    message = str(raised.value)
    assert message.startswith(f"cannot load {path} (it is ") and message.endswith("); replace it")
    assert CORRUPTIONS[name][1] in message and "Python objects" not in message and "\n" not in message
