"""``pretrain(config)``: the one training loop (paper §2.2) for any method, on CPU, one GPU or torchrun.

:mod:`barlowtwins.train.build` makes the pieces from the config; the loop then runs ``train_step`` until the
schedule ends (the epochs, or the steps that fit a time budget), logging and checkpointing through
:class:`~barlowtwins.train.run_dir.RunDir`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from barlowtwins import distributed
from barlowtwins.config import PretrainConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import CUSTOM, Backbone
from barlowtwins.optim import lr_factor, set_learning_rate
from barlowtwins.runtime import precision_name, seed_everything
from barlowtwins.train.budget import Budget
from barlowtwins.train.build import (
    Setup,
    build_monitor,
    build_setup,
    choose_precision,
    grad_scaler,
    on_device,
    training_batches,
)
from barlowtwins.train.divergence import FiniteWatch
from barlowtwins.train.end import evaluate_run, finished_run
from barlowtwins.train.monitor import Monitor
from barlowtwins.train.preemption import Preemption
from barlowtwins.train.resolution import resize_views, step_cost, view_side
from barlowtwins.train.run_dir import RunDir
from barlowtwins.validation import parse_duration

logger = logging.getLogger(__name__)


def train_step(trainer: nn.Module, optimizer, scaler, views, dtype: torch.dtype | None) -> dict[str, Any]:
    """One optimiser step on a batch of views; returns the method's terms (tensors, no host sync)."""
    autocast = torch.autocast(views[0].device.type, dtype=dtype) if dtype is not None else nullcontext()
    with autocast:
        terms = trainer(*views)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return terms


def pretrain(config: PretrainConfig, backbone: Backbone | nn.Module | None = None, eval_only: bool = False) -> Path:
    """Pretrain as ``config`` says; returns the run directory. Resumes from its checkpoint; a finished run is left
    as it is, unless ``eval_only``: its evaluation runs again (eval/knn.json). ``backbone`` (``custom_backbone``, or
    any module: ``as_backbone``) replaces ``model.arch``: the run records arch ``custom``; resuming needs it again."""
    if backbone is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=CUSTOM, small_stem=False))
    if eval_only and (not config.data.eval or config.model.arch == CUSTOM):
        raise BarlowTwinsError("--eval-only runs the kNN evaluation on --eval-data: pass --eval-data (labelled data)")
    training, optim = config.train, config.optim
    setup = build_setup(config, backbone)
    scaler = grad_scaler(training.precision, setup.device)
    run = RunDir(Path(training.out), distributed.is_main_process())
    progress = run.start(
        config, setup.method, setup.optimizer, scaler, training.epochs * setup.steps_per_epoch, eval_only, setup.init
    )
    if progress["finished"]:
        return finished_run(config, run, progress["step"], eval_only)
    monitor = build_monitor(config, setup, run, progress["monitor"])
    run.extra_state = monitor.state_dict  # the online probe's state goes into each checkpoint
    step = progress["step"]
    seed_everything(training.seed + 1000 * distributed.rank() + step)  # augmentations differ per process and resume
    setup_started = time.perf_counter()
    budget = _budget(config, setup, progress)
    batches = training_batches(config, setup, step, _planned_side(config, budget, lambda: step))  # step read then
    views, labels = _next_views(batches, setup)
    dtype = choose_precision(config, setup, views, run.main, progress["precision"])
    run.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]  # as --precision says it
    configured_warmup = round(optim.warmup_epochs * setup.steps_per_epoch)  # capped under a budget, as it plans
    _announce(config, setup, run, dtype, budget, time.perf_counter() - setup_started)
    bar = _progress_bar(budget.total_steps, step, run.main)
    setup.trainer.train()
    window, watch = (time.perf_counter(), step), FiniteWatch(step)
    budget.restart_clock()
    with run, bar, Preemption(setup.device, training.log_every) as preemption:
        while step < budget.total_steps:
            warmup = budget.warmup_steps(configured_warmup)
            set_learning_rate(setup.optimizer, lr_factor(step, budget.total_steps, warmup, optim.final_lr_ratio))
            side = _side(step, budget, config)
            terms = train_step(setup.trainer, setup.optimizer, scaler, resize_views(views, side), dtype)
            watch.add(terms["loss"])
            setup.method.after_step(step, budget.total_steps)
            step += 1
            total = budget.step_done(step, (side / config.augment.image_size) ** 2)  # the pixels it took
            bar.total = total
            bar.update(1)
            monitor.train_probe(terms, labels)
            if step % training.log_every == 0 or step == total or monitor.due(step, total):
                watch.check(step, run.path, run.saved_step)
                window = _log_row(setup, run, monitor, budget, bar, terms, step, total, training.batch_size, window)
            stop = preemption.requested(step)
            if stop or _checkpoint_due(step, total, setup.steps_per_epoch, training.checkpoint_every):
                _checkpoint(config, setup, run, watch, scaler, step, budget.spent, total)
            if stop:
                raise preemption.stop(step, run.path)
            if step < total:
                views, labels = _next_views(batches, setup)
    _finish(config, setup, run, budget)
    return run.path


def _side(step: int, budget: Budget, config: PretrainConfig) -> int:
    """The side of views A and B at ``step`` of the plan under low resolution first (train.progressive_start;
    otherwise augment.image_size); full size while the budget times full-cost steps (``Budget.probing``). The
    whole-batch path makes the views at this side (:func:`_planned_side`); on other paths they are shrunk to it."""
    start, end, ramp = _sides(config)
    return end if budget.probing() else view_side(step, budget.total_steps, start, end, ramp)


def _planned_side(config: PretrainConfig, budget: Budget, step: Callable[[], int]) -> Callable[[], int] | None:
    """For the batches: the side of the views of step ``step()`` (the loop's counter, read as a batch is made:
    the step that batch is for, since the loop asks for the next batch right after counting a step), in the
    plan as it stands (the side :func:`_side` gives the step; without a time budget a function of the step alone,
    so a resumed run makes the views an uninterrupted one does). None without low resolution first."""
    if not config.train.progressive_start:
        return None
    return lambda: _side(step(), budget, config)


def _sides(config: PretrainConfig) -> tuple[int, int, tuple[float, float]]:
    """Low-resolution first (train.progressive_start, 0: off): the first side, the last, and the ramp."""
    return config.train.progressive_start, config.augment.image_size, config.train.progressive_ramp


def _checkpoint(
    config: PretrainConfig,
    setup: Setup,
    run: RunDir,
    watch: FiniteWatch,
    scaler: torch.amp.GradScaler,
    step: int,
    spent: float,
    total: int,
) -> None:
    """Save ``checkpoint.pt`` at ``step``, after checking that the weights are finite (never replace a good one)."""
    watch.check(step, run.path, run.saved_step, setup.method, setup.optimizer)
    run.save(setup.method, setup.optimizer, scaler, config, step, setup.steps_per_epoch, spent, total)


def _budget(config: PretrainConfig, setup: Setup, progress: dict[str, Any]) -> Budget:
    """The run's steps: its epochs, or those that fit ``train.time_budget`` (the ranks agree on the count)."""
    sides = _sides(config)
    return Budget(
        parse_duration(config.train.time_budget),
        config.train.epochs * setup.steps_per_epoch,
        progress["train_seconds"] or 0.0,
        progress["total_steps"],
        agree=distributed.broadcast_object if distributed.is_distributed() else None,
        cost=partial(step_cost, start=sides[0], end=sides[1], ramp=sides[2])
        if sides[0]
        else None,  # low-resolution first: cheaper early steps
    )


def _next_views(batches: Iterator, setup: Setup) -> tuple[list[torch.Tensor], Any]:
    """The next batch's views on the training device, and its labels (left where they are)."""
    batch = next(batches)
    return on_device(batch[0], setup), batch[1]


def _log_row(
    setup: Setup,
    run: RunDir,
    monitor: Monitor,
    budget: Budget,
    bar: tqdm,
    terms: dict[str, Any],
    step: int,
    total: int,
    batch_size: int,
    window: tuple[float, int],
) -> tuple[float, int]:
    """Write the metrics row of ``step`` with the monitor's fields (their time is not training time) and show it
    on the bar; returns the new throughput window ``(time, step)``."""
    images_per_s = batch_size * (step - window[1]) / (time.perf_counter() - window[0])
    record = _record(setup, terms, step, images_per_s)
    with budget.paused():  # the monitor's kNN and pictures are evaluation, not training time
        record.update(monitor.watch(step, total, terms))
    run.log(record, (*setup.method.logged, "lr_weights", *monitor.scalars))
    bar.set_postfix({k: f"{record[k]:.3g}" for k in (*setup.method.shown, "images_per_s")}, refresh=False)
    return time.perf_counter(), step


def _progress_bar(total: int, step: int, main: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=step,
        disable=not main,
        unit="step",
        dynamic_ncols=True,
        mininterval=1 if sys.stderr.isatty() else 30,
    )


def _checkpoint_due(step: int, total: int, steps_per_epoch: int, every: int) -> bool:
    """At each epoch's end, at the last step, and every ``every`` steps if set (``train.checkpoint_every``)."""
    return step % steps_per_epoch == 0 or step == total or bool(every and step % every == 0)


def _announce(config, setup: Setup, run: RunDir, dtype, budget: Budget, setup_seconds: float) -> None:
    if run.main:
        model, training = config.model, config.train
        plan = f"{budget.total_steps} steps"
        if training.time_budget:
            plan = f"steps fitted to a {training.time_budget} budget as it runs (at most {budget.max_steps})"
        logger.info(
            f"pretraining {model.method}: {model.arch} + projector {model.projector} on {setup.source.description}; "
            f"{setup.steps_per_epoch} steps/epoch, {plan}, batch {training.batch_size} over {distributed.world_size()} "
            f"process(es), {setup.device}, {precision_name(dtype)}, {config.data.views} views "
            f"(data ready in {setup_seconds:.0f} s); run directory {run.path}"
        )


def _record(setup: Setup, terms: dict[str, Any], step: int, images_per_s: float) -> dict[str, Any]:
    """The metrics.jsonl line of ``step`` (the one host sync of a logged step; ``FiniteWatch`` has checked it)."""
    values = {name: None if terms[name] is None else terms[name].item() for name in setup.method.logged}
    return {
        "epoch": step / setup.steps_per_epoch,
        "step": step,
        "lr_weights": setup.optimizer.param_groups[0]["lr"],
        **values,
        "images_per_s": images_per_s,
        "time": time.time(),
    }


def _finish(config: PretrainConfig, setup: Setup, run: RunDir, budget: Budget) -> None:
    """Plot, evaluate (kNN beside the random-init floor), and write training and evaluation minutes."""
    # Leave the process group before rank 0 evaluates alone: other ranks waiting at a barrier would time out
    # (30 min) during a long kNN; in eval mode the synchronised batch norms need no process group.
    distributed.barrier()
    distributed.shutdown()
    if not run.main:
        return
    run.plot(setup.method.terms, setup.method.diagnostics)
    started = time.perf_counter()
    evaluate_run(config, run.path)
    minutes = {
        "train_minutes": budget.spent / 60,
        "monitor_minutes": budget.paused_seconds / 60,  # this session's kNN and pictures while training
        "eval_minutes": (time.perf_counter() - started) / 60,
    }
    totals = {"steps": budget.total_steps, "time_budget": config.train.time_budget, "precision": run.precision}
    run.write_json("timing.json", {**minutes, **totals})
    logger.info(
        "trained %.1f min (monitor %.1f min apart), evaluated %.1f min",
        minutes["train_minutes"],
        minutes["monitor_minutes"],
        minutes["eval_minutes"],
    )
