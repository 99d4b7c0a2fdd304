"""Sweep settings for a CPU recipe under a fixed training-time budget on CIFAR-10, one real run per row.

Each variant is ``barlowtwins pretrain --time-budget`` on the 50k training images, evaluated at its end by
kNN (k=200, T=0.1) on the 10k test images beside the random-init floor of the same initialisation. Rows go
to a Markdown table and a JSON file as they finish (a re-run skips finished rows), with each row's command.

    python benchmarks/cpu_recipe_sweep.py --budget 3m --out docs/cpu-recipe/sweep-3m        # the variants below
    python benchmarks/cpu_recipe_sweep.py --budget 20m --only final --out docs/cpu-recipe/final-20m

Budgets count training time only (decoding, the precision probe and evaluation come on top). Run one sweep
at a time on an otherwise idle machine: the budget turns a busy CPU into fewer steps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
TRAIN = str(SHARED / "cifar10-train-{000000..000009}.tar")
TEST = str(SHARED / "cifar10-test-{000000..000001}.tar")

# The starting point: the speed issue's setting (ResNet-18, ImageNet stem, 32 px, batch 256) on the fast path.
BASE = ["--recipe", "cifar10", "--no-small-stem", "--batch-size", "256"]
VARIANTS: dict[str, list[str]] = {
    "base (cifar10 recipe, ImageNet stem)": [],
    "projector 1024-1024-1024": ["--projector", "1024-1024-1024"],
    "batch 128": ["--batch-size", "128"],
    "lr x2 (0.6)": ["--lr", "0.6", "--set", "optim.lr_biases=0.0144"],
    "crop scale 0.2-1": ["--set", "augment.crop_scale=[0.2,1.0]"],
    "projector 1024^3, batch 128": ["--projector", "1024-1024-1024", "--batch-size", "128"],
}


def run_variant(name: str, flags: list[str], budget: str, out: Path) -> dict:
    run_dir = out / "runs" / name.replace(" ", "_").replace("/", "-").replace("^", "")
    command = ["barlowtwins", "pretrain", *BASE, *flags, "--data", TRAIN, "--eval-data", TEST]
    command += ["--time-budget", budget, "--out", str(run_dir)]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    (run_dir / "stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.txt").write_text(result.stdout + result.stderr[-5000:])
    if result.returncode != 0:
        return {"name": name, "error": result.stderr.strip().splitlines()[-1], "command": shlex.join(command)}
    knn = json.loads((run_dir / "eval" / "knn.json").read_text())["results"]
    timing = json.loads((run_dir / "timing.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records[1:]] or [records[0]["images_per_s"]]
    return {
        "name": name,
        "steps": timing["steps"],
        "pairs_per_s": sum(rates) / len(rates),
        "train_minutes": timing["train_minutes"],
        "wall_minutes": (time.time() - started) / 60,
        "knn200": knn["pretrained"]["top1"]["200"],
        "knn20": knn["pretrained"]["top1"]["20"],
        "floor200": knn["random_init"]["top1"]["200"],
        "precision": next((line for line in result.stdout.splitlines() if "using" in line), "").split("using ")[-1],
        "command": shlex.join(command),
    }


def write_table(rows: list[dict], budget: str, out: Path) -> None:
    lines = [
        f"# CPU recipe sweep: {budget} of training per row, CIFAR-10 (JPEG), 2-core CPU",
        "",
        f"Made by `python benchmarks/cpu_recipe_sweep.py --budget {budget} --out {out}`. kNN: k=200 (and 20),",
        "T=0.1, 50k training images as the bank, 10k test images; floor: the same network at its initialisation.",
        "",
        "| variant | steps | pairs/s | kNN k=200 | kNN k=20 | floor k=200 | precision | command |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | `{r['command']}` |")
            continue
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['pairs_per_s']:.0f} | {r['knn200']:.1f} | {r['knn20']:.1f} | "
            f"{r['floor200']:.1f} | {r['precision']} | `{r['command']}` |"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="3m", help="training time per run, e.g. 3m, 20m")
    parser.add_argument("--out", required=True, help="directory for the table, the JSON and the run directories")
    parser.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these words")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = (
        {r["name"]: r for r in json.loads((out / "sweep.json").read_text())} if (out / "sweep.json").exists() else {}
    )
    rows = []
    for name, flags in VARIANTS.items():
        if args.only and not any(word in name for word in args.only):
            continue
        row = previous.get(name) if "error" not in previous.get(name, {"error": 1}) else None
        if row is None:
            print(f"running {name} ...", flush=True)
            row = run_variant(name, flags, args.budget, out)
        rows.append(row)
        write_table(rows, args.budget, out)
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
