"""A time budget for training: how many steps fit, re-estimated from the measured step time as the run goes.

The warm-up + cosine schedule (paper §2.2) is laid over the planned number of steps, so a budgeted run
decays its learning rate fully by the time the budget ends, whatever the machine. Training time is
counted across resumes (it is saved in the checkpoint); set-up and evaluation (also the monitor's kNN while
training, see :meth:`Budget.paused`) are not counted. Several processes (torchrun) must stop at the same step:
they re-plan at the same steps and take the main process's plan (``agree``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

REPLAN_AFTER = (5, 20, 50, 100)  # steps of this session after which the plan is re-made; then every REPLAN_EVERY
REPLAN_EVERY = 100
SETTLE_STEPS = 2  # the first steps of a process (allocation, warm caches) are not counted in the step time
WARMUP_SHARE = 0.1  # under a budget, the warm-up takes at most this share of the planned steps


class Budget:
    """Plans ``total_steps`` for a budget of ``seconds`` (None: no budget, the epochs decide)."""

    def __init__(
        self,
        seconds: float | None,
        max_steps: int,
        spent: float = 0.0,
        planned: int | None = None,
        agree: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.seconds = seconds
        self.clock = clock  # seconds, monotonic: a test passes a fake one
        self.max_steps = max_steps
        self.spent = spent  # training seconds so far, over all sessions of the run
        planned = planned if seconds is not None else None  # without a budget the epochs decide, also on resume
        self.total_steps = min(planned or max_steps, max_steps)
        self._session_steps = 0
        self._last = clock()
        self._settled: tuple[float, int] | None = None  # (time, session steps) once settled
        self.agree = agree  # several processes: the main process's plan, e.g. distributed.broadcast_object
        self.paused_seconds = 0.0  # evaluation inside the training loop, left out of ``spent``

    def restart_clock(self) -> None:
        """Start timing now (call right before the first step, after set-up)."""
        self._last = self.clock()

    def step_done(self, step: int) -> int:
        """Count one finished step (``step`` is the number done) and return the planned total steps."""
        now = self.clock()
        self.spent += now - self._last
        self._last = now
        self._session_steps += 1
        if self.seconds is None:
            return self.total_steps
        if self._session_steps == SETTLE_STEPS:
            self._settled = (now, self._session_steps)
        due = self._settled is not None and self._due()
        if self.agree is not None and not due:
            return self.total_steps  # several processes decide only at the steps where all of them re-plan
        if self.spent >= self.seconds:
            planned = step  # out of time: stop here, with a checkpoint
        elif due:
            since, steps_then = self._settled
            step_time = (now - since) / max(1, self._session_steps - steps_then)
            remaining = math.floor((self.seconds - self.spent) / step_time) if step_time > 0 else self.max_steps
            planned = max(step + 1, min(self.max_steps, step + remaining))
        else:
            return self.total_steps
        self.total_steps = self.agree(planned) if self.agree is not None else planned
        return self.total_steps

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time inside out of the training time and of the measured step time (evaluation while
        training: the budget buys training steps, and its report keeps evaluation apart)."""
        started = self.clock()
        try:
            yield
        finally:
            pause = self.clock() - started
            self.paused_seconds += pause
            self._last += pause
            if self._settled is not None:
                self._settled = (self._settled[0] + pause, self._settled[1])

    def _due(self) -> bool:
        n = self._session_steps - SETTLE_STEPS
        return n in REPLAN_AFTER or (n > 0 and n % REPLAN_EVERY == 0)

    def warmup_steps(self, warmup_steps: int) -> int:
        """The warm-up of the schedule: as configured, capped at a share of the planned steps under a budget."""
        if self.seconds is None:
            return warmup_steps
        return min(warmup_steps, math.floor(WARMUP_SHARE * self.total_steps))
