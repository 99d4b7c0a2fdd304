"""``pretrain(config)``: the one training loop (paper §2.2) for any method, on CPU, one GPU or torchrun.

Setup builds the pieces from the config; the loop then runs ``train_step`` until the schedule ends (the
epochs, or the steps that fit a time budget), logging and checkpointing through
:class:`~barlowtwins.train.run_dir.RunDir`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from barlowtwins import distributed, methods
from barlowtwins.config import PretrainConfig
from barlowtwins.data import ImageSource, open_source
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.init_weights import initialise
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import CUSTOM, Backbone, initial_backbone
from barlowtwins.optim import build_optimizer, lr_factor, set_learning_rate
from barlowtwins.runtime import autocast_dtype, fastest_dtype, precision_name, seed_everything, select_device
from barlowtwins.train.budget import Budget
from barlowtwins.train.divergence import FiniteWatch
from barlowtwins.train.end import evaluate_run, finished_run
from barlowtwins.train.inputs import view_batches
from barlowtwins.train.monitor import Monitor, knn_images
from barlowtwins.train.preemption import Preemption
from barlowtwins.train.preflight import check_batch_size, check_evaluation_data
from barlowtwins.train.resolution import resize_views, step_cost, view_side
from barlowtwins.train.run_dir import RunDir, holds_checkpoint
from barlowtwins.validation import parse_duration

logger = logging.getLogger(__name__)


def build_method(config: PretrainConfig, backbone: Backbone | nn.Module | None = None) -> nn.Module:
    """The method's networks and loss, the backbone initialised from ``train.seed`` (see ``initial_backbone``)
    unless a module built in Python is given (``custom_backbone``, or any module: ``as_backbone``)."""
    model = config.model
    if model.method not in METHODS:  # before building a backbone
        raise BarlowTwinsError(f"model.method must be one of {', '.join(METHODS)} (got '{model.method}')")
    if backbone is None:
        backbone = initial_backbone(model.arch, model.small_stem, config.train.seed, model.stem_stride)
    return methods.build_method(model.method, backbone, model, config.loss, config.augment.image_size)


def run_optimizer(config: PretrainConfig, method: nn.Module) -> torch.optim.Optimizer:
    """The optimiser a run of ``config`` trains ``method`` with (``optim`` settings, ``train.batch_size``)."""
    optim = config.optim
    return build_optimizer(
        method,
        method.no_weight_decay(),
        optim.optimizer,
        config.train.batch_size,
        optim.lr_weights,
        optim.lr_biases,
        optim.weight_decay,
        optim.momentum,
        optim.lars_eta,
        optim.clip_lr,
    )


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


@dataclass
class _Setup:
    method: nn.Module  # unwrapped, for state_dict and after_step
    trainer: nn.Module  # the method, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    source: ImageSource
    device: torch.device
    memory_format: torch.memory_format
    steps_per_epoch: int
    init: dict[str, Any] | None = None  # what --init took, for meta.json (None: not applied)


def pretrain(config: PretrainConfig, backbone: Backbone | nn.Module | None = None, eval_only: bool = False) -> Path:
    """Pretrain as ``config`` says; returns the run directory. Resumes automatically from its checkpoint; a
    finished run is left as it is, unless ``eval_only``: then its evaluation runs again (overwriting eval/knn.json).

    ``backbone`` (``models.backbones.custom_backbone``, or any module: ``as_backbone``) replaces ``model.arch``;
    the run records arch ``custom``, and resuming needs the same module again.
    """
    if backbone is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=CUSTOM, small_stem=False))
    if eval_only and (not config.data.eval or config.model.arch == CUSTOM):
        raise BarlowTwinsError("--eval-only runs the kNN evaluation on --eval-data: pass --eval-data (labelled data)")
    training, optim = config.train, config.optim
    setup = _setup(config, backbone)
    scaler = _grad_scaler(training.precision, setup.device)
    run = RunDir(Path(training.out), distributed.is_main_process())
    progress = run.start(
        config, setup.method, setup.optimizer, scaler, training.epochs * setup.steps_per_epoch, eval_only, setup.init
    )
    if progress["finished"]:
        return finished_run(config, run, progress["step"], eval_only)
    monitor = _monitor(config, setup, run, progress["monitor"])
    run.extra_state = monitor.state_dict  # the online probe's state goes into each checkpoint
    step = progress["step"]
    seed_everything(training.seed + 1000 * distributed.rank() + step)  # augmentations differ per process and resume
    setup_started = time.perf_counter()
    batches = _batches(config, setup, step)
    views, labels = _next_views(batches, setup)
    dtype = _precision(config, setup, views, run.main, progress["precision"])
    run.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]  # as --precision says it
    budget = _budget(config, setup, progress)
    configured_warmup = round(optim.warmup_epochs * setup.steps_per_epoch)
    warmup = budget.warmup_steps(configured_warmup)
    _announce(config, setup, run, dtype, budget, time.perf_counter() - setup_started)
    bar = _progress_bar(budget.total_steps, step, run.main)
    setup.trainer.train()
    window, watch = (time.perf_counter(), step), FiniteWatch(step)
    budget.restart_clock()
    with run, bar, Preemption(setup.device, training.log_every) as preemption:
        while step < budget.total_steps:
            set_learning_rate(setup.optimizer, lr_factor(step, budget.total_steps, warmup, optim.final_lr_ratio))
            terms = train_step(setup.trainer, setup.optimizer, scaler, _sized(views, step, budget, config), dtype)
            watch.add(terms["loss"])
            setup.method.after_step(step, budget.total_steps)
            step += 1
            total = budget.step_done(step)
            warmup, bar.total = budget.warmup_steps(configured_warmup), total
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


def _sized(views: list[torch.Tensor], step: int, budget: Budget, config: PretrainConfig) -> list[torch.Tensor]:
    """Views A and B at the side low resolution first gives ``step`` of the plan (train.progressive_start)."""
    return resize_views(views, view_side(step, budget.total_steps, *_sides(config)))


def _sides(config: PretrainConfig) -> tuple[int, int, tuple[float, float]]:
    """Low-resolution first (train.progressive_start, 0: off): the first side, the last, and the ramp."""
    return config.train.progressive_start, config.augment.image_size, config.train.progressive_ramp


def _grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, on only for fp16 autocast (fp32 and bf16 need none)."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(precision, device) == torch.float16)


def _checkpoint(
    config: PretrainConfig,
    setup: _Setup,
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


def _budget(config: PretrainConfig, setup: _Setup, progress: dict[str, Any]) -> Budget:
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


def _next_views(batches: Iterator, setup: _Setup) -> tuple[list[torch.Tensor], Any]:
    """The next batch's views on the training device, and its labels (left where they are)."""
    batch = next(batches)
    return _on_device(batch[0], setup), batch[1]


def _log_row(
    setup: _Setup,
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


def _setup(config: PretrainConfig, backbone: Backbone | nn.Module | None = None) -> _Setup:
    training, data = config.train, config.data
    device, local_rank = distributed.join(select_device(training.device), training.batch_size)
    source = open_source(data.train, data.root, data.download, data.limit)
    check_batch_size(training.batch_size, source.num_samples)
    check_evaluation_data(config, source)  # what the kNN at the end needs fails now, before the run directory
    method = build_method(config, backbone)
    init = _init(config, method) if config.model.init and not holds_checkpoint(Path(training.out)) else None
    if distributed.is_distributed():
        method = distributed.convert_sync_batchnorm(method, device.type)
    memory_format = torch.channels_last if training.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = run_optimizer(config, method)
    trainer = method
    if distributed.is_distributed():
        trainer = nn.parallel.DistributedDataParallel(
            method, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if training.compile:
        trainer = torch.compile(trainer)
    steps_per_epoch = source.num_samples // training.batch_size
    return _Setup(method, trainer, optimizer, source, device, memory_format, steps_per_epoch, init)


def _init(config: PretrainConfig, method: nn.Module) -> dict[str, Any]:
    """``--init`` on a fresh run, on every process alike, before DDP (a resumed run never re-reads it)."""
    model, images = config.model, config.augment
    settings = (model.arch, model.small_stem, model.stem_stride, images.mean, images.std)
    return initialise(method, model.init, *settings, log=distributed.is_main_process())


def _monitor(config: PretrainConfig, setup: _Setup, run: RunDir, state: dict[str, Any] | None) -> Monitor:
    """The run's :class:`Monitor` from the ``monitor``, ``knn``, ``augment`` and ``data`` settings; the main
    process decodes the kNN bank and queries (data.limit / data.eval_limit within the monitor's own limits)."""
    watch, data, images = config.monitor, config.data, config.augment
    bank = queries = None
    if run.main and watch.knn_every_epochs != 0 and data.eval:
        bank_limit = min(data.limit or watch.knn_bank_limit, watch.knn_bank_limit)
        query_limit = min(data.eval_limit or watch.knn_query_limit, watch.knn_query_limit)
        bank, queries = knn_images(
            setup.source,
            data.train,
            data.eval,
            data.root,
            data.download,
            bank_limit,
            query_limit,
            images.image_size,
            data.cache,
            data.cache_dir,
            data.workers,
        )
    samples = setup.source.samples
    return Monitor(
        setup.method,
        run,
        setup.steps_per_epoch,
        setup.device,
        bank=bank,
        queries=queries,
        training_labels=samples.labels if samples is not None else None,
        image_size=images.image_size,
        mean=images.mean,
        std=images.std,
        knn_k=config.knn.k[0],
        knn_temperature=config.knn.temperature,
        knn_batch_size=config.knn.batch_size,
        knn_every_epochs=watch.knn_every_epochs,
        knn_bank_limit=watch.knn_bank_limit,
        probe=watch.probe,
        probe_lr=watch.probe_lr,
        picture_every=watch.picture_every,
        picture_block=watch.picture_block,
        alarm_rank_fraction=watch.alarm_rank_fraction,
        alarm_constant=watch.alarm_constant,
        state=state,
    )


def _batches(config: PretrainConfig, setup: _Setup, step: int) -> Iterator:
    """This process's training batches from ``step`` on (:func:`barlowtwins.train.inputs.view_batches`)."""
    return view_batches(config, setup.device, setup.source, step)


def _on_device(views, setup: _Setup) -> list[torch.Tensor]:
    return [view.to(setup.device, non_blocking=True, memory_format=setup.memory_format) for view in views]


def _precision(
    config: PretrainConfig, setup: _Setup, views: list[torch.Tensor], main: bool, resumed: str | None
) -> torch.dtype | None:
    """The autocast dtype; ``auto`` on a CPU measures fp32 against bf16 on a copy of the model (same on all ranks),
    except when resuming: a run keeps the precision it started with (``resumed``), so it resumes bit for bit."""
    if config.train.precision != "auto" or setup.device.type != "cpu":
        return autocast_dtype(config.train.precision, setup.device)
    if resumed is not None:
        return autocast_dtype(resumed, setup.device)
    probe = copy.deepcopy(setup.method).eval()  # eval: no batch-norm statistics change, no collectives
    n = max(8, len(views[0]) // 4)  # a quarter batch: the ratio is what counts (small views: n per small view)
    views = [view[: n * (len(view) // len(views[0]))] for view in views]

    def forward_backward(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            loss = probe(*views)["loss"]
        loss.backward()

    dtype, seconds = fastest_dtype(forward_backward)
    dtype = distributed.broadcast_object(dtype)
    if main:
        shown = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
        logger.info("precision auto: measured forward + backward (%s); using %s", shown, precision_name(dtype))
    return dtype


def _announce(config, setup: _Setup, run: RunDir, dtype, budget: Budget, setup_seconds: float) -> None:
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


def _record(setup: _Setup, terms: dict[str, Any], step: int, images_per_s: float) -> dict[str, Any]:
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


def _finish(config: PretrainConfig, setup: _Setup, run: RunDir, budget: Budget) -> None:
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
    run.write_json("timing.json", {**minutes, "steps": budget.total_steps, "time_budget": config.train.time_budget})
    logger.info(
        "trained %.1f min (monitor %.1f min apart), evaluated %.1f min",
        minutes["train_minutes"],
        minutes["monitor_minutes"],
        minutes["eval_minutes"],
    )
