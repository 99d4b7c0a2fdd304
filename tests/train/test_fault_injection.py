"""Fault injection: runs killed (SIGKILL) at random moments and mid-checkpoint, preempted (SIGTERM), diverging,
sharing a directory, or meeting a full disk keep the last good checkpoint and resume to the same weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from barlowtwins.atomic import rotation_temporary
from barlowtwins.checkpoint import FORMAT, TRAINING, load_checkpoint, previous_path, read_checkpoint
from barlowtwins.cli import main
from barlowtwins.train import loop

SRC = str(Path(__file__).resolve().parents[2] / "src")
# 4 steps per epoch, 8 steps, checkpoints at the end of each epoch (steps 4 and 8): resnet18's are 90 MB.
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
    "train.log_every=1",
]
# Runs the CLI; the second checkpoint write stalls half-written (prints WRITING) so the test can kill it there.
STALL_SECOND_SAVE = """
import sys, time, torch
real_save, saves = torch.save, []
def stalling_save(obj, handle):
    if isinstance(obj, dict) and "optimizer" in obj:
        saves.append(obj["step"])
        if len(saves) == 2:
            handle.write(b"half a checkpoint"); handle.flush()
            print("WRITING", flush=True)
            time.sleep(600)
    real_save(obj, handle)
torch.save = stalling_save
from barlowtwins.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(out: Path, script: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = ["-c", script] if script else ["-m", "barlowtwins"]
    return subprocess.Popen(
        [sys.executable, *command, *RUN, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen, *markers: str) -> str:
    """The first line of the run's output holding one of ``markers``."""
    for line in process.stdout:
        if any(marker in line for marker in markers):
            return line
    raise AssertionError(f"the run ended ({process.wait()}) before printing {markers}: {process.stderr.read()}")


def _wait_for_metrics(process: subprocess.Popen, out: Path) -> None:
    """Until the run logged its first step (its signal handlers and lock are in place)."""
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)


def _assert_same_weights(reference: Path, run: Path) -> None:
    a, b = load_checkpoint(reference), load_checkpoint(run)
    assert b["step"] == a["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments = [(s, t) for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
    assert all(torch.equal(x[key], y[key]) for x, y in moments for key in x)


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_killed_at_random_moments_and_mid_checkpoint_resumes_to_identical_weights(reference, tmp_path, capsys):
    out = tmp_path / "run"
    process = _start(out, STALL_SECOND_SAVE)
    _wait_for_line(process, "WRITING")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert load_checkpoint(out)["step"] == 4  # the first checkpoint survived the killed write of the second
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1  # the killed write's leftover

    moments = random.Random(10).sample([x / 10 for x in range(5, 60)], 2)
    for seconds in moments:
        process = _start(out)
        if "is finished" in _wait_for_line(process, "pretraining", "is finished"):
            assert process.wait() == 0  # an earlier session ended the run before its kill came
            break
        time.sleep(seconds)
        process.send_signal(signal.SIGKILL)
        assert process.wait() in (-signal.SIGKILL, 0)  # 0: it had finished

    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 0
    assert not list(out.glob(".*.tmp"))
    _assert_same_weights(reference, out)
    assert _logged_steps(out) == list(range(1, 9))  # steps logged after the checkpoint were dropped on resume

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("pretrain/loss")] == list(range(1, 9))  # purge_step replaced them


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_sigterm_checkpoints_and_resumes(reference, tmp_path, capsys):
    out = tmp_path / "run"
    first = _start(out)
    _wait_for_metrics(first, out)
    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"barlowtwins: error: {out} is in use by another run (pid {first.pid})" in err
    assert "Traceback" not in err

    first.send_signal(signal.SIGTERM)
    assert first.wait() == 143
    message = first.stderr.read().strip().splitlines()[-1]
    step = load_checkpoint(out)["step"]
    assert 1 <= step < 8
    assert f"stopped by SIGTERM: checkpointed at step {step} in {out}; run the same command to resume" in message

    assert main([*RUN, "--out", str(out)]) == 0  # the lock of the stopped run is gone
    _assert_same_weights(reference, out)  # the refused second run changed nothing
    assert _logged_steps(out) == list(range(1, 9))


# A small model (timm's test_resnet, 3 MB checkpoints) saved after every one of its 24 steps, for many kills.
SMALL = [*RUN, "--epochs", "6", "--arch", "timm:test_resnet", "--set", "train.checkpoint_every=1"]
SMALL += ["--set", "monitor.picture_every=0"]
# A zygote: imports torch and the package once, then forks a run per line of stdin ({"argv", "log", "kind", "n",
# "fraction"}); the run SIGKILLs itself at that moment, and the zygote prints how it ended. Forking a process that
# has computed nothing is safe, and a kill costs no interpreter start-up.
ZYGOTE = """
import io, json, os, signal, sys, traceback
import sklearn.datasets, timm, torch, torch.utils.tensorboard
from barlowtwins import atomic
from barlowtwins.cli import main
from barlowtwins.train import loop

def arm(kind, n, fraction):
    saves, steps, real_save, real_replace, real_step = [], [], torch.save, os.replace, loop.train_step
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    def train_step(*args):  # kind "step": after the n-th step of this session
        terms = real_step(*args)
        steps.append(1)
        if kind == "step" and len(steps) == n:
            die()
        return terms
    def save(obj, handle):  # kind "mid-write": the n-th checkpoint cut at `fraction` of its bytes
        if not (isinstance(obj, dict) and "optimizer" in obj):
            return real_save(obj, handle)
        saves.append(1)
        if kind == "mid-write" and len(saves) == n:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            handle.write(buffer.getvalue()[: int(fraction * len(buffer.getvalue()))])
            handle.flush()
            die()
        real_save(obj, handle)
    def replace(src, dst):  # "written": whole and synced, before any rename; "renaming": at the new file's rename
        if len(saves) == n and (kind == "written" or (kind == "renaming" and str(src).endswith(".next.tmp"))):
            die()
        real_replace(src, dst)
    loop.train_step, torch.save, atomic.os.replace = train_step, save, replace

for line in sys.stdin:
    plan = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            log = os.open(plan["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            arm(plan["kind"], plan["n"], plan["fraction"])
            os._exit(main(plan["argv"]))
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    ended = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps(ended), flush=True)
"""


def _kill_plan(seed: int) -> list[dict]:
    """20 moments: 5 of each kind (a step, mid-write, written but not renamed, mid-rename), n-th of the session."""
    rng = random.Random(seed)
    kinds = ["step", "mid-write", "written", "renaming"] * 5
    rng.shuffle(kinds)
    return [{"kind": kind, "n": rng.randint(1, 2), "fraction": rng.random()} for kind in kinds]


def _resumable_step(latest: Path) -> int:
    """The step a run resumes from: the latest whole checkpoint, the new one a kill left between its renames, or
    the previous one (0: none)."""
    files = [latest, rotation_temporary(latest)] if not latest.exists() else [latest]
    for file in [*files, previous_path(latest)]:
        state = read_checkpoint(file, FORMAT, TRAINING)[0] if file.is_file() else None
        if state is not None:
            return state["step"]
    return 0


@pytest.mark.slow
def test_twenty_kills_at_seeded_moments_also_mid_write_resume_bit_for_bit(tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main([*SMALL, "--out", str(reference)]) == 0
    out, log = tmp_path / "run", tmp_path / "killed.log"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    ended, steps = [], []
    try:
        for plan in _kill_plan(24):
            zygote.stdin.write(json.dumps({**plan, "argv": [*SMALL, "--out", str(out)], "log": str(log)}) + "\n")
            zygote.stdin.flush()
            ended.append(json.loads(zygote.stdout.readline()))
            steps.append(_resumable_step(out / "checkpoint.pt"))
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    assert ended == [-signal.SIGKILL] * 20, log.read_text()[-3000:]  # every moment came: no run finished first
    assert steps == sorted(steps) and 0 < steps[-1] < 24  # progress, never lost
    capsys.readouterr()
    assert main([*SMALL, "--out", str(out)]) == 0
    assert not list(out.glob(".*.tmp"))
    a, b = load_checkpoint(reference), load_checkpoint(out)
    assert a["step"] == b["step"] == 24
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(
        torch.equal(x[key], y[key])
        for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
        for key in x
    )
    assert _logged_steps(out) == list(range(1, 25))


def _inject(monkeypatch, at_call: int, corrupt) -> None:
    """Let ``corrupt(trainer, terms)`` act after the ``at_call``-th training step."""
    real, calls = loop.train_step, []

    def train_step(trainer, *rest):
        terms = real(trainer, *rest)
        calls.append(1)
        return corrupt(trainer, terms) if len(calls) == at_call else terms

    monkeypatch.setattr(loop, "train_step", train_step)


NAN_RUN = ["--set", "train.log_every=10", "--set", "train.checkpoint_every=3"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.slow
def test_nan_weights_never_replace_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def nan_weights(trainer, terms):
        with torch.no_grad():
            next(trainer.parameters()).fill_(float("nan"))
        return terms

    _inject(monkeypatch, 6, nan_weights)  # the loss of step 6 is finite, the weights after it are not
    assert main([*RUN, *NAN_RUN, "--out", str(out)]) == 2  # checkpoints at steps 3, 4, 6 and 8
    line = _error_line(capsys)
    assert "training diverged: the weights became non-finite at step 6" in line
    assert f"the checkpoint of step 4 in {out} is intact" in line
    state = load_checkpoint(out)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.undo()
    assert main([*RUN, *NAN_RUN, "--out", str(out)]) == 0  # resumes from the good step 4


@pytest.mark.slow
def test_the_first_non_finite_loss_is_found_between_logged_steps(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _inject(monkeypatch, 5, lambda trainer, terms: {**terms, "loss": torch.tensor(float("nan"))})
    assert main([*RUN, *NAN_RUN, "--out", str(out)]) == 2  # checked at the save of step 6
    line = _error_line(capsys)
    assert "training diverged: the loss became non-finite at step 5" in line
    assert "the checkpoint of step 4" in line
    assert load_checkpoint(out)["step"] == 4


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_disk(obj, handle):
        saves.append(obj)
        if len(saves) == 2:
            handle.write(b"part")
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main([*RUN, "--out", str(out), "--epochs", "1", "--set", "train.checkpoint_every=2"]) == 2
    line = _error_line(capsys)
    assert line.startswith("barlowtwins: error: cannot write the checkpoint of step 4 to ")
    assert "the checkpoint of step 2 is intact; free disk space" in line
    assert load_checkpoint(out)["step"] == 2
    assert not list(out.glob(".*.tmp"))


def test_preemption_flags_the_signal_and_restores_the_handlers(tmp_path):
    from barlowtwins.train.preemption import Preemption

    before = signal.getsignal(signal.SIGUSR1)
    with Preemption(torch.device("cpu"), every=10) as preemption:
        assert not preemption.requested(1)
        signal.raise_signal(signal.SIGUSR1)  # the handler only sets the flag: the process goes on
        assert preemption.requested(2)
        stop = preemption.stop(2, tmp_path)
    assert signal.getsignal(signal.SIGUSR1) is before
    assert stop.exit_status == 128 + signal.SIGUSR1
    assert str(stop).startswith(f"stopped by SIGUSR1: checkpointed at step 2 in {tmp_path}")


def test_the_run_lock_is_exclusive_and_released(tmp_path):
    from barlowtwins.errors import BarlowTwinsError
    from barlowtwins.train.run_dir import RunLock

    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(BarlowTwinsError, match=rf"in use by another run \(pid {os.getpid()}\)"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released (or once its process ended)
    second.release()


# Rank 1 alone gets SIGUSR1 during its 2nd step; rank 0 must learn it from the all-reduce and stop there too.
SIGNAL_RANK_1 = """
import os, signal, sys
from barlowtwins.train import loop
real, calls = loop.train_step, []
def train_step(*args):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        os.kill(os.getpid(), signal.SIGUSR1)
    return real(*args)
loop.train_step = train_step
from barlowtwins.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_under_torchrun_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    script, out = tmp_path / "signal_rank_1.py", tmp_path / "run"
    script.write_text(SIGNAL_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run([*launcher, *RUN, "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert result.stderr.count(f"stopped by SIGUSR1: checkpointed at step 2 in {out}") == 2, result.stderr[-3000:]
    assert load_checkpoint(out)["step"] == 2
    assert _logged_steps(out) == [1, 2]


def test_resume_drops_metrics_after_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path):
    from barlowtwins.train.run_dir import RunDir

    lines = [json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 7, "lo')
    RunDir(tmp_path, main=True)._truncate_metrics(4)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:4])
