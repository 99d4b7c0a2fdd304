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

import numpy as np

REPLAN_AFTER = (5, 20, 50, 100)  # steps of this session after which the plan is re-made; then every so many:
REPLAN_EVERY = 100  # at most this many steps apart,
REPLANS_PER_RUN = 25  # and about this many times in a run of few steps (every 7 of a 174-step run),
REPLAN_MIN = 5  # but not more often than every 5 steps
SETTLE_STEPS = 2  # the first steps of a process (allocation, warm caches) are not counted in the step time
PROBE_STEPS = 2  # then, with step costs that vary (low resolution first), this many steps at full cost to time them
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
        cost: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.seconds = seconds
        self.clock = clock  # seconds, monotonic: a test passes a fake one
        self.max_steps = max_steps
        self.spent = spent  # training seconds so far, over all sessions of the run
        planned = planned if seconds is not None else None  # without a budget the epochs decide, also on resume
        self.total_steps = min(planned or max_steps, max_steps)
        self._session_steps = 0
        self._last = clock()
        # Relative cost of a step at each fraction of the run (1: a full step), e.g. the share of the pixels under
        # low resolution first (train/resolution.py); None: every step costs the same. A step's time is modelled
        # as unit x cost^beta, both fitted to this session's settled steps (beta: how this machine's step time
        # follows the cost, 1 until steps of two costs were measured), and the plan fits the costs to the time left.
        # The first PROBE_STEPS settled steps of a session are full-cost ones (see ``probing``), so both ends of
        # the cost range are timed before the first plan, and the plan does not move the schedule back and forth.
        self.cost = cost
        self._levels: dict[float, list[float]] = {}  # cost -> [seconds, steps] of the settled steps at that cost
        self.agree = agree  # several processes: the main process's plan, e.g. distributed.broadcast_object
        self.paused_seconds = 0.0  # evaluation inside the training loop, left out of ``spent``

    def restart_clock(self) -> None:
        """Start timing now (call right before the first step, after set-up)."""
        self._last = self.clock()

    def probing(self) -> bool:
        """Whether the next step is to be taken at full cost (the views at full size) so that its time is
        measured: the first ``PROBE_STEPS`` settled steps of a budgeted session whose step costs vary."""
        settled = self._session_steps - SETTLE_STEPS
        return self.seconds is not None and self.cost is not None and 0 <= settled < PROBE_STEPS

    def step_done(self, step: int, cost: float | None = None) -> int:
        """Count one finished step (``step`` is the number done; ``cost``: its relative cost as taken, e.g. the
        pixel share of the side it was made at; default the plan's) and return the planned total steps."""
        now = self.clock()
        self.spent += now - self._last
        if self.seconds is not None and self._session_steps >= SETTLE_STEPS:  # the plan's step times
            if cost is None:  # the plan's cost of this step (steps of one cost: 1)
                cost = float(self._costs(step - 1, step, self.total_steps)[0])
            level = self._levels.setdefault(round(cost, 3), [0, 0])
            level[0] += now - self._last
            level[1] += 1
        self._last = now
        self._session_steps += 1
        if self.seconds is None:
            return self.total_steps
        due = self._session_steps > SETTLE_STEPS and self._due()
        if self.agree is not None and not due:
            return self.total_steps  # several processes decide only at the steps where all of them re-plan
        if self.spent >= self.seconds:
            planned = step  # out of time: stop here, with a checkpoint
        elif due:
            planned = max(step + 1, self._fit(step, self.seconds - self.spent, *self._step_time()))
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

    def _costs(self, first: int, stop: int, total: int) -> np.ndarray:
        """Relative costs of steps ``first`` .. ``stop`` - 1 of a run of ``total`` steps."""
        if self.cost is None:
            return np.ones(max(0, stop - first))
        return self.cost(np.arange(first, stop) / max(1, total))

    def _step_time(self) -> tuple[float, float]:
        """(unit, beta): seconds of a full step, and the exponent of the cost in a step's time (least squares
        in log space over the measured costs' mean times; 1 while a single cost was measured)."""
        costs = np.array(list(self._levels))
        seconds, steps = np.array(list(self._levels.values())).T
        if len(costs) < 2 or costs.max() < 1.1 * costs.min():
            return seconds.sum() / max(1e-9, (costs * steps).sum()), 1.0
        beta, log_unit = np.polyfit(np.log(costs), np.log(np.maximum(seconds / steps, 1e-9)), 1, w=np.sqrt(steps))
        return float(np.exp(log_unit)), float(beta)

    def _fit(self, step: int, seconds: float, unit_time: float, beta: float = 1.0) -> int:
        """The most total steps (at most ``max_steps``) whose steps from ``step`` on fit in ``seconds``."""
        if unit_time <= 0:
            return self.max_steps
        if self.cost is None:
            return min(self.max_steps, step + math.floor(seconds / unit_time))
        low, high = step, self.max_steps  # the costs of a longer run's remaining steps only grow with its length
        while low < high:
            total = (low + high + 1) // 2
            if (self._costs(step, total, total) ** beta).sum() * unit_time <= seconds:
                low = total
            else:
                high = total - 1
        return low

    def _due(self) -> bool:
        """Whether to re-plan now: at fixed steps, then at intervals set by the agreed plan, so that several
        processes re-plan at the same steps. A run of few slow steps (20 minutes at 128 px on a CPU without bf16:
        174 steps) re-plans often: a plan made at step 102 that held to the end stopped it 1.5 minutes early."""
        n = self._session_steps - SETTLE_STEPS
        every = min(REPLAN_EVERY, max(REPLAN_MIN, self.total_steps // REPLANS_PER_RUN))
        return n in REPLAN_AFTER or (n > 0 and n % every == 0)

    def warmup_steps(self, warmup_steps: int) -> int:
        """The warm-up of the schedule: as configured, capped at a share of the planned steps under a budget."""
        if self.seconds is None:
            return warmup_steps
        return min(warmup_steps, math.floor(WARMUP_SHARE * self.total_steps))
