"""Sweep settings for a CPU recipe under a fixed training-time budget on CIFAR-10, one real run per row.

Each variant is ``barlowtwins pretrain --time-budget`` on the 50k training images, evaluated at its end by
kNN (k=200, T=0.1) on the 10k test images beside the random-init floor of the same initialisation. Rows go
to a Markdown table and a JSON file as they finish (a re-run skips finished rows), with each row's command.

    python benchmarks/cpu_recipe_sweep.py --budgets 5m --out docs/cpu-recipe/sweep-5m-avx512   # the variants below
    python benchmarks/cpu_recipe_sweep.py --recipe cifar10-cpu --budgets 1m 5m 10m 20m --out docs/cpu-recipe/curve
    python benchmarks/cpu_recipe_sweep.py --variants steps --budgets 3ep --out docs/cpu-recipe/sweep-3ep-avx512
    python benchmarks/cpu_recipe_sweep.py --variants recipe-steps --budgets 3ep --out docs/cpu-recipe/sweep-3ep-recipe
    python benchmarks/cpu_recipe_sweep.py --variants recipe-minutes --budgets 5m --out docs/cpu-recipe/sweep-5m-recipe

A budget ending in ``ep`` trains that many epochs instead (fixed steps: rows compare learning per step,
whatever the machine's speed). Time budgets count training time only (decoding, the precision probe and
evaluation come on top). Run one sweep at a time on an otherwise idle machine: the budget turns a busy CPU
into fewer steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
TRAIN = os.path.relpath(SHARED / "cifar10-train-{000000..000009}.tar")  # as a user in the repository types it
TEST = os.path.relpath(SHARED / "cifar10-test-{000000..000001}.tar")

# 2026-11-23, AVX2 machine (docs/cpu-recipe/sweep-4m): from the speed issue's setting (ResNet-18, ImageNet stem,
# 32 px, batch 256) on the fast path; the cifar10-cpu recipe of that day came out of it.
BASE = ["--recipe", "cifar10", "--no-small-stem", "--batch-size", "256"]
P1024 = ["--projector", "1024-1024-1024"]
FIRST: dict[str, list[str]] = {
    "base (cifar10 recipe, ImageNet stem)": [*BASE],
    "projector 1024^3": [*BASE, *P1024],
    "projector 1024^3, batch 128": [*BASE, *P1024, "--batch-size", "128"],
    "projector 1024^3, batch 128, lr x2": [
        *BASE,
        *P1024,
        "--batch-size",
        "128",
        "--lr",
        "0.6",
        "--set",
        "optim.lr_biases=0.0144",
    ],
    "projector 1024^3, batch 128, crop 0.2-1": [
        *BASE,
        *P1024,
        "--batch-size",
        "128",
        "--set",
        "augment.crop_scale=[0.2,1.0]",
    ],
}
# 2026-11-29, AVX-512 machine (docs/cpu-recipe/sweep-5m-avx512): from that recipe (batch 128, projector 1024^3,
# LARS lr 0.3), each row pinning the stem it compares, so the rows mean the same whatever the recipe now says.
# The recipe as it was until the 3-epoch sweeps below changed lambda, the crop scale and the trust coefficient,
# pinned, so these rows re-run as they ran (the recipe itself now says lambda 0.01, crop 0.2-1, eta 0.01).
CPU = ["--recipe", "cifar10-cpu", "--set", "optim.lars_eta=0.02"]
CPU += ["--set", "loss.lambd=0.0051", "--set", "augment.crop_scale=[0.08,1.0]"]
S2 = ["--small-stem", "--set", "model.stem_stride=2"]
AVX512: dict[str, list[str]] = {
    "ImageNet stem (the recipe of 2026-11-23)": [*CPU, "--no-small-stem"],
    "ImageNet stem, batch 256": [*CPU, "--no-small-stem", "--batch-size", "256"],
    "ImageNet stem, batch 64": [*CPU, "--no-small-stem", "--batch-size", "64"],
    "ImageNet stem, lr 0.5": [*CPU, "--no-small-stem", "--lr", "0.5"],
    "ImageNet stem, projector 2048^3": [*CPU, "--no-small-stem", "--projector", "2048-2048-2048"],
    "ImageNet stem, projector 1024-1024-4096": [*CPU, "--no-small-stem", "--projector", "1024-1024-4096"],
    "ImageNet stem, 2 small views (16 px)": [*CPU, "--no-small-stem", "--set", "augment.small_views=2"],
    "ImageNet stem, projector 1024-1024-4096, 2 small views (16 px)": [
        *CPU,
        "--no-small-stem",
        "--projector",
        "1024-1024-4096",
        "--set",
        "augment.small_views=2",
    ],
    "3x3 stride-2 stem": [*CPU, *S2],
    "3x3 stride-2 stem, 2 small views (16 px)": [*CPU, *S2, "--set", "augment.small_views=2"],
    "3x3 stride-2 stem, lr 0.5": [*CPU, *S2, "--lr", "0.5"],
}
# 2026-11-29 (evening), the same machine (docs/cpu-recipe/sweep-3ep-avx512): fixed steps (``--budgets 3ep``), so
# the machine's speed drifting between rows cannot change what a row learns; settings that keep the step's cost.
# bf16 pinned: precision auto measures the machine at start-up, and a busy moment could flip a row to fp32.
IMAGENET_STEM = [*CPU, "--no-small-stem", "--precision", "bf16"]
STEPS: dict[str, list[str]] = {
    "ImageNet stem (the recipe until then)": IMAGENET_STEM,
    "lambda 0.01": [*IMAGENET_STEM, "--set", "loss.lambd=0.01"],
    "lambda 0.02": [*IMAGENET_STEM, "--set", "loss.lambd=0.02"],
    "crop 0.2-1": [*IMAGENET_STEM, "--set", "augment.crop_scale=[0.2,1.0]"],
    "ImageNet stem (the recipe until then), seed 1": [*IMAGENET_STEM, "--set", "train.seed=1"],
    "lambda 0.01, seed 1": [*IMAGENET_STEM, "--set", "loss.lambd=0.01", "--set", "train.seed=1"],
    "lambda 0.01, crop 0.2-1": [*IMAGENET_STEM, "--set", "loss.lambd=0.01", "--set", "augment.crop_scale=[0.2,1.0]"],
}
# 2026-11-30, the same machine (docs/cpu-recipe/sweep-3ep-recipe, sweep-5m-recipe): the recipe as it now is, against
# the settings not yet swept on it. Those that keep the step's cost run fixed steps (``--budgets 3ep``); depth and
# image size change what a step costs, so they are judged per CPU-minute (``--budgets 5m``, on an idle machine).
# The fixed-step rows chose trust coefficient 0.01; they ran while the recipe had 0.02, which they pin.
RECIPE = ["--recipe", "cifar10-cpu", "--precision", "bf16"]
ETA_002 = [*RECIPE, "--set", "optim.lars_eta=0.02"]
RECIPE_STEPS: dict[str, list[str]] = {
    "the recipe": ETA_002,
    "trust coefficient 0.01": [*ETA_002, "--set", "optim.lars_eta=0.01"],
    "trust coefficient 0.05": [*ETA_002, "--set", "optim.lars_eta=0.05"],
    "trust coefficient 0.005": [*ETA_002, "--set", "optim.lars_eta=0.005"],
    "weight decay 1.5e-6 (official)": [*ETA_002, "--set", "optim.weight_decay=1.5e-6"],
    "weight decay 5e-4": [*ETA_002, "--set", "optim.weight_decay=5e-4"],
}
RECIPE_MINUTES: dict[str, list[str]] = {
    "the recipe": RECIPE,
    "ResNet-34": [*RECIPE, "--arch", "resnet34"],
    "timm ResNet-10-T": [*RECIPE, "--arch", "timm:resnet10t"],
    "timm ResNet-18": [*RECIPE, "--arch", "timm:resnet18"],
    "timm ResNet-18, half width": [*RECIPE, "--arch", "timm:resnet18,channels=[32,64,128,256],stem_width=32"],
    "24 px views": [*RECIPE, "--image-size", "24"],
    "48 px views": [*RECIPE, "--image-size", "48"],
}
VARIANTS = {
    "first": FIRST,
    "avx512": AVX512,
    "steps": STEPS,
    "recipe-steps": RECIPE_STEPS,
    "recipe-minutes": RECIPE_MINUTES,
}


KNN_RESULT = Path("eval") / "knn.json"  # in a row's run directory: the row is finished when it exists


def run_dir_of(name: str, budget: str, out: Path) -> Path:
    slug = name.replace(" ", "_").replace("/", "-").replace("^", "").replace(",", "")
    return out / "runs" / f"{slug}-{budget}"


def run_variant(name: str, flags: list[str], budget: str, out: Path, floor: bool) -> dict:
    """Pretrain with the budget, then ``barlowtwins knn`` on the 10k test images (the floor only when asked:
    it is the same network at the same initialisation in every row that keeps the architecture). A run
    directory that already holds its kNN result is read, not run again."""
    run_dir = run_dir_of(name, budget, out)
    command = ["barlowtwins", "pretrain", *flags, "--data", TRAIN]
    length = ["--epochs", budget[: -len("ep")]] if budget.endswith("ep") else ["--time-budget", budget]
    command += [*length, "--out", str(run_dir)]
    knn = ["barlowtwins", "knn", "--checkpoint", str(run_dir), "--train-data", TRAIN, "--test-data", TEST]
    knn += ["--out", str(run_dir / KNN_RESULT), *([] if floor else ["--no-random-init"])]
    started, wall_minutes = time.time(), None
    if not (run_dir / KNN_RESULT).is_file():
        print(f"running {name} for {budget} ...", flush=True)
        for step in (command, knn):
            result = subprocess.run(step, capture_output=True, text=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "stdout.txt", "a") as log:
                log.write(result.stdout + result.stderr[-5000:])
            if result.returncode != 0:
                return {"name": name, "error": result.stderr.strip().splitlines()[-1], "command": shlex.join(command)}
        wall_minutes = (time.time() - started) / 60
    results = json.loads((run_dir / KNN_RESULT).read_text())["results"]
    timing = json.loads((run_dir / "timing.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records[1:]] or [records[0]["images_per_s"]]
    printed = (run_dir / "stdout.txt").read_text()
    pinned = flags[flags.index("--precision") + 1] if "--precision" in flags else ""
    precision = printed.split("using ")[-1].split()[0] if "using " in printed else pinned
    return {
        "name": name,
        "steps": timing["steps"],
        "pairs_per_s": sum(rates) / len(rates),
        "train_minutes": timing["train_minutes"],
        "wall_minutes": wall_minutes,
        "knn200": results["pretrained"]["top1"]["200"],
        "knn20": results["pretrained"]["top1"]["20"],
        "floor200": results["random_init"]["top1"]["200"] if "random_init" in results else None,
        "precision": precision,
        "command": shlex.join(command) + " && " + shlex.join(knn),
    }


def _backbone(flags: list[str]) -> tuple:
    """The flags that choose the network at its initialisation and the size it sees (rows that agree on them share
    their random-init floor): the stem, the architecture and the image size."""
    chosen = [f for f in flags if "stem" in f]
    for name in ("--arch", "--image-size"):
        if name in flags:
            chosen += flags[flags.index(name) : flags.index(name) + 2]
    return tuple(chosen)


def write_table(rows: list[dict], budgets: list[str], out: Path) -> None:
    lines = [
        f"# CPU recipe runs: {', '.join(budgets)} of training per row, CIFAR-10 (JPEG), 2-core CPU",
        "",
        f"Made by `python benchmarks/cpu_recipe_sweep.py {' '.join(sys.argv[1:])}`. kNN: k=200 (and 20), T=0.1,",
        "50k training images as the bank, 10k test images; floor: the same network at its initialisation (measured",
        "in the first row of each stem, architecture and image size; those rows start from the same weights, seed 0).",
        "",
        "| variant | budget | steps | pairs/s | kNN k=200 | kNN k=20 | floor k=200 | precision | command |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        r["command"] = r["command"].replace(str(SHARED), os.path.relpath(SHARED))
        if "error" in r:
            lines.append(f"| {r['name']} | {r['budget']} | failed: {r['error']} | | | | | | `{r['command']}` |")
            continue
        floor = "—" if r["floor200"] is None else f"{r['floor200']:.1f}"
        lines.append(
            f"| {r['name']} | {r['budget']} | {r['steps']} | {r['pairs_per_s']:.0f} | {r['knn200']:.1f} | "
            f"{r['knn20']:.1f} | {floor} | {r['precision']} | `{r['command']}` |"
        )
    if len(budgets) > 1:
        plot_curve([r for r in rows if "error" not in r], out / "knn-vs-minutes.png")
        lines += ["", "![kNN against training minutes](knn-vs-minutes.png)"]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")


def plot_curve(rows: list[dict], path: Path) -> None:
    """kNN (k=200) against training minutes per variant, with the random-init floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["name"] for r in rows):
        points = sorted((r["train_minutes"], r["knn200"]) for r in rows if r["name"] == name)
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    floors = [r["floor200"] for r in rows if r["floor200"] is not None]
    if floors:
        ax.axhline(floors[0], color="grey", linestyle="--", label="random init (floor)")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("kNN top-1, k=200 (%)")
    ax.set_title("CIFAR-10 test kNN against training time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--budgets", nargs="+", default=["4m"], help="training time per run, e.g. 4m, 20m; or epochs, e.g. 3ep"
    )
    parser.add_argument("--recipe", help="run this recipe (no other flags) instead of the variants below")
    parser.add_argument("--out", required=True, help="directory for the table, the JSON and the run directories")
    parser.add_argument("--variants", choices=VARIANTS, default="avx512", help="which set of variants below")
    parser.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these words")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="pretrain default for every row"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = {f"{args.recipe} recipe": ["--recipe", args.recipe]} if args.recipe else VARIANTS[args.variants]
    # e.g. a recipe's value before it changed; first, so that a row's own --set of the same key still wins
    pins = [flag for setting in args.set for flag in ("--set", setting)]
    variants = {name: [*pins, *flags] for name, flags in variants.items()}
    saved = json.loads((out / "runs.json").read_text()) if (out / "runs.json").exists() else []
    done = {(r["name"], r["budget"]): r for r in saved if "error" not in r}
    rows = []
    for budget in args.budgets:
        for name, flags in variants.items():
            selected = not args.only or any(word in name for word in args.only)
            row = done.get((name, budget))
            if row is None and (selected or (run_dir_of(name, budget, out) / KNN_RESULT).is_file()):
                floors = {_backbone(variants.get(r["name"], [])) for r in rows}
                row = {**run_variant(name, flags, budget, out, floor=_backbone(flags) not in floors), "budget": budget}
            if row is not None:  # the table keeps every finished row of the set, whichever ran this time
                rows.append(row)
                write_table(rows, args.budgets, out)
                print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)


if __name__ == "__main__":
    main()
