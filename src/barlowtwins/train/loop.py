"""``pretrain(config)``: the one training loop (paper §2.2) for any method, on CPU, one GPU or torchrun.

Setup builds the pieces from the config; the loop then runs ``train_step`` until the schedule ends (the
epochs, or the steps that fit a time budget), logging and checkpointing through
:class:`~barlowtwins.train.run_dir.RunDir`.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from barlowtwins import distributed, methods
from barlowtwins.config import EvalInputs, PretrainConfig
from barlowtwins.data import ImageSource, open_source
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate import knn
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import CUSTOM, Backbone, initial_backbone
from barlowtwins.optim import build_optimizer, lr_factor, set_learning_rate
from barlowtwins.runtime import autocast_dtype, fastest_dtype, precision_name, seed_everything, select_device
from barlowtwins.train.budget import Budget
from barlowtwins.train.divergence import FiniteWatch
from barlowtwins.train.inputs import view_batches
from barlowtwins.train.monitor import Monitor
from barlowtwins.train.preemption import Preemption
from barlowtwins.train.run_dir import RunDir
from barlowtwins.validation import parse_duration


def build_method(config: PretrainConfig, backbone: Backbone | None = None) -> nn.Module:
    """The method's networks and loss, the backbone initialised from ``train.seed`` (see ``initial_backbone``)
    unless a module built in Python is given (``custom_backbone``)."""
    m = config.model
    if m.method not in METHODS:  # before building a backbone
        raise BarlowTwinsError(f"model.method must be one of {', '.join(METHODS)} (got '{m.method}')")
    if backbone is None:
        backbone = initial_backbone(m.arch, m.small_stem, config.train.seed, m.stem_stride)
    return methods.build_method(m.method, backbone, m, config.loss)


def run_optimizer(config: PretrainConfig, method: nn.Module) -> torch.optim.Optimizer:
    """The optimiser a run of ``config`` trains ``method`` with (``optim`` settings, ``train.batch_size``)."""
    o = config.optim
    return build_optimizer(
        method,
        method.no_weight_decay(),
        o.optimizer,
        config.train.batch_size,
        o.lr_weights,
        o.lr_biases,
        o.weight_decay,
        o.momentum,
        o.lars_eta,
        o.clip_lr,
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


def pretrain(config: PretrainConfig, backbone: Backbone | None = None) -> Path:
    """Pretrain as ``config`` says; returns the run directory. Resumes automatically from its checkpoint.

    ``backbone`` (from ``models.backbones.custom_backbone``) replaces ``model.arch``; the run records arch
    ``custom``, and resuming needs the same module again.
    """
    if backbone is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=CUSTOM, small_stem=False))
    t, o = config.train, config.optim
    s = _setup(config, backbone)
    scaler = torch.amp.GradScaler(s.device.type, enabled=autocast_dtype(t.precision, s.device) == torch.float16)
    run = RunDir(Path(t.out), distributed.is_main_process())
    progress = run.start(config, s.method, s.optimizer, scaler)
    monitor = Monitor(config, s.method, s.source, s.steps_per_epoch, s.device, run, progress["monitor"])
    run.extra_state = monitor.state_dict  # the online probe's state goes into each checkpoint
    step = progress["step"]
    seed_everything(t.seed + 1000 * distributed.rank() + step)  # augmentations differ per process and resume
    setup_started = time.perf_counter()
    batches = _batches(config, s, step)
    batch = next(batches)
    views, labels = _on_device(batch[0], s), batch[1]
    dtype = _precision(config, s, views, run.main, progress["precision"])
    run.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]  # as --precision says it
    budget = Budget(
        parse_duration(t.time_budget),
        t.epochs * s.steps_per_epoch,
        progress["train_seconds"] or 0.0,
        progress["total_steps"],
        agree=distributed.broadcast_object if distributed.is_distributed() else None,
    )
    configured_warmup = round(o.warmup_epochs * s.steps_per_epoch)
    warmup = budget.warmup_steps(configured_warmup)
    _announce(config, s, run, dtype, budget, time.perf_counter() - setup_started)
    bar = _progress_bar(budget.total_steps, step, run.main)
    s.trainer.train()
    window, watch = (time.perf_counter(), step), FiniteWatch(step)
    budget.restart_clock()
    with run, bar, Preemption(s.device, t.log_every) as preemption:
        while step < budget.total_steps:
            set_learning_rate(s.optimizer, lr_factor(step, budget.total_steps, warmup, o.final_lr_ratio))
            terms = train_step(s.trainer, s.optimizer, scaler, views, dtype)
            watch.add(terms["loss"])
            s.method.after_step(step, budget.total_steps)
            step += 1
            total = budget.step_done(step)
            warmup, bar.total = budget.warmup_steps(configured_warmup), total
            bar.update(1)
            monitor.train_probe(terms, labels)
            if step % t.log_every == 0 or step == total or monitor.due(step, total):
                watch.check(step, run.path, run.saved_step)
                record = _record(s, terms, step, t.batch_size * (step - window[1]) / (time.perf_counter() - window[0]))
                with budget.paused():  # the monitor's kNN and pictures are evaluation, not training time
                    record.update(monitor.watch(step, total, terms))
                run.log(record, (*s.method.logged, "lr_weights", *monitor.scalars))
                bar.set_postfix({k: f"{record[k]:.3g}" for k in (*s.method.shown, "images_per_s")}, refresh=False)
                window = time.perf_counter(), step
            stop = preemption.requested(step)
            if stop or _checkpoint_due(step, total, s.steps_per_epoch, t.checkpoint_every):
                watch.check(step, run.path, run.saved_step, s.method, s.optimizer)
                run.save(s.method, s.optimizer, scaler, config, step, s.steps_per_epoch, budget.spent, total)
            if stop:
                raise preemption.stop(step, run.path)
            if step < total:
                batch = next(batches)
                views, labels = _on_device(batch[0], s), batch[1]
    _finish(config, s, run, budget)
    return run.path


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


def _setup(config: PretrainConfig, backbone: Backbone | None = None) -> _Setup:
    t, d = config.train, config.data
    device, local_rank = distributed.join(select_device(t.device), t.batch_size)
    source = open_source(d.train, d.root, d.download, d.limit)
    if d.eval:  # a wrong --eval-data fails here, before the run directory is written, not after training
        open_source(d.eval, d.root, d.download, 1, what="--eval-data")
    if source.num_samples < t.batch_size:
        raise BarlowTwinsError(
            f"batch size {t.batch_size} is larger than the dataset ({source.num_samples} samples); lower --batch-size"
        )
    method = build_method(config, backbone)
    if distributed.is_distributed():
        method = distributed.convert_sync_batchnorm(method, device.type)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = run_optimizer(config, method)
    trainer = method
    if distributed.is_distributed():
        trainer = nn.parallel.DistributedDataParallel(
            method, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if t.compile:
        trainer = torch.compile(trainer)
    return _Setup(method, trainer, optimizer, source, device, memory_format, source.num_samples // t.batch_size)


def _batches(config: PretrainConfig, s: _Setup, step: int) -> Iterator:
    """This process's training batches from ``step`` on (:func:`barlowtwins.train.inputs.view_batches`)."""
    return view_batches(config, s.device, s.source, step)


def _on_device(views, s: _Setup) -> list[torch.Tensor]:
    return [v.to(s.device, non_blocking=True, memory_format=s.memory_format) for v in views]


def _precision(
    config: PretrainConfig, s: _Setup, views: list[torch.Tensor], main: bool, resumed: str | None
) -> torch.dtype | None:
    """The autocast dtype; ``auto`` on a CPU measures fp32 against bf16 on a copy of the model (same on all ranks),
    except when resuming: a run keeps the precision it started with (``resumed``), so it resumes bit for bit."""
    if config.train.precision != "auto" or s.device.type != "cpu":
        return autocast_dtype(config.train.precision, s.device)
    if resumed is not None:
        return autocast_dtype(resumed, s.device)
    probe = copy.deepcopy(s.method).eval()  # eval: no batch-norm statistics change, no collectives
    n = max(8, len(views[0]) // 4)  # a quarter batch: the ratio is what counts (small views: n per small view)
    views = [v[: n * (len(v) // len(views[0]))] for v in views]

    def forward_backward(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            loss = probe(*views)["loss"]
        loss.backward()

    dtype, seconds = fastest_dtype(forward_backward)
    dtype = distributed.broadcast_object(dtype)
    if main:
        shown = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
        print(f"precision auto: measured forward + backward ({shown}); using {precision_name(dtype)}", flush=True)
    return dtype


def _announce(config, s: _Setup, run: RunDir, dtype, budget: Budget, setup_seconds: float) -> None:
    if run.main:
        m, t = config.model, config.train
        plan = f"{budget.total_steps} steps"
        if t.time_budget:
            plan = f"steps fitted to a {t.time_budget} budget as it runs (at most {budget.max_steps})"
        print(
            f"pretraining {m.method}: {m.arch} + projector {m.projector} on {s.source.description}; "
            f"{s.steps_per_epoch} steps/epoch, {plan}, batch {t.batch_size} over {distributed.world_size()} "
            f"process(es), {s.device}, {precision_name(dtype)}, {config.data.views} views "
            f"(data ready in {setup_seconds:.0f} s); run directory {run.path}",
            flush=True,
        )


def _record(s: _Setup, terms: dict[str, Any], step: int, images_per_s: float) -> dict[str, Any]:
    """The metrics.jsonl line of ``step`` (the one host sync of a logged step; ``FiniteWatch`` has checked it)."""
    values = {name: None if terms[name] is None else terms[name].item() for name in s.method.logged}
    return {
        "epoch": step / s.steps_per_epoch,
        "step": step,
        "lr_weights": s.optimizer.param_groups[0]["lr"],
        **values,
        "images_per_s": images_per_s,
        "time": time.time(),
    }


def _finish(config: PretrainConfig, s: _Setup, run: RunDir, budget: Budget) -> None:
    """Plot, evaluate (kNN beside the random-init floor), and write training and evaluation minutes."""
    # Leave the process group before rank 0 evaluates alone: other ranks waiting at a barrier would time out
    # (30 min) during a long kNN; in eval mode the synchronised batch norms need no process group.
    distributed.barrier()
    distributed.shutdown()
    if not run.main:
        return
    run.plot(s.method.terms, s.method.diagnostics)
    started = time.perf_counter()
    if config.data.eval and config.model.arch == CUSTOM:
        print("kNN skipped: a custom backbone cannot be rebuilt by name; use evaluate.knn.knn_eval from Python")
    elif config.data.eval:
        knn.run(eval_inputs(config, run.path), config.knn)
    minutes = {
        "train_minutes": budget.spent / 60,
        "monitor_minutes": budget.paused_seconds / 60,  # this session's kNN and pictures while training
        "eval_minutes": (time.perf_counter() - started) / 60,
    }
    run.write_json("timing.json", {**minutes, "steps": budget.total_steps, "time_budget": config.train.time_budget})
    print(
        f"trained {minutes['train_minutes']:.1f} min (monitor {minutes['monitor_minutes']:.1f} min apart), "
        f"evaluated {minutes['eval_minutes']:.1f} min",
        flush=True,
    )


def eval_inputs(config: PretrainConfig, run_dir: Path) -> EvalInputs:
    """What the evaluations read after pretraining: this run's checkpoint, its training data as the labelled
    bank, ``data.eval`` as the test set; image settings and the random-init floor come from the checkpoint."""
    d = config.data
    return EvalInputs(
        checkpoint=str(run_dir),
        train_data=d.train,
        test_data=d.eval,
        limit=d.limit,
        test_limit=d.eval_limit,
        data_root=d.root,
        download=d.download,
        device=config.train.device,
        workers=d.workers,
    )
