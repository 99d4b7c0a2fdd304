"""Preemption: SIGTERM (a scheduler stopping the job) or SIGUSR1 (SLURM's ``--signal`` warning) asks the
run to stop; the loop saves a checkpoint at the next step boundary and exits with ``128 + signal``.

The handler only sets a flag, so a signal never interrupts a step or a checkpoint write. Under torchrun
the processes agree by an all-reduce of the flag every ``every`` steps (one tiny collective), so all of
them stop at the same step and save the same checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from barlowtwins import distributed
from barlowtwins.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """A context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self, device: torch.device, every: int):
        self.device = device
        self.every = every
        self.signal_number = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, frame) -> None:
        self.signal_number = signal_number

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # signals can be handled only there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step``: this process's flag, agreed on by all processes when distributed."""
        if not distributed.is_distributed():
            return self.signal_number != 0
        if step % self.every:
            return False
        flag = torch.tensor([self.signal_number], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signal_number = int(flag.item())
        return self.signal_number != 0

    def stop(self, step: int, run_dir: Path) -> Preempted:
        name = signal.Signals(self.signal_number).name
        return Preempted(
            f"stopped by {name}: checkpointed at step {step} in {run_dir}; run the same command to resume "
            "(under SLURM, --requeue restarts it)",
            self.signal_number,
        )
