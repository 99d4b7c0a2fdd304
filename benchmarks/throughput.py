"""Training throughput in pairs/s: data + views alone, the model step alone, and end to end, in one run.

The setting is the speed issue's: ResNet-18 with the ImageNet stem on CIFAR-10 (32 px), projector
2048-2048-2048, batch 256, LARS (the ``cifar10`` recipe with ``model.small_stem=false``), read from the
WebDataset shards. Compared in the same run:

* data + views alone: the per-sample PIL path (JPEG decode + two views in DataLoader workers) against the
  batched path (images decoded once, both views of a whole batch made on the training device);
* the model step alone on ready tensors (the compute bound), fp32 against bf16 autocast;
* end to end, each a real ``barlowtwins pretrain`` process with a time budget: the previous default (PIL
  views in workers, no cache, fp32) against batched views in fp32 and today's defaults (batched views, decoded
  cache, ``--precision auto``), with the fixed cost of a run (process start to the first step, last step to exit);
* how long ``barlowtwins --help`` takes.

``--sides`` instead times only the model step of a recipe (default ``photos-cpu``, its batch) at each view side,
fp32 and bf16, on ready tensors: how a step's cost grows with its pixels on this CPU, which decides what a
minute of 128 px costs against one of 64 px (no data needed).

    python benchmarks/throughput.py --shards '../shared/data/cifar10/cifar10-train-{000000..000009}.tar'
    python benchmarks/throughput.py --shards ... --seconds 40 --skip-end-to-end     # quicker
    python benchmarks/throughput.py --shards ... --skip-end-to-end --compile        # + bf16 under torch.compile
    python benchmarks/throughput.py --sides 64 96 128 --model-steps 3               # photos-cpu's step per side
    python benchmarks/throughput.py --sides 64 96 128 --model-steps 3 --precisions fp32   # an AVX2-only CPU

Run it on an otherwise idle machine: every figure shares the same cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from barlowtwins.data import open_source, resolve_workers, training_batches
from barlowtwins.data.loaders import cached_training_batches, decoded
from barlowtwins.recipes import make_config, override
from barlowtwins.runtime import cpu_description
from barlowtwins.train.build import build_method, run_optimizer
from barlowtwins.train.loop import train_step
from barlowtwins.views.batched import batched_two_views
from barlowtwins.views.per_sample import pair_settings, two_views

CPU = torch.device("cpu")
BATCH = 256


def _config(shards: str):
    overrides = [override("model.small_stem", False), override("data.train", [shards])]
    return make_config("cifar10", [*overrides, override("train.batch_size", BATCH)])


def _rate(batches, steps: int) -> float:
    """pairs/s of ``steps`` batches after the first (which pays for worker start-up); closes the stream, so its
    worker processes stop before anything else is timed."""
    next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    rate = steps * BATCH / (time.perf_counter() - start)
    batches.close()
    return rate


def data_alone(config, steps: int) -> dict[str, float]:
    """pairs/s of the data path alone: batched views of decoded images against PIL views in workers."""
    a, source = config.augment, open_source(config.data.train)
    pair, workers = pair_settings(dataclasses.asdict(a)), resolve_workers(-1)
    started = time.perf_counter()
    images = decoded(source, a.image_size, "memory", "", workers)
    decode_seconds = time.perf_counter() - started
    batched = cached_training_batches(images, batched_two_views(**pair), BATCH, 0, CPU)
    batched_rate = _rate(batched, steps)
    pil = training_batches(source, two_views(**pair), BATCH, workers, 0, CPU, shuffle_buffer=2000)
    return {"pil": _rate(pil, steps), "batched": batched_rate, "decode_seconds": decode_seconds}


def model_alone(config, steps: int, compiled: bool = False, only: str = "", side: int = 32) -> dict[str, float]:
    """pairs/s of forward + backward + LARS step on ready tensors of ``side`` px at the config's batch, fp32 and
    bf16 autocast (and bf16 under ``torch.compile`` when ``compiled``, with its compile time: the first step's);
    ``only``: that one."""
    rates, batch = {}, config.train.batch_size
    views = [torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    variants = [("fp32", None, False), ("bf16", torch.bfloat16, False)]
    variants += [("bf16 compiled", torch.bfloat16, True)] if compiled else []
    for name, dtype, compile_it in [v for v in variants if v[0] == only] if only else variants:
        method = build_method(config).to(memory_format=torch.channels_last)
        optimizer = run_optimizer(config, method)  # the run's own: the recipe's LARS (clip_lr, eta)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        trainer = torch.compile(method) if compile_it else method
        start = time.perf_counter()
        train_step(trainer, optimizer, scaler, views, dtype)
        rates[f"{name} first step s"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            train_step(trainer, optimizer, scaler, views, dtype)
        rates[name] = steps * batch / (time.perf_counter() - start)
    return rates


def per_side(recipe: str, sides: list[int], steps: int, precisions: list[str]) -> None:
    """The model step of ``recipe`` at each side in each of ``precisions`` (fp32, bf16): seconds per step and the
    ratio to the first side."""
    config = make_config(recipe, [override("data.train", ["unused"])])
    batch = config.train.batch_size
    print(f"{recipe}: {config.model.arch}, batch {batch}, projector {config.model.projector}; model step alone")
    first: dict[str, float] = {}
    for side in sides:
        rates = {}
        for name in precisions:
            rates.update(model_alone(config, steps, only=name, side=side))
        for name in precisions:
            seconds = batch / rates[name]
            first.setdefault(name, seconds)
            print(
                f"    {side:4d} px {name}: {seconds:5.2f} s/step, {rates[name]:5.0f} pairs/s, "
                f"{seconds / first[name]:.2f}x the {sides[0]} px step"
            )


END_TO_END = {
    "pil fp32 (previous default)": ["--set", "data.views=pil", "--set", "data.cache=off", "--precision", "fp32"],
    "batched fp32": ["--precision", "fp32"],
    "defaults (batched, auto)": [],
}


def end_to_end(shards: str, seconds: int, config, bound_steps: int) -> dict[str, dict]:
    """Each variant as a real pretrain process with a time budget; pairs/s after the first logged window, and
    the model-step bound of the precision it used timed right after it (the machine's speed drifts by 10-20 %
    over minutes here; a bound timed minutes apart would put that drift into the ratio)."""
    results = {}
    for name, flags in END_TO_END.items():
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "barlowtwins", "pretrain", "--recipe", "cifar10", "--data", shards]
            command += ["--no-small-stem", "--batch-size", str(BATCH), "--out", out, "--set", "train.log_every=5"]
            command += ["--set", f"train.time_budget={seconds}s", *flags]
            started = time.time()
            run = subprocess.run(command, capture_output=True, text=True)
            ended = time.time()
            if run.returncode != 0:
                raise SystemExit(f"{name} failed:\n{run.stderr[-2000:]}")
            records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
            first_step_seconds = 5 * BATCH / records[0]["images_per_s"]
            chose = next((line for line in run.stdout.splitlines() if "precision auto" in line), "")
            used = "fp32" if "fp32" in flags or (chose and "using bfloat16" not in chose) else "bf16"
            results[name] = {
                "used": used,
                "bound": model_alone(config, bound_steps, only=used)[used],
                "pairs_per_s": sum(r["images_per_s"] for r in records[1:]) / max(1, len(records) - 1),
                "steps": records[-1]["step"],
                "start_to_first_step_s": records[0]["time"] - first_step_seconds / 5 - started,
                "last_step_to_exit_s": ended - records[-1]["time"],
            }
    return results


def help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "barlowtwins", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="CIFAR-10 training shards (brace pattern); not needed with --sides")
    parser.add_argument("--sides", type=int, nargs="+", help="only the model step of --recipe at these view sides")
    parser.add_argument("--recipe", default="photos-cpu", help="the recipe whose model --sides times")
    parser.add_argument("--steps", type=int, default=20, help="batches timed for data-alone and model-alone")
    parser.add_argument("--model-steps", type=int, default=10, help="steps timed for the model alone, per precision")
    parser.add_argument("--seconds", type=int, default=90, help="training budget of each end-to-end run")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the bf16 model step under torch.compile")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["bf16", "fp32"],
        default=["bf16", "fp32"],
        help="--sides: the precisions to time (fp32 alone on CPUs without AVX-512, where bf16 is emulated, 10x slower)",
    )
    args = parser.parse_args()
    machine = (
        f"{platform.machine()}, {cpu_description()}, {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.sides:
        print(machine)
        per_side(args.recipe, args.sides, args.model_steps, args.precisions)
        return
    if not args.shards:
        parser.error("--shards is required (the CIFAR-10 training shards), unless --sides times only the model step")
    print(f"{machine}; batch {BATCH}, ResNet-18 ImageNet stem, 32 px, projector 2048^3")
    print(f"barlowtwins --help: {help_seconds():.2f} s")
    config = _config(args.shards)
    data = data_alone(config, args.steps)
    print(
        f"(a) data + views alone: PIL {data['pil']:.0f} pairs/s, batched {data['batched']:.0f} pairs/s "
        f"({data['batched'] / data['pil']:.1f}x; decoding the set once took {data['decode_seconds']:.0f} s)"
    )
    model = model_alone(config, args.model_steps, args.compile)
    print(
        f"(b) model step alone: fp32 {model['fp32']:.0f} pairs/s, bf16 {model['bf16']:.0f} pairs/s "
        f"({model['bf16'] / model['fp32']:.2f}x)"
    )
    if args.compile:
        print(
            f"    bf16 under torch.compile: {model['bf16 compiled']:.0f} pairs/s "
            f"({model['bf16 compiled'] / model['bf16']:.2f}x eager bf16; compiling took "
            f"{model['bf16 compiled first step s']:.0f} s, eager's first step {model['bf16 first step s']:.1f} s)"
        )
    if args.skip_end_to_end:
        return
    runs = end_to_end(args.shards, args.seconds, config, args.model_steps)
    reference = runs["pil fp32 (previous default)"]["pairs_per_s"]
    print(f"(c) end to end ({args.seconds} s budget each; its precision's model-step bound timed right after it):")
    for name, r in runs.items():
        print(
            f"    {name:28s} {r['pairs_per_s']:6.0f} pairs/s  {r['pairs_per_s'] / reference:.2f}x the previous "
            f"default, {r['pairs_per_s'] / r['bound']:.2f}x its {r['used']} model-step bound ({r['bound']:.0f}); "
            f"{r['steps']} steps; "
            f"start to first step {r['start_to_first_step_s']:.0f} s, "
            f"last step to exit {r['last_step_to_exit_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
