"""``pretrain(config)``: the one training loop (paper §2.2) for any method, on CPU, one GPU or torchrun.

Setup builds the pieces from the config; the loop then runs ``train_step`` until the schedule ends,
logging and checkpointing through :class:`~barlowtwins.train.run_dir.RunDir`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from barlowtwins import distributed
from barlowtwins.config import EvalInputs, PretrainConfig
from barlowtwins.data import ImageSource, open_source, resolve_workers, training_batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate import knn
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import initial_backbone
from barlowtwins.optim import build_optimizer, lr_factor, set_learning_rate
from barlowtwins.runtime import autocast_dtype, precision_name, seed_everything, select_device
from barlowtwins.train.run_dir import RunDir
from barlowtwins.views import two_views


def build_method(config: PretrainConfig) -> nn.Module:
    """The method's networks and loss, the backbone initialised from ``train.seed`` (see ``initial_backbone``)."""
    m = config.model
    if m.method not in METHODS:
        raise BarlowTwinsError(f"model.method must be one of {', '.join(METHODS)} (got '{m.method}')")
    backbone = initial_backbone(m.arch, m.small_stem, config.train.seed)
    return METHODS[m.method](backbone, m, config.loss)


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
    scaler: torch.amp.GradScaler
    source: ImageSource
    device: torch.device
    dtype: torch.dtype | None
    memory_format: torch.memory_format
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain as ``config`` says; returns the run directory. Resumes automatically from its checkpoint."""
    t, o = config.train, config.optim
    s = _setup(config)
    run = RunDir(Path(t.out), distributed.is_main_process())
    step = run.start(config, s.method, s.optimizer, s.scaler)
    seed_everything(t.seed + 1000 * distributed.rank() + step)  # augmentations differ per process and resume
    batches = training_batches(
        s.source,
        two_views(**dataclasses.asdict(config.augment)),
        t.batch_size // distributed.world_size(),
        resolve_workers(config.data.workers),
        t.seed,
        s.device,
        start_epoch=step // s.steps_per_epoch,
        skip_batches=step % s.steps_per_epoch,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    _announce(config, s, run)
    progress = tqdm(
        total=s.total_steps,
        initial=step,
        disable=not run.main,
        unit="step",
        dynamic_ncols=True,
        mininterval=1 if sys.stderr.isatty() else 30,
    )
    s.trainer.train()
    window = time.perf_counter(), step
    with run, progress:
        while step < s.total_steps:
            views, _, _ = next(batches)
            views = [v.to(s.device, non_blocking=True, memory_format=s.memory_format) for v in views]
            set_learning_rate(s.optimizer, lr_factor(step, s.total_steps, s.warmup_steps, o.final_lr_ratio))
            terms = train_step(s.trainer, s.optimizer, s.scaler, views, s.dtype)
            s.method.after_step(step, s.total_steps)
            step += 1
            progress.update(1)
            if step % t.log_every == 0 or step == s.total_steps:
                record = _record(s, terms, step, t.batch_size * (step - window[1]) / (time.perf_counter() - window[0]))
                run.log(record, (*s.method.logged, "lr_weights"))
                progress.set_postfix({k: f"{record[k]:.3g}" for k in (*s.method.shown, "images_per_s")}, refresh=False)
                window = time.perf_counter(), step
            if (
                step % s.steps_per_epoch == 0
                or step == s.total_steps
                or (t.checkpoint_every and step % t.checkpoint_every == 0)
            ):
                run.save(s.method, s.optimizer, s.scaler, config, step, s.steps_per_epoch)
    # Leave the process group before rank 0 evaluates alone: other ranks waiting at a barrier would time out
    # (30 min) during a long kNN; in eval mode the synchronised batch norms need no process group.
    distributed.barrier()
    distributed.shutdown()
    if run.main:
        run.plot(s.method.terms, s.method.diagnostics)
        if config.data.eval:
            knn.run(eval_inputs(config, run.path), config.knn)
    return run.path


def _setup(config: PretrainConfig) -> _Setup:
    t, d, o = config.train, config.data, config.optim
    device = select_device(t.device)
    local_rank = distributed.init_from_environment(device.type)
    if device.type == "cuda" and distributed.is_distributed():
        device = torch.device("cuda", local_rank)
    world = distributed.world_size()
    if t.batch_size % world:
        raise BarlowTwinsError(f"batch size {t.batch_size} must be divisible by the {world} processes")
    source = open_source(d.train, d.root, d.download, d.limit)
    if source.num_samples < t.batch_size:
        raise BarlowTwinsError(
            f"batch size {t.batch_size} is larger than the dataset ({source.num_samples} samples); lower --batch-size"
        )
    steps_per_epoch = source.num_samples // t.batch_size
    method = build_method(config)
    if distributed.is_distributed():
        method = distributed.convert_sync_batchnorm(method, device.type)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = build_optimizer(
        method,
        method.no_weight_decay(),
        o.optimizer,
        t.batch_size,
        o.lr_weights,
        o.lr_biases,
        o.weight_decay,
        o.momentum,
        o.lars_eta,
    )
    dtype = autocast_dtype(t.precision, device)
    trainer = method
    if distributed.is_distributed():
        trainer = nn.parallel.DistributedDataParallel(
            method, device_ids=[local_rank] if device.type == "cuda" else None
        )
    return _Setup(
        method,
        trainer,
        optimizer,
        torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        source,
        device,
        dtype,
        memory_format,
        steps_per_epoch,
        t.epochs * steps_per_epoch,
        round(o.warmup_epochs * steps_per_epoch),
    )


def _announce(config: PretrainConfig, s: _Setup, run: RunDir) -> None:
    if run.main:
        m, t = config.model, config.train
        print(
            f"pretraining {m.method}: {m.arch} + projector {m.projector} on {s.source.description}; "
            f"{s.steps_per_epoch} steps/epoch, batch {t.batch_size} over {distributed.world_size()} process(es), "
            f"{s.device}, {precision_name(s.dtype)}; run directory {run.path}",
            flush=True,
        )


def _record(s: _Setup, terms: dict[str, Any], step: int, images_per_s: float) -> dict[str, Any]:
    """The metrics.jsonl line of ``step`` (the one host sync of a logged step); stops on a non-finite loss."""
    values = {name: None if terms[name] is None else terms[name].item() for name in s.method.logged}
    if not math.isfinite(values["loss"]):
        raise BarlowTwinsError(
            f"the loss became {values['loss']} at step {step}; lower optim.lr_weights, "
            "or use --precision fp32 if you trained in fp16"
        )
    return {
        "epoch": step / s.steps_per_epoch,
        "step": step,
        "lr_weights": s.optimizer.param_groups[0]["lr"],
        **values,
        "images_per_s": images_per_s,
        "time": time.time(),
    }


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
