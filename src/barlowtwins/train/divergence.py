"""Divergence: every step's loss is checked for finiteness, and the weights before each checkpoint, so a
diverging run stops with the step it diverged at and never overwrites the last good checkpoint.

The per-step check costs no host sync: each step appends a device-side ``isfinite`` flag, and the flags
are read at logged steps and before saving, where the loop synchronises anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from barlowtwins.errors import BarlowTwinsError


def all_finite(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter, buffer and floating-point optimizer state (e.g. momentum) is finite (one sync)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


# What a diverged pretraining run should change (detection passes its own).
PRETRAIN_FIX = "lower optim.lr_weights (or use --precision fp32 if you trained in fp16)"


class FiniteWatch:
    """The finiteness flags of the losses since the last check; ``step`` is the step count before them, ``fix``
    what the divergence message tells the user to change."""

    def __init__(self, step: int, fix: str = PRETRAIN_FIX):
        self._first, self._fix = step, fix
        self._flags: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        """Record the loss of the step just taken (no host sync)."""
        self._flags.append(torch.isfinite(loss.detach()).all())

    def check(
        self,
        step: int,
        run_dir: Path,
        saved_step: int | None,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Stop if a loss since the last check (or, given ``model``, a weight or optimizer state) is non-finite,
        naming the first non-finite step and the checkpoint that stays intact."""
        if self._flags:
            flags = torch.stack(self._flags).cpu()
            if not flags.all():
                first = self._first + int((~flags).nonzero()[0, 0]) + 1
                raise _diverged("the loss", first, run_dir, saved_step, self._fix)
        self._first, self._flags = step, []
        if model is not None and not all_finite(model, optimizer):
            raise _diverged("the weights", step, run_dir, saved_step, self._fix)


def _diverged(what: str, step: int, run_dir: Path, saved_step: int | None, fix: str) -> BarlowTwinsError:
    kept = (
        f"the checkpoint of step {saved_step} in {run_dir} is intact (not overwritten)"
        if saved_step
        else "no checkpoint was written"
    )
    return BarlowTwinsError(
        f"training diverged: {what} became non-finite at step {step}; {kept}; {fix} and start again with another --out"
    )
