"""A detection run's directory, with pretraining's guarantees (:mod:`barlowtwins.train.run_dir`).

``config.yaml``, ``meta.json``, ``metrics.jsonl``, ``tensorboard/``, ``detector.pt`` (rotated atomically with
``detector.prev.pt``, the one before it, to fall back on;
named apart from pretraining's ``checkpoint.pt`` so a detection run is never taken for a backbone) and
``eval/``. The same ``.lock`` keeps a second run off the directory; a run resumes from its checkpoint
unless its settings changed in a way that matters (:data:`barlowtwins.config.DETECT_RESUMABLE`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from barlowtwins.atomic import atomic_write_text, remove_stale_temporaries
from barlowtwins.checkpoint import finish_rotation, resume_state, save_rotating
from barlowtwins.config import DETECT_RESUMABLE, DetectConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import flatten
from barlowtwins.runtime import package_version, run_metadata
from barlowtwins.train.run_dir import RunLock, truncate_metrics

logger = logging.getLogger(__name__)

CHECKPOINT = "detector.pt"
FORMAT = "barlowtwins-detection/1"
KIND = "a detection checkpoint made by 'barlowtwins detect'"  # what a file of FORMAT is, in messages


class DetectRun:
    """Used as a context manager around the fine-tuning loop (closes the logs, releases the lock). Under
    torchrun only the main process (``main``) takes the directory and writes; the others only read the
    checkpoint to resume from, after the main process has taken the directory."""

    def __init__(self, path: str | Path, main: bool = True):
        self.path, self.main = Path(path), main
        self._lock = RunLock(self.path)
        self._metrics = self._writer = None
        self.saved_step: int | None = None

    def start(self, config: DetectConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Take the directory; resume from ``detector.pt`` (returns its ``step``, ``train_seconds``,
        ``total_steps``) or write ``config.yaml`` and ``meta.json`` of a new run."""
        if not self.main:
            return self._resume(config, model, optimizer) or {"step": 0, "train_seconds": 0.0, "total_steps": None}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            completed = finish_rotation(self.path / CHECKPOINT, FORMAT, KIND)  # before removing temporaries
            remove_stale_temporaries(self.path)
        except OSError as error:
            raise BarlowTwinsError(
                f"cannot write the run directory {self.path} ({error.strerror}); pass another --out"
            ) from None
        if completed:
            logger.warning(completed)
        progress = self._resume(config, model, optimizer)
        if progress is None:
            atomic_write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), self.path / "config.yaml")
            atomic_write_text(json.dumps(run_metadata(), indent=2) + "\n", self.path / "meta.json")
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
            return {"step": 0, "train_seconds": 0.0, "total_steps": None}
        truncate_metrics(self.path / "metrics.jsonl", progress["step"])
        logger.info("resuming %s from step %s", self.path, progress["step"])
        return progress

    def _resume(self, config: DetectConfig, model: nn.Module, optimizer) -> dict[str, Any] | None:
        """Load ``detector.pt`` into the model and optimiser (None when there is none), refusing other settings."""
        state, note = resume_state(self.path / CHECKPOINT, FORMAT, KIND, set_aside=self.main)
        if note and self.main:
            logger.warning(note)
        if state is None:
            return None
        saved, now = flatten(state["config"]), flatten(config.to_dict())
        changed = sorted(k for k in set(saved) | set(now) if k not in DETECT_RESUMABLE and saved.get(k) != now.get(k))
        if changed:
            shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
            raise BarlowTwinsError(
                f"{self.path} holds a detection run with other settings ({shown}); use another --out, or its settings"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.saved_step = state["step"]
        return {key: state[key] for key in ("step", "train_seconds", "total_steps")}

    def __enter__(self) -> DetectRun:
        if not self.main:
            return self
        from torch.utils.tensorboard import SummaryWriter

        self._metrics = open(self.path / "metrics.jsonl", "a")  # noqa: SIM115 (closed in __exit__)
        self._writer = SummaryWriter(str(self.path / "tensorboard"), purge_step=(self.saved_step or 0) + 1)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.main:
            return
        self._metrics.close()
        self._writer.close()
        self._lock.release()

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line; its numbers as TensorBoard scalars under ``detect/`` (main process only)."""
        if not self.main:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"detect/{key}", value, record["step"])

    def save(self, model: nn.Module, optimizer, config: DetectConfig, step: int, seconds: float, total: int) -> None:
        """Rewrite ``detector.pt`` atomically; a failed write leaves the previous checkpoint intact. Main only."""
        if not self.main:
            self.saved_step = step
            return
        state = {
            "format": FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "train_seconds": seconds,
            "total_steps": total,
            "config": config.to_dict(),
            "version": package_version(),
        }
        try:
            save_rotating(state, self.path / CHECKPOINT)
        except (OSError, RuntimeError) as error:
            kept = f"the checkpoint of step {self.saved_step} is intact" if self.saved_step else "no checkpoint yet"
            raise BarlowTwinsError(
                f"cannot write the checkpoint of step {step} to {self.path} ({' '.join(str(error).split())}); {kept}"
            ) from None
        self.saved_step = step
