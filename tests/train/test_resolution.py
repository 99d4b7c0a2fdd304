"""Low-resolution-first training (train.progressive_start): the side schedule, the resize, and the loop
feeding the backbone views of the scheduled sides."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import make_config, override
from barlowtwins.train import budget as budget_module
from barlowtwins.train import pretrain
from barlowtwins.train.budget import SETTLE_STEPS, Budget
from barlowtwins.train.resolution import resize_views, step_cost, view_side


def test_view_side_holds_the_start_then_grows_linearly_to_the_end():
    sides = [view_side(step, 100, 64, 128, (0.5, 0.75)) for step in range(101)]
    assert sides[:51] == [64] * 51  # up to the ramp's start
    assert sides[75:] == [128] * 26  # from its end
    assert sides[62] == 8 * round((64 + (62 / 100 - 0.5) / 0.25 * 64) / 8)  # linear in between, rounded to 8 px
    assert sides == sorted(sides)  # never shrinks
    assert all(side % 8 == 0 for side in sides)


@pytest.mark.parametrize("start", [0, 128, 160])
def test_view_side_without_a_smaller_start_is_the_image_size(start):
    assert {view_side(step, 10, start, 128, (0.0, 1.0)) for step in range(11)} == {128}


def test_resize_views_shrinks_a_and_b_only_and_keeps_their_layout():
    a = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small = torch.rand(4, 3, 8, 8)
    out = resize_views([a, a.clone(), small], 16)
    assert [tuple(v.shape) for v in out] == [(2, 3, 16, 16), (2, 3, 16, 16), (4, 3, 8, 8)]
    assert out[2] is small
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    # an antialiased 2x reduction of a constant image is the constant; of a 2x2 checkerboard of blocks, the mean
    flat = resize_views([torch.full((1, 3, 32, 32), 0.25)], 16)[0]
    assert torch.allclose(flat, torch.full_like(flat, 0.25), atol=1e-6)
    board = torch.zeros(1, 1, 32, 32)
    board[..., ::2, ::2] = board[..., 1::2, 1::2] = 1.0
    inner = resize_views([board], 16)[0][..., 1:-1, 1:-1]  # (the border's filter sees only part of the board)
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-6)
    assert resize_views([a], 32)[0] is a


class _SideRecorder(nn.Module):
    """A tiny backbone that records the side of every batch it sees in training mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.sides: list[int] = []

    def forward(self, x):
        if self.training:
            self.sides.append(x.shape[-1])
        return self.conv(x).mean(dim=(2, 3))


def _tiny(tmp_path, *pairs):
    settings = [
        ("data.train", ["digits"]),
        ("data.eval", []),
        ("data.limit", 128),
        ("data.workers", 0),
        ("train.batch_size", 32),
        ("train.epochs", 2),
        ("train.precision", "fp32"),
        ("train.out", str(tmp_path / "run")),
        ("model.projector", "16-16"),
        ("augment.image_size", 16),
        ("monitor.knn_every_epochs", 0),
        ("monitor.picture_every", 0),
        *pairs,
    ]
    return make_config("demo", [override(key, value) for key, value in settings])


def test_pretraining_feeds_the_scheduled_sides(tmp_path):
    config = _tiny(tmp_path, ("train.progressive_start", 8), ("train.progressive_ramp", [0.25, 0.75]))
    recorder = _SideRecorder()
    pretrain(config, backbone=recorder)
    total = 2 * 128 // 32
    expected = [view_side(step, total, 8, 16, (0.25, 0.75)) for step in range(total)]
    assert expected[0] == 8 and expected[-1] == 16
    assert recorder.sides == [side for side in expected for _ in range(2)]  # views A and B of each step


def test_a_progressive_start_above_the_image_size_is_refused(tmp_path):
    with pytest.raises(BarlowTwinsError, match="progressive_start"):
        _tiny(tmp_path, ("train.progressive_start", 32))


def _simulated_run(
    beta: float, cost, taken: bool = True, unit: float = 0.01, seconds: float = 30.0, first_call: float = 0.0
) -> tuple[float, bool, list[int]]:
    """A budgeted low-resolution-first run of ``seconds`` whose steps take ``unit`` x (the side's pixel share) **
    beta, plus ``first_call`` seconds at the first step of each side (a CPU library preparing its kernels for a
    new shape), the side as the loop takes it (full size while the budget probes), each step's cost as taken
    told to the budget (``taken``; else the budget books the plan's): the training time, whether the plan's last
    step was reached, and the plan after each step."""
    start, end, ramp = 64, 128, (0.5, 0.85)
    now = [0.0]
    budget = Budget(seconds=seconds, max_steps=100_000, clock=lambda: now[0], cost=cost)
    step = planned = 0
    plans, sides = [], set()
    while step < budget.total_steps:
        planned = budget.total_steps  # the plan the last step was taken under
        side = end if budget.probing() else view_side(step, planned, start, end, ramp)
        now[0] += unit * ((side / end) ** 2) ** beta + (first_call if side not in sides else 0.0)
        sides.add(side)
        step += 1
        plans.append(budget.step_done(step, (side / end) ** 2 if taken else None))
    return budget.spent, step == planned, plans


@pytest.mark.parametrize("beta", [1.0, 0.6])  # step time as the pixels (a GPU), or as this CPU's at 64-128 px
def test_the_budget_fits_the_growing_steps_into_the_time(beta):
    """The plan ends the run (its schedule complete) within 3 % of the budget; a plan blind to the costs overruns
    it and cuts the schedule."""
    spent, completed, _ = _simulated_run(beta, partial(step_cost, start=64, end=128, ramp=(0.5, 0.85)))
    assert completed and 0.97 * 30.0 <= spent <= 30.0 + 0.01
    spent_blind, completed_blind, _ = _simulated_run(beta, None, taken=False)  # every step costs the same
    assert spent_blind >= 30.0 and not completed_blind  # out of time before its planned end: the schedule is cut


@pytest.mark.parametrize("unit", [12.4, 1.3])  # seconds a 128 px step took: fp32 without AVX-512, bf16 with it
def test_a_budget_of_few_slow_steps_is_filled_although_steps_stray_from_the_model(unit, monkeypatch):
    """Each side's first step costs 5 s more than the power law says, so the probe's full-size steps mislead the
    first plans. Re-planning through the run (about 25 times, at most 100 steps apart) still ends the schedule
    within 1 % of a 20-minute budget; a plan made at step 102 and held (the old rule: re-plan every 100 steps)
    stopped the few-step run 12 % early, as a real one of 174 steps stopped at 18.5 of 20 minutes."""
    cost = partial(step_cost, start=64, end=128, ramp=(0.5, 0.85))
    spent, completed, _ = _simulated_run(0.88, cost, unit=unit, seconds=1200.0, first_call=5.0)
    assert completed and 0.99 * 1200.0 <= spent <= 1200.0 + unit
    if unit > 10:
        monkeypatch.setattr(budget_module, "REPLANS_PER_RUN", 1)  # every 100 steps only
        held, completed, _ = _simulated_run(0.88, cost, unit=unit, seconds=1200.0, first_call=5.0)
        assert completed and held < 0.9 * 1200.0


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_the_first_plan_already_knows_how_step_time_follows_the_side(beta, monkeypatch):
    """The budget times full-size steps right after the settling ones (``Budget.probing``) and books each step at
    the side it was taken at, so its first plan (after 5 timed steps) is the plan the run ends with (within 1 %),
    whatever the machine's beta, and the plan stays put. Before (no probe, steps booked at the plan's cost): beta
    was taken as 1 until the ramp reached larger sides, and on a CPU's 0.6 the first plan fell far short and the
    schedule moved back and forth (the 20-minute Imagenette run planned 540 steps, then 998, and ended at 871)."""
    cost = partial(step_cost, start=64, end=128, ramp=(0.5, 0.85))
    first = SETTLE_STEPS + 5 - 1  # the step after which the first plan is made
    _, completed, plans = _simulated_run(beta, cost)
    assert completed and max(plans[first:]) - min(plans[first:]) <= 0.01 * plans[-1]
    monkeypatch.setattr(budget_module, "PROBE_STEPS", 0)
    _, _, before = _simulated_run(beta, cost, taken=False)
    assert max(before[first:]) - min(before[first:]) > 0.05 * before[-1]  # the plan moved
    if beta != 1.0:
        assert before[first] < 0.8 * before[-1]
    assert Budget(seconds=30.0, max_steps=10, cost=cost).probing() is False  # settling steps first
    assert Budget(seconds=None, max_steps=10, cost=cost).probing() is False  # no budget: no probe
    assert Budget(seconds=30.0, max_steps=10).probing() is False  # steps of one cost: nothing to learn


def test_step_cost_is_the_share_of_the_pixels():
    progress = np.array([0.0, 0.5, 0.675, 0.85, 1.0])
    sides = np.array([64, 64, 96, 128, 128])
    assert np.allclose(step_cost(progress, 64, 128, (0.5, 0.85)), (sides / 128) ** 2)


@pytest.mark.parametrize("crops", ["batch", "sample"])
def test_the_whole_batch_path_makes_the_views_at_the_planned_side(tmp_path, monkeypatch, crops):
    """Whole batches (the digits: one shape) are cropped straight to each step's side, so the loop has nothing
    left to shrink; crops cut per sample in loader workers come at augment.image_size and the loop shrinks them.
    The backbone sees the planned sides either way."""
    from barlowtwins.train import loop

    made, real_next_views = [], loop._next_views

    def recording_next_views(*args):
        views, labels = real_next_views(*args)
        made.append(views[0].shape[-1])  # as the batch comes, before the loop shrinks it
        return views, labels

    monkeypatch.setattr(loop, "_next_views", recording_next_views)
    ramp = (("train.progressive_start", 8), ("train.progressive_ramp", [0.25, 0.75]), ("data.crops", crops))
    recorder = _SideRecorder()
    pretrain(_tiny(tmp_path, *ramp), backbone=recorder)
    planned = [view_side(step, 8, 8, 16, (0.25, 0.75)) for step in range(8)]
    assert recorder.sides == [side for side in planned for _ in range(2)] and min(planned) == 8
    assert made == (planned if crops == "batch" else [16] * 8)


def test_a_progressive_run_interrupted_and_resumed_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Without a time budget each step's side is a function of the step, so the first batch after resuming
    (made at a side between the start and the image size) is the one the uninterrupted run made: the same
    sides and weights, bit for bit (as tests/train/test_pretrain.py's run without low resolution first)."""
    from barlowtwins.checkpoint import load_checkpoint
    from barlowtwins.train import loop

    settings = (
        ("augment.image_size", 24),
        ("train.progressive_start", 8),
        ("train.progressive_ramp", [0.0, 1.0]),
        ("train.checkpoint_every", 1),
    )
    planned = [view_side(step, 8, 8, 24, (0.0, 1.0)) for step in range(8)]
    assert planned[:3] == [8, 8, 16] and planned[-1] == 24  # the resumed run starts at step 2, at 16 px

    def run(out: str) -> _SideRecorder:
        torch.manual_seed(0)  # the same initial weights
        recorder = _SideRecorder()
        pretrain(_tiny(tmp_path / out, *settings), backbone=recorder)
        return recorder

    straight = run("straight")
    real_lr_factor = loop.lr_factor

    def crash_at_step_2(step, *rest):
        if step == 2:  # steps 0 and 1 are done, the checkpoint of step 2 is on disk
            raise KeyboardInterrupt
        return real_lr_factor(step, *rest)

    monkeypatch.setattr(loop, "lr_factor", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run("interrupted")
    assert load_checkpoint(tmp_path / "interrupted" / "run")["step"] == 2
    monkeypatch.setattr(loop, "lr_factor", real_lr_factor)
    resumed = run("interrupted")

    assert resumed.sides == [side for side in planned[2:] for _ in range(2)]
    assert straight.sides == [side for side in planned for _ in range(2)]
    a, b = (load_checkpoint(tmp_path / out / "run") for out in ("straight", "interrupted"))
    assert b["step"] == 8 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
