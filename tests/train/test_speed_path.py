"""The fast training path: decoded images, batched views per batch, the time budget, measured precision."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch

from barlowtwins.checkpoint import load_checkpoint
from barlowtwins.cli import main
from barlowtwins.config import AugmentConfig
from barlowtwins.data import open_source, sample_index
from barlowtwins.data.cache import stored_image
from barlowtwins.data.loaders import cached_training_batches, decoded
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import fastest_dtype, precision_name
from barlowtwins.train import loop
from barlowtwins.train.budget import Budget
from barlowtwins.validation import parse_duration
from barlowtwins.views.batched import training_views

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_decoded():
    source = open_source(["digits"], limit=96)
    return source, decoded(source, 8, "memory", "", workers=2)


def test_decoded_rows_are_the_stored_images_in_sample_order(digits_decoded):
    source, images = digits_decoded
    ids, labels = sample_index(source)
    assert images.ids == ids and images.labels.tolist() == labels.tolist()
    for i in (0, 17, 95):
        assert np.array_equal(images.images[i], stored_image(source.samples[i][0], 8))


def _views():
    return training_views(**dataclasses.asdict(AugmentConfig(image_size=8, blur_p=(0.0, 0.0))))


def test_cached_batches_resume_exactly_and_cover_each_epoch_once(digits_decoded):
    _, images = digits_decoded
    straight = cached_training_batches(images, _views(), 16, seed=3, device=CPU)
    first = [next(straight) for _ in range(9)]  # 6 batches per epoch: into the second epoch
    assert sorted(i for _, _, ids in first[:6] for i in ids) == sorted(images.ids)  # epoch 0: every sample once
    resumed = cached_training_batches(images, _views(), 16, seed=3, device=CPU, start_epoch=1, skip_batches=1)
    for (views, labels, ids), (again, labels_again, ids_again) in zip(first[7:], [next(resumed) for _ in range(2)]):
        assert ids == ids_again and torch.equal(labels, labels_again)
        assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))  # the same views, bit for bit
    other_seed = next(cached_training_batches(images, _views(), 16, seed=4, device=CPU))
    assert other_seed[2] != first[0][2]


def test_cached_batches_split_processes_disjointly(digits_decoded, monkeypatch):
    from barlowtwins import distributed

    _, images = digits_decoded
    seen = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        stream = cached_training_batches(images, _views(), 16, seed=0, device=CPU)
        seen.append({i for _ in range(3) for i in next(stream)[2]})
    assert len(seen[0]) == len(seen[1]) == 48 and seen[0].isdisjoint(seen[1])


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_plans_the_steps_that_fit_and_stops_when_spent():
    clock = _Clock()
    budget = Budget(seconds=30.0, max_steps=10_000, clock=clock)
    budget.restart_clock()
    totals = []
    for step in range(1, 400):
        clock.now += 0.5 if step <= 2 else 0.1  # the first steps are slow; then 0.1 s per step
        totals.append(budget.step_done(step))
        if step == totals[-1]:
            break
    assert totals[0] == 10_000  # no estimate before the clock has settled
    assert abs(totals[30] - 291) <= 1  # 1 s for 2 settling steps, then 29 s / 0.1 s
    assert step == totals[-1] and abs(budget.spent - 30.0) < 0.2  # ended on the budget, at the planned step
    assert budget.warmup_steps(1000) == 29  # the warm-up takes at most a tenth of the planned steps


def test_budget_is_absent_without_seconds_and_counts_time_across_resumes():
    clock = _Clock()
    free = Budget(seconds=None, max_steps=50, planned=7, clock=clock)
    clock.now += 5.0
    assert free.step_done(1) == 50 and free.warmup_steps(40) == 40  # the epochs decide, also on resume
    resumed = Budget(seconds=10.0, max_steps=1000, spent=9.9, planned=120, clock=clock)
    assert resumed.total_steps == 120
    resumed.restart_clock()
    clock.now += 0.2
    assert resumed.step_done(101) == 101  # the saved training time is counted: out of budget, stop here


def test_time_inside_paused_is_neither_training_time_nor_step_time():
    clock = _Clock()
    budget = Budget(seconds=30.0, max_steps=10_000, clock=clock)
    budget.restart_clock()
    for step in range(1, 40):
        clock.now += 0.1
        if step % 10 == 0:
            with budget.paused():
                clock.now += 5.0  # a monitor kNN pass: as long as 50 steps
        total = budget.step_done(step)
    assert budget.spent == pytest.approx(3.9) and budget.paused_seconds == pytest.approx(15.0)
    # 30 s / 0.1 s a step (give or take the floor of a sum of 0.1 s): the passes neither spent the budget nor
    # slowed the estimate (counted as step time, the passes would cut the plan to a fraction of it)
    assert total == pytest.approx(300, abs=1)


def test_several_processes_plan_together_at_the_same_steps():
    clock = _Clock()
    asked = []

    def main_process_plan(planned: int) -> int:  # stands in for distributed.broadcast_object
        asked.append((len(totals) + 1 - 2, planned))  # (settled steps: 2 settle first, this process's plan)
        return 250

    budget = Budget(seconds=30.0, max_steps=10_000, agree=main_process_plan, clock=clock)
    budget.restart_clock()
    totals = []
    for step in range(1, 400):
        clock.now += 0.1
        totals.append(budget.step_done(step))
        if step == totals[-1]:
            break
    # asked only where every process re-plans, known from the agreed plan: after 5 settled steps, then every
    # 10 (the agreed 250 // 25)
    assert [n for n, _ in asked] == [5, *range(10, 241, 10)]
    assert totals[5] == 10_000 and totals[6] == 250 and step == 250
    assert asked[0][1] == pytest.approx(300, abs=1)  # this process's own plan, overruled by the main process's


@pytest.mark.parametrize(("text", "seconds"), [("20m", 1200.0), ("90s", 90.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds and parse_duration("") is None


@pytest.mark.parametrize("text", ["0m", "-5s", "tenm", "m"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(BarlowTwinsError, match="90s, 20m or 1.5h"):
        parse_duration(text)


def test_fastest_dtype_takes_bf16_only_when_it_is_clearly_faster(monkeypatch):
    from barlowtwins import runtime

    clock = _Clock()
    monkeypatch.setattr(runtime.time, "perf_counter", clock)
    calls = []

    def step(cost):  # cost per call on all samples; the scout's few cost an eighth
        def run(dtype, few):
            calls.append((precision_name(dtype), few))
            clock.now += cost[dtype is not None] / (8 if few else 1)

        return run

    assert fastest_dtype(step({False: 0.05, True: 0.01}))[0] == torch.bfloat16
    assert calls == [("fp32", False)] * 2 + [("fp32", True), ("bfloat16", True)] + [("bfloat16", False)] * 2
    assert fastest_dtype(step({False: 0.01, True: 0.04}))[0] is None  # 4x: past the scout, slower on all
    dtype, seconds = fastest_dtype(step({False: 0.02, True: 0.0195}))
    assert dtype is None and seconds == pytest.approx({"fp32": 0.02, "bfloat16": 0.0195})  # within 10%: keep fp32
    calls.clear()  # emulated bf16, 10x slower: decided on the scout's few samples, never run on all
    dtype, seconds = fastest_dtype(step({False: 0.08, True: 0.8}))
    assert dtype is None and ("bfloat16", False) not in calls
    assert seconds == pytest.approx({"fp32": 0.08, "fp32 scout": 0.01, "bfloat16 scout": 0.1})


def test_time_budget_ends_the_schedule_with_a_checkpoint(tmp_path, monkeypatch):
    """A clock that advances 0.25 s per training step (exact in binary): a 6 s budget holds exactly 24 steps."""
    out = tmp_path / "run"
    args = ["pretrain", "--recipe", "demo", "--data", "digits", "--limit", "128", "--batch-size", "32"]
    args += ["--projector", "32-32", "--epochs", "1000", "--precision", "fp32", "--out", str(out)]
    args += ["--arch", "timm:test_resnet"]  # a small model: the clock is fake, the steps are real
    for off in ("monitor.knn_every_epochs=0", "monitor.picture_every=0", "monitor.probe=false"):
        args += ["--set", off]  # this test is about the schedule alone
    clock, real_step = _Clock(), loop.train_step

    def timed_step(*step_args):
        clock.now += 0.25
        return real_step(*step_args)

    monkeypatch.setattr(loop, "train_step", timed_step)
    monkeypatch.setattr(loop, "Budget", functools.partial(Budget, clock=clock))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a loaded CPU: two spinning OpenMP threads wait on each other
    try:
        assert main([*args, "--set", "train.time_budget=6s", "--set", "train.log_every=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    state = load_checkpoint(out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timing = json.loads((out / "timing.json").read_text())
    assert state["step"] == records[-1]["step"] == timing["steps"] == 24  # 6 s / 0.25 s, of 4,000 steps
    assert state["train_seconds"] == 6.0 and timing["time_budget"] == "6s"  # ends at the planned step
    assert timing["precision"] == "fp32"  # what the minutes bought depends on it (auto chooses per machine)
    cpu = json.loads((out / "meta.json").read_text())["cpu"]
    assert cpu.endswith(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peak = 0.2 * 32 / 256  # demo recipe's lr_weights, scaled by batch / 256
    assert records[-1]["lr_weights"] < 0.2 * peak  # the cosine was fitted to the steps that fit: it has decayed
    assert max(r["lr_weights"] for r in records) > 0.9 * peak  # after a warm-up that fitted too
