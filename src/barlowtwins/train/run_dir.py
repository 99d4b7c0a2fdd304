"""The run directory: everything needed to trace a result to what produced it, and to resume.

``config.yaml`` (the resolved config), ``meta.json`` (versions, commit, machine, command),
``metrics.jsonl`` (one line per logged step), ``tensorboard/``, ``checkpoint.pt`` and the one before it,
``checkpoint.prev.pt`` (rotated atomically: a run resumes from the newest whole one), and ``loss.png``. Only
the main process writes; every process loads the checkpoint to resume. The main process holds ``.lock`` while
it runs, so a second run on the same directory is refused.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from barlowtwins import distributed
from barlowtwins.atomic import atomic_write_text, remove_stale_temporaries
from barlowtwins.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    TRAINING,
    finish_rotation,
    previous_path,
    resume_state,
    save_rotating,
)
from barlowtwins.config import PretrainConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import flatten, incompatible_changes
from barlowtwins.runtime import package_version, run_metadata
from barlowtwins.train.budget import Budget
from barlowtwins.validation import parse_duration

logger = logging.getLogger(__name__)


class RunLock:
    """One run per directory: an exclusive ``flock`` on ``.lock`` with the holder's pid in it. The kernel
    drops the lock when its process ends, however it ends, so a killed run leaves nothing stuck."""

    def __init__(self, directory: Path):
        self.path = directory / ".lock"
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release or process exit)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise BarlowTwinsError(
                f"{self.path.parent} is in use by another run (pid {holder}); wait for it to end or pass another --out"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def truncate_metrics(metrics: Path, step: int) -> None:
    """Drop the lines of ``metrics`` (a metrics.jsonl) logged after the checkpoint's ``step`` (the resumed run
    logs those steps again) and a line cut short by a kill."""
    if metrics.is_file():
        lines = metrics.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) != len(lines):
            atomic_write_text("".join(kept), metrics)


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line that is not a whole record."""
    try:
        return json.loads(line)["step"] if line.endswith("\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


def holds_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a run to resume (``checkpoint.pt`` or the one before it): then ``--init`` is
    not read again."""
    path = directory / CHECKPOINT_NAME
    return path.is_file() or previous_path(path).is_file()


def planned_steps(config: PretrainConfig, max_steps: int | None, saved_plan: int | None) -> int | None:
    """The steps a resumed run trains to: ``max_steps`` (the epochs'), or a time budget's saved plan within it,
    as :class:`~barlowtwins.train.budget.Budget` plans them; None when ``max_steps`` is not given."""
    if max_steps is None:
        return None
    return Budget(parse_duration(config.train.time_budget), max_steps, planned=saved_plan).total_steps


class RunDir:
    """A run directory, used as a context manager around the training loop (closes the logs)."""

    def __init__(self, path: Path, main: bool):
        self.path = path
        self.main = main
        self._metrics = None
        self._writer = None
        self._lock = RunLock(path)
        self.saved_step: int | None = None  # the step of the checkpoint on disk (None: none yet)
        self.precision: str | None = None  # the precision in use, saved so that a resumed run keeps it
        self.extra_state: Callable[[], dict[str, Any] | None] | None = None  # more state for each checkpoint

    def _claim(self) -> str | None:
        """Create the directory, take its lock and remove temporaries of killed writes (main process);
        returns what went wrong, so that every process can stop on it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            completed = finish_rotation(self.path / CHECKPOINT_NAME, FORMAT, TRAINING)  # before the cleanup
            freed = remove_stale_temporaries(self.path)
        except BarlowTwinsError as error:
            return str(error)
        except OSError as error:
            return f"cannot write the run directory {self.path} ({error.strerror}); pass another --out"
        if completed:
            logger.warning(completed)
        if freed:
            logger.info("removed temporary files of interrupted writes in %s (%.1f MB)", self.path, freed / 1e6)
        return None

    def _truncate_metrics(self, step: int) -> None:
        truncate_metrics(self.path / "metrics.jsonl", step)

    def start(
        self,
        config: PretrainConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        max_steps: int | None = None,
        eval_only: bool = False,
        init: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Load ``checkpoint.pt`` into the model, optimizer and scaler if there is one and return its progress
        (``step``, ``train_seconds``, ``total_steps``, ``finished``: the checkpoint has all the steps planned of
        ``max_steps``, the epochs' steps); else write ``config.yaml`` and ``meta.json`` of a new run.
        ``eval_only``: only a finished run is accepted, and nothing in it changes. ``init``: what ``--init`` took,
        kept in a new run's meta.json."""
        if eval_only and not (self.path / CHECKPOINT_NAME).is_file():
            raise BarlowTwinsError(
                f"--eval-only: {self.path} holds no run to evaluate (no {CHECKPOINT_NAME}); run without --eval-only "
                "to train it first"
            )
        problem = distributed.broadcast_object(self._claim() if self.main else None)
        if problem:
            self._lock.release()
            raise BarlowTwinsError(problem)
        state, note = resume_state(self.path / CHECKPOINT_NAME, FORMAT, TRAINING, set_aside=self.main)
        if note and self.main:
            logger.warning(note)
        if state is not None:
            changes = incompatible_changes(state["config"], config)
            if changes:
                saved, now = flatten(state["config"]), flatten(config.to_dict())
                shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changes[:5])
                raise BarlowTwinsError(
                    f"{self.path} holds a run with a different configuration ({shown}); "
                    "use another --out, or the run's own settings to resume it"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            self.saved_step = state["step"]
            finished = self._finished(config, state, max_steps, eval_only)
            if self.main and not finished:
                self._truncate_metrics(state["step"])
                logger.info("resuming %s from epoch %s, step %s", self.path, state["epoch"], state["step"])
            keys = ("step", "train_seconds", "total_steps", "monitor", "precision")
            return {**{key: state.get(key) for key in keys}, "finished": finished}
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), self.path / "config.yaml")
            meta = {**run_metadata(), **({"init": init} if init else {})}
            atomic_write_text(json.dumps(meta, indent=2) + "\n", self.path / "meta.json")
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
        distributed.barrier()
        fresh = {"step": 0, "train_seconds": 0.0, "total_steps": None, "monitor": None, "precision": None}
        return {**fresh, "finished": False}

    def _finished(self, config: PretrainConfig, state: dict[str, Any], max_steps: int | None, eval_only: bool) -> bool:
        """Whether the checkpoint ``state`` has every step planned (:func:`planned_steps`); ``eval_only`` (which
        needs a finished run) on an unfinished one is an error."""
        planned = planned_steps(config, max_steps, state.get("total_steps"))
        finished = planned is not None and state["step"] >= planned
        if eval_only and not finished:
            self.release()
            raise BarlowTwinsError(
                f"--eval-only: {self.path} is not finished (step {state['step']} of {planned}); run without "
                f"--eval-only to finish it, or 'barlowtwins knn --checkpoint {self.path}' for this checkpoint"
            )
        return finished

    def release(self) -> None:
        """Let another run use the directory (a finished run re-run leaves without training)."""
        self._lock.release()

    def __enter__(self) -> RunDir:
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self._metrics = open(self.path / "metrics.jsonl", "a")  # noqa: SIM115 (closed in __exit__)
            # purge_step: a resumed run's steps after its checkpoint replace those logged before the interruption
            self._writer = SummaryWriter(str(self.path / "tensorboard"), purge_step=(self.saved_step or 0) + 1)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.main:
            self._metrics.close()
            self._writer.close()
        self._lock.release()

    def log(self, record: dict[str, Any], scalars: Sequence[str]) -> None:
        """Append ``record`` to metrics.jsonl and its ``scalars`` to TensorBoard (main process only)."""
        if not self.main:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for key in scalars:
            if record.get(key) is not None:
                self._writer.add_scalar(f"pretrain/{key}", record[key], record["step"])

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        config: PretrainConfig,
        step: int,
        steps_per_epoch: int,
        train_seconds: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        """Rewrite ``checkpoint.pt`` atomically (main process), then wait for every process.

        ``train_seconds`` and ``total_steps`` (the planned schedule) let a budgeted run resume its plan;
        ``extra_state()``, when set, is saved as ``monitor`` (the run monitor's online probe)."""
        if self.main:
            state = {
                "format": FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": step // steps_per_epoch,
                "step": step,
                "train_seconds": train_seconds,
                "total_steps": total_steps,
                "config": config.to_dict(),
                "version": package_version(),
                "monitor": self.extra_state() if self.extra_state is not None else None,
                "precision": self.precision,
            }
            problem = self._write_checkpoint(state, step)
        problem = distributed.broadcast_object(problem if self.main else None)  # all stop; none waits forever
        if problem:
            raise BarlowTwinsError(problem)
        self.saved_step = step
        distributed.barrier()

    def _write_checkpoint(self, state: dict[str, Any], step: int) -> str | None:
        """Write ``checkpoint.pt`` atomically; returns what went wrong (the previous checkpoint is intact)."""
        try:
            save_rotating(state, self.path / CHECKPOINT_NAME)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            kept = f"the checkpoint of step {self.saved_step} is intact" if self.saved_step else "no checkpoint yet"
            return (
                f"cannot write the checkpoint of step {step} to {self.path} ({' '.join(str(error).split())}); "
                f"{kept}; free disk space and run the same command to resume"
            )
        return None

    def add_png(self, tag: str, png: bytes, step: int) -> None:
        """A PNG picture into TensorBoard's images (main process only)."""
        if self.main:
            with Image.open(io.BytesIO(png)) as picture:
                self._writer.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def write_json(self, name: str, report: dict[str, Any]) -> None:
        atomic_write_text(json.dumps(report, indent=2) + "\n", self.path / name)

    def plot(self, terms: Sequence[str], diagnostics: Sequence[str]) -> None:
        from barlowtwins.plots import plot_metrics

        plot_metrics(self.path / "metrics.jsonl", self.path / "loss.png", terms, diagnostics)
