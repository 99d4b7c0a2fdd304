"""Fault injection: runs killed (SIGKILL) at random moments and mid-checkpoint, preempted (SIGTERM), diverging,
sharing a directory, or meeting a full disk keep the last good checkpoint and resume to the same weights."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
# A zygote: imports torch and the package once, then forks a run per line of stdin ({"argv", "log", "kind", "n",
# "fraction"}), prints the run's pid, and then how it ended. The run writes its output to "log" and, by "kind":
# "none", runs as the command would (the test signals it); "step", SIGKILLs itself after its n-th step;
# "mid-write", cuts its n-th checkpoint at `fraction` of its bytes and SIGKILLs itself; "written" / "renaming",
# SIGKILLs itself before any rename / at the new file's rename; "stall", stalls half-way through its n-th
# checkpoint write and prints WRITING. Forking a process that has computed nothing is safe, and a run costs no
# interpreter start-up (7 to 11 s of imports each on a 2-core AVX2 EPYC).
ZYGOTE = """
import io, json, os, signal, sys, time, traceback
import sklearn.datasets, timm, torch, torch.utils.tensorboard
from barlowtwins import atomic
from barlowtwins.cli import main
from barlowtwins.train import loop

def arm(kind, n, fraction):
    saves, steps, real_save, real_replace, real_step = [], [], torch.save, os.replace, loop.train_step
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    def train_step(*args):
        terms = real_step(*args)
        steps.append(1)
        if kind == "step" and len(steps) == n:
            die()
        return terms
    def save(obj, handle):
        if not (isinstance(obj, dict) and "optimizer" in obj):
            return real_save(obj, handle)
        saves.append(1)
        if kind == "mid-write" and len(saves) == n:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            handle.write(buffer.getvalue()[: int(fraction * len(buffer.getvalue()))])
            handle.flush()
            die()
        if kind == "stall" and len(saves) == n:
            handle.write(b"half a checkpoint")
            handle.flush()
            print("WRITING", flush=True)
            time.sleep(600)
        real_save(obj, handle)
    def replace(src, dst):
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
    print(json.dumps(pid), flush=True)
    _, status = os.waitpid(pid, 0)
    ended = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps(ended), flush=True)
"""


class Zygote:
    """The ZYGOTE process: ``fork`` starts a run and returns its pid, ``ended`` waits for its exit status."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        command = [sys.executable, "-c", ZYGOTE]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def fork(self, argv: list[str], log: Path, kind: str = "none", n: int = 0, fraction: float = 0.0) -> int:
        plan = {"argv": argv, "log": str(log), "kind": kind, "n": n, "fraction": fraction}
        self.process.stdin.write(json.dumps(plan) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def ended(self) -> int:
        """The run's exit status, -N if signal N ended it."""
        return json.loads(self.process.stdout.readline())


@pytest.fixture(scope="module")
def zygote():
    process = Zygote()
    yield process
    process.process.stdin.close()
    process.process.wait(timeout=60)


def _poll(found: Callable[[], object], pid: int, log: Path, what: str):
    """``found()`` once it is not None, polled while the run ``pid`` lives (its log's tail if it ends before)."""
    while (result := found()) is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise AssertionError(f"the run ended before {what}: {log.read_text()[-3000:]}") from None
        time.sleep(0.05)
    return result


def _wait_for_log(log: Path, pid: int, *markers: str) -> str:
    """The first line of the run's output holding one of ``markers``, once it is there."""

    def line() -> str | None:
        lines = log.read_text().splitlines() if log.is_file() else []
        return next((x for x in lines if any(m in x for m in markers)), None)

    return _poll(line, pid, log, f"printing {markers}")


def _wait_for_metrics(out: Path, pid: int, log: Path) -> None:
    """Until the run logged its first step (its signal handlers and lock are in place)."""
    metrics = out / "metrics.jsonl"
    _poll(lambda: (metrics.is_file() and metrics.read_text().strip()) or None, pid, log, "its first step")


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
def test_killed_at_random_moments_and_mid_checkpoint_resumes_to_identical_weights(reference, zygote, tmp_path, capsys):
    out, argv = tmp_path / "run", [*RUN, "--out", str(tmp_path / "run")]
    pid = zygote.fork(argv, tmp_path / "stalled.log", kind="stall", n=2)  # the second checkpoint write stalls
    _wait_for_log(tmp_path / "stalled.log", pid, "WRITING")
    os.kill(pid, signal.SIGKILL)
    assert zygote.ended() == -signal.SIGKILL
    assert load_checkpoint(out)["step"] == 4  # the first checkpoint survived the killed write of the second
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1  # the killed write's leftover

    moments = random.Random(10).sample([x / 10 for x in range(5, 60)], 2)
    for i, seconds in enumerate(moments):
        log = tmp_path / f"killed{i}.log"
        pid = zygote.fork(argv, log)
        if "is finished" in _wait_for_log(log, pid, "pretraining", "is finished"):
            assert zygote.ended() == 0  # an earlier session ended the run before its kill came
            break
        time.sleep(seconds)
        with contextlib.suppress(ProcessLookupError):  # gone: it had finished
            os.kill(pid, signal.SIGKILL)
        assert zygote.ended() in (-signal.SIGKILL, 0)

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
def test_a_second_run_is_refused_and_a_sigterm_checkpoints_and_resumes(reference, zygote, tmp_path, capsys):
    out, log = tmp_path / "run", tmp_path / "first.log"
    first = zygote.fork([*RUN, "--out", str(out)], log)
    _wait_for_metrics(out, first, log)
    capsys.readouterr()
    assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"barlowtwins: error: {out} is in use by another run (pid {first})" in err
    assert "Traceback" not in err

    os.kill(first, signal.SIGTERM)
    assert zygote.ended() == 143
    message = log.read_text().strip().splitlines()[-1]
    step = load_checkpoint(out)["step"]
    assert 1 <= step < 8
    assert f"stopped by SIGTERM: checkpointed at step {step} in {out}; run the same command to resume" in message

    assert main([*RUN, "--out", str(out)]) == 0  # the lock of the stopped run is gone
    _assert_same_weights(reference, out)  # the refused second run changed nothing
    assert _logged_steps(out) == list(range(1, 9))


# A small model (timm's test_resnet, 3 MB checkpoints) saved after every one of its 24 steps, for many kills.
SMALL = [*RUN, "--epochs", "6", "--arch", "timm:test_resnet", "--set", "train.checkpoint_every=1"]
SMALL += ["--set", "monitor.picture_every=0"]


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
def test_twenty_kills_at_seeded_moments_also_mid_write_resume_bit_for_bit(zygote, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main([*SMALL, "--out", str(reference)]) == 0
    out, log = tmp_path / "run", tmp_path / "killed.log"
    ended, steps = [], []
    for plan in _kill_plan(24):
        zygote.fork([*SMALL, "--out", str(out)], log, **plan)
        ended.append(zygote.ended())
        steps.append(_resumable_step(out / "checkpoint.pt"))
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
