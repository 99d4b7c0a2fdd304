"""``pretrain(config)``: the one Barlow Twins training loop (paper §2.2), on CPU, one GPU or torchrun.

The run directory holds everything needed to trace a result to what produced it: the resolved
``config.yaml``, ``meta.json`` (package version, git commit, torch, machine, command), ``metrics.jsonl``
(one line per logged step), TensorBoard events, ``checkpoint.pt`` (rewritten atomically every epoch),
``loss.png`` and, with labelled eval data, ``knn.json`` beside the same figure at random initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from barlowtwins import distributed
from barlowtwins.augment import eval_transform, two_views
from barlowtwins.checkpoint import CHECKPOINT_NAME, FORMAT, atomic_save, atomic_write_text, load_checkpoint
from barlowtwins.config import PretrainConfig, flatten, incompatible_changes
from barlowtwins.data import ImageSource, evaluation_loader, open_source, resolve_workers, training_batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract_features
from barlowtwins.evaluate.knn import knn_accuracy
from barlowtwins.loss import BarlowTwinsLoss
from barlowtwins.model import BarlowTwins
from barlowtwins.optim import build_optimizer, lr_factor, set_learning_rate


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BarlowTwinsError(f"device '{name}' asked for, but CUDA is not available; use --device cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). 'auto': bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_metadata() -> dict[str, Any]:
    """What produced a run: versions, commit, machine and command line."""
    try:
        version = metadata.version("barlowtwins")
    except metadata.PackageNotFoundError:
        version = "unknown"

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"  # uncommitted changes: config.yaml, not the commit, says what ran
    return {
        "barlowtwins_version": version,
        "git_commit": commit or None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.system()}",
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "world_size": distributed.world_size(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def build_model(config: PretrainConfig) -> BarlowTwins:
    """The twin network, initialised from ``train.seed`` (so the random-init baseline can be rebuilt)."""
    torch.manual_seed(config.train.seed)
    m = config.model
    return BarlowTwins(m.arch, m.projector, small_stem=m.small_stem, projector_bn=m.projector_bn)


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain with Barlow Twins as ``config`` says; returns the run directory. Resumes automatically."""
    t, d = config.train, config.data
    device = select_device(t.device)
    local_rank = distributed.init_from_environment(device.type)
    if device.type == "cuda" and distributed.is_distributed():
        device = torch.device("cuda", local_rank)
    world, main = distributed.world_size(), distributed.is_main_process()
    if t.batch_size % world:
        raise BarlowTwinsError(f"batch size {t.batch_size} must be divisible by the {world} processes")
    per_process_batch = t.batch_size // world
    out = Path(t.out)

    source = open_source(d.train, d.root, d.download, d.limit)
    if source.num_samples < t.batch_size:
        raise BarlowTwinsError(
            f"batch size {t.batch_size} is larger than the dataset ({source.num_samples} samples); lower --batch-size"
        )
    steps_per_epoch = source.num_samples // t.batch_size
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)

    model = build_model(config)
    if distributed.is_distributed():
        model = distributed.convert_sync_batchnorm(model, device.type)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    o = config.optim
    optimizer = build_optimizer(
        model, o.optimizer, t.batch_size, o.lr_weights, o.lr_biases, o.weight_decay, o.momentum, o.lars_eta
    )
    dtype = autocast_dtype(t.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = BarlowTwinsLoss(config.loss.lambd, config.loss.formulation)

    step = _resume_or_start(config, out, model, optimizer, scaler, main)
    seed_everything(t.seed + 1000 * distributed.rank() + step)  # augmentations differ per process and resume
    trainer = model
    if distributed.is_distributed():
        trainer = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    batches = training_batches(
        source,
        two_views(**dataclasses.asdict(config.augment)),
        per_process_batch,
        resolve_workers(d.workers),
        t.seed,
        device,
        start_epoch=step // steps_per_epoch,
        skip_batches=step % steps_per_epoch,
        shuffle_buffer=d.shuffle_buffer,
    )
    if main:
        print(
            f"pretraining {config.model.arch} + projector {config.model.projector} on {source.description}; "
            f"{steps_per_epoch} steps/epoch, batch {t.batch_size} over {world} process(es), {device}, "
            f"{'fp32' if dtype is None else str(dtype).removeprefix('torch.')}; run directory {out}",
            flush=True,
        )
    metrics_file = open(out / "metrics.jsonl", "a") if main else None  # noqa: SIM115 (closed in finally)
    writer = _tensorboard(out) if main else None
    progress = tqdm(
        total=total_steps,
        initial=step,
        disable=not main,
        unit="step",
        mininterval=1 if sys.stderr.isatty() else 30,
        dynamic_ncols=True,
    )
    trainer.train()
    window_start, window_steps = time.perf_counter(), 0
    try:
        while step < total_steps:
            (y_a, y_b), _ = next(batches)
            lr_scale = lr_factor(step, total_steps, warmup_steps, o.final_lr_ratio)
            set_learning_rate(optimizer, lr_scale)
            y_a = y_a.to(device, non_blocking=True, memory_format=memory_format)
            y_b = y_b.to(device, non_blocking=True, memory_format=memory_format)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
            with autocast:
                z_a, z_b = trainer(y_a, y_b)
            terms = loss_fn.terms(z_a, z_b)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window_steps += 1
            progress.update(1)
            if step % t.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "epoch": step / steps_per_epoch,
                    "step": step,
                    "lr_weights": optimizer.param_groups[0]["lr"],
                    "loss": terms.loss.item(),
                    "invariance": terms.invariance.item(),
                    "redundancy": terms.redundancy.item(),
                    "on_diag_mean": terms.on_diag_mean.item(),
                    "off_diag_rms": terms.off_diag_rms.item(),
                    "off_diag_abs_mean": None if terms.off_diag_abs_mean is None else terms.off_diag_abs_mean.item(),
                    "images_per_s": window_steps * t.batch_size / elapsed,
                    "time": time.time(),
                }
                if not math.isfinite(record["loss"]):
                    raise BarlowTwinsError(
                        f"the loss became {record['loss']} at step {step}; lower optim.lr_weights, "
                        "or use --precision fp32 if you trained in fp16"
                    )
                window_start, window_steps = time.perf_counter(), 0
                if main:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    for key in (
                        "loss",
                        "invariance",
                        "redundancy",
                        "on_diag_mean",
                        "off_diag_rms",
                        "lr_weights",
                    ):
                        writer.add_scalar(f"pretrain/{key}", record[key], step)
                    progress.set_postfix(
                        loss=f"{record['loss']:.1f}",
                        diag=f"{record['on_diag_mean']:.3f}",
                        img_s=f"{record['images_per_s']:.0f}",
                        refresh=False,
                    )
            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if end_of_epoch or (t.checkpoint_every and step % t.checkpoint_every == 0):
                if main:
                    _save(out, model, optimizer, scaler, config, step, steps_per_epoch)
                distributed.barrier()
    finally:
        progress.close()
        if main:
            metrics_file.close()
            writer.close()

    # Leave the process group before rank 0 evaluates alone: other ranks waiting at a barrier would time out
    # (30 min) during a long kNN; in eval mode the synchronised batch norms need no process group.
    distributed.barrier()
    distributed.shutdown()
    if main:
        from barlowtwins.plots import plot_metrics

        plot_metrics(out / "metrics.jsonl", out / "loss.png")
        if d.eval:
            evaluate_knn_after_pretraining(config, model.backbone, source, device, out)
    return out


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def _save(out, model, optimizer, scaler, config, step, steps_per_epoch) -> None:
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": step // steps_per_epoch,
        "step": step,
        "config": config.to_dict(),
        "version": run_metadata()["barlowtwins_version"],
    }
    atomic_save(state, out / CHECKPOINT_NAME)


def _resume_or_start(config, out: Path, model, optimizer, scaler, main: bool) -> int:
    """Load ``out/checkpoint.pt`` if there is one (returns its step), else start a new run (step 0)."""
    if (out / CHECKPOINT_NAME).is_file():
        state = load_checkpoint(out)
        changes = incompatible_changes(state["config"], config)
        if changes:
            saved, now = flatten(state["config"]), flatten(config.to_dict())
            shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changes[:5])
            raise BarlowTwinsError(
                f"{out} holds a run with a different configuration ({shown}); "
                "use another --out, or the run's own settings to resume it"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if main:
            print(f"resuming {out} from epoch {state['epoch']}, step {state['step']}", flush=True)
        return state["step"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), out / "config.yaml")
        atomic_write_text(json.dumps(run_metadata(), indent=2) + "\n", out / "meta.json")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    distributed.barrier()
    return 0


def knn_report(
    backbones: dict[str, nn.Module],
    bank: ImageSource,
    queries: ImageSource,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    ks: tuple[int, ...],
    temperature: float,
    device: torch.device,
    workers: int,
    batch_size: int = 256,
) -> dict[str, dict[int, float]]:
    """kNN top-1 (percent) per k for each named backbone, bank = labelled training data."""
    transform = eval_transform(image_size, mean, std)
    results = {}
    for name, backbone in backbones.items():
        backbone = backbone.to(device)
        train_x, train_y = extract_features(
            backbone,
            evaluation_loader(bank, transform, batch_size, workers, device),
            device,
            progress=f"{name}: bank features",
        )
        if (train_y < 0).all():
            raise BarlowTwinsError("kNN needs labels in the training data (its bank); this data has none")
        test_x, test_y = extract_features(
            backbone,
            evaluation_loader(queries, transform, batch_size, workers, device),
            device,
            progress=f"{name}: test features",
        )
        results[name] = knn_accuracy(train_x, train_y, test_x, test_y, ks, temperature)
    return results


def evaluate_knn_after_pretraining(
    config: PretrainConfig, backbone: nn.Module, train_source: ImageSource, device: torch.device, out: Path
) -> dict[str, Any]:
    """kNN of the pretrained backbone and of the same backbone at its random initialisation."""
    d, t, a = config.data, config.train, config.augment
    queries = open_source(d.eval, d.root, d.download, d.eval_limit, what="--eval-data")
    random_init = build_model(config).backbone
    results = knn_report(
        {"pretrained": backbone, "random_init": random_init},
        train_source,
        queries,
        a.image_size,
        a.mean,
        a.std,
        t.knn_k,
        t.knn_temperature,
        device,
        resolve_workers(d.workers),
    )
    report = {
        "protocol": "weighted kNN on L2-normalised frozen backbone features",
        "temperature": t.knn_temperature,
        "bank": train_source.description,
        "queries": queries.description,
        "top1": {name: {str(k): v for k, v in accs.items()} for name, accs in results.items()},
        "checkpoint": str(out / CHECKPOINT_NAME),
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", out / "knn.json")
    for k in t.knn_k:
        print(
            f"kNN top-1 (k={k}, T={t.knn_temperature}): pretrained {results['pretrained'][k]:.2f}%  "
            f"random init {results['random_init'][k]:.2f}%",
            flush=True,
        )
    return report
