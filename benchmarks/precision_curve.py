"""Does bf16 autocast learn as fp32 does? The loss of the first steps of one schedule, in both precisions.

The setting is the speed issue's second bullet: ResNet-18 with the ImageNet stem on CIFAR-10 (32 px), projector
2048-2048-2048, batch 256, LARS (the ``cifar10`` recipe with ``model.small_stem=false``), a 4-epoch schedule with
a warm-up of 0.27 epoch, read from the WebDataset shards. Both precisions start from the same initial weights
and see the same batched views (one seeded stream, regenerated for each), so precision is the only difference;
the first ``--steps`` steps of that schedule are trained and their losses compared window by window, with each
precision's pairs/s.

    python benchmarks/precision_curve.py --shards '../shared/data/cifar10/cifar10-train-{000000..000009}.tar'

Rounding differences grow over the steps as in any chaotic system, so the two curves are not expected to agree
step by step. The yardstick, printed beside them: fp32 again from the same weights with other views (another
seed of the same augmentations), i.e. how far two equally valid fp32 runs differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from barlowtwins.data import open_source, resolve_workers
from barlowtwins.data.loaders import cached_training_batches, decoded
from barlowtwins.optim import lr_factor, set_learning_rate
from barlowtwins.recipes import make_config, override
from barlowtwins.train.build import build_method, run_optimizer
from barlowtwins.train.loop import train_step
from barlowtwins.views.batched import training_views

BATCH = 256
SCHEDULE_EPOCHS, WARMUP_EPOCHS = 4, 0.27  # the second bullet: 780 steps, warm-up 0.27 epoch


def losses(config, images, steps: int, dtype: torch.dtype | None, view_seed: int = 0) -> tuple[list[float], float]:
    """The loss of each of the first ``steps`` steps, and pairs/s over them after the first; ``view_seed``
    shifts the views' seed (the initial weights stay those of ``train.seed``)."""
    method = build_method(config).to(memory_format=torch.channels_last)
    optimizer, o = run_optimizer(config, method), config.optim
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    views = training_views(**dataclasses.asdict(config.augment))
    batches = cached_training_batches(images, views, BATCH, config.train.seed + view_seed, torch.device("cpu"))
    per_epoch = len(images) // BATCH
    total, warmup = SCHEDULE_EPOCHS * per_epoch, round(WARMUP_EPOCHS * per_epoch)
    values, started = [], 0.0
    for step in range(steps):
        pair = [v.contiguous(memory_format=torch.channels_last) for v in next(batches)[0]]
        started = time.perf_counter() if step == 1 else started
        set_learning_rate(optimizer, lr_factor(step, total, warmup, o.final_lr_ratio))
        values.append(train_step(method, optimizer, scaler, pair, dtype)["loss"].item())
    return values, (steps - 1) * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="CIFAR-10 training shards (brace pattern)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the schedule trained in each precision")
    parser.add_argument("--window", type=int, default=20, help="steps per compared window")
    parser.add_argument("--out", help="also write the losses and the summary to this JSON file")
    args = parser.parse_args()
    overrides = [override("model.small_stem", False), override("data.train", [args.shards])]
    config = make_config("cifar10", [*overrides, override("train.batch_size", BATCH)])
    images = decoded(open_source(config.data.train), config.augment.image_size, "memory", "", resolve_workers(-1))
    print(
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH}, "
        f"ResNet-18 ImageNet stem, 32 px, projector 2048^3; the first {args.steps} steps of a "
        f"{SCHEDULE_EPOCHS}-epoch schedule (warm-up {WARMUP_EPOCHS} epoch)"
    )
    fp32, fp32_rate = losses(config, images, args.steps, None)
    bf16, bf16_rate = losses(config, images, args.steps, torch.bfloat16)
    other, _ = losses(config, images, args.steps, None, view_seed=1)  # fp32 again, other views: the yardstick
    print(f"pairs/s: fp32 {fp32_rate:.0f}, bf16 {bf16_rate:.0f} ({bf16_rate / fp32_rate:.2f}x)")
    print(f"{'steps':>9} {'fp32 loss':>10} {'bf16 loss':>10} {'bf16/fp32':>9} {'fp32, other views / fp32':>25}")
    windows = []
    for start in range(0, args.steps, args.window):
        part = slice(start, start + args.window)
        w = {"steps": [start, start + len(fp32[part])]}
        w.update({name: statistics.fmean(values[part]) for name, values in (("fp32", fp32), ("bf16", bf16))})
        w["fp32_other_views"] = statistics.fmean(other[part])
        windows.append(w)
        ratio, yardstick = w["bf16"] / w["fp32"], w["fp32_other_views"] / w["fp32"]
        print(f"{start:>4}-{w['steps'][1]:<4} {w['fp32']:10.1f} {w['bf16']:10.1f} {ratio:9.3f} {yardstick:25.3f}")
    worst = max(abs(w["bf16"] / w["fp32"] - 1) for w in windows)
    natural = max(abs(w["fp32_other_views"] / w["fp32"] - 1) for w in windows)
    print(f"largest window difference: bf16 {worst:.1%}; fp32 with other views {natural:.1%}")
    if args.out:
        summary = {"fp32_pairs_per_s": fp32_rate, "bf16_pairs_per_s": bf16_rate, "largest_window_difference": worst}
        summary["largest_window_difference_fp32_other_views"] = natural
        curves = {"fp32": fp32, "bf16": bf16, "fp32_other_views": other}
        Path(args.out).write_text(json.dumps({**summary, "windows": windows, **curves}, indent=1))


if __name__ == "__main__":
    main()
