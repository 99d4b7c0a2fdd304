"""λ against projector width: the paper's fixed λ = 0.0051 against λ scaled by 1024/D, kNN on the digits demo.

Each row is ``barlowtwins pretrain --recipe demo`` with projector ``512-512-D`` and one λ, a fixed small number
of epochs on a subset of the digits, then the demo's kNN (k=20) on the 297 held-out digits. The grid, the
exact commands, training minutes and kNN go to ``docs/lambda-width/README.md`` and ``runs.json``.

    python benchmarks/lambda_width.py --out docs/lambda-width

A re-run skips rows already in runs.json. The total training time is capped (``--max-minutes``) because the
machine is shared: rows that do not fit are left out and the README says so.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import time
from pathlib import Path

LAMBDA = 0.0051  # the paper's value (official code), kept fixed in the paper for every width
REFERENCE_WIDTH = 1024  # the width at which the scaled rule equals the paper's λ (the demo's projector)
WIDTHS = (256, 1024, 4096)
COMMON = ["--limit", "512", "--epochs", "3", "--precision", "fp32"]
COMMON += ["--set", "data.workers=0", "--set", "train.log_every=4"]


def grid(widths: tuple[int, ...] = WIDTHS) -> list[dict]:
    rows = []
    for width in widths:
        for rule in ("fixed", "scaled"):
            lambd = LAMBDA if rule == "fixed" else LAMBDA * REFERENCE_WIDTH / width
            if rule == "scaled" and width == REFERENCE_WIDTH:
                continue  # the same run as "fixed"
            rows.append({"name": f"D={width} λ {rule}", "width": width, "rule": rule, "lambd": lambd})
    return rows


def run(row: dict, out: Path, seed: int) -> dict:
    run_dir = out / "runs" / f"d{row['width']}-{row['rule']}-s{seed}"
    command = ["barlowtwins", "pretrain", "--recipe", "demo", "--projector", f"512-512-{row['width']}"]
    command += ["--lambd", f"{row['lambd']:.6g}", "--seed", str(seed), *COMMON, "--out", str(run_dir)]
    started, cpu = time.time(), _children_cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True)
    cpu_minutes = (_children_cpu_seconds() - cpu) / 60
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # hundreds of MB each; the table needs none of it
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    if result.returncode != 0:
        return {**row, "seed": seed, "error": result.stderr.strip().splitlines()[-1], "command": shlex.join(command)}
    knn = json.loads((run_dir / "eval" / "knn.json").read_text())["results"]
    timing = json.loads((run_dir / "timing.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        **row,
        "seed": seed,
        "knn20": knn["pretrained"]["top1"]["20"],
        "floor20": knn["random_init"]["top1"]["20"],
        "on_diag_mean": last["on_diag_mean"],
        "train_minutes": timing["train_minutes"],
        "wall_minutes": (time.time() - started) / 60,
        "cpu_minutes": cpu_minutes,  # user + system of the whole command, evaluation included
        "command": shlex.join(command),
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_readme(out: Path, rows: list[dict], skipped: list[str]) -> None:
    lines = [
        "# λ against projector width (digits demo, CPU)",
        "",
        "Written by `python benchmarks/lambda_width.py --out docs/lambda-width [--widths ...] [--seeds ...]`",
        "(rows accumulate over invocations; each row's pretraining command is listed below).",
        f"Demo recipe, projector 512-512-D, {' '.join(COMMON)}; kNN top-1 (k=20) on the 297 held-out digits.",
        "",
        "| D | λ rule | λ | seed | kNN k=20 | random-init floor | mean C_ii (last step) | train min | CPU min |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["width"], r["rule"], r["seed"])):
        if "error" in r:
            lines.append(f"| {r['width']} | {r['rule']} | {r['lambd']:.4g} | {r['seed']} | error: {r['error']} | | | |")
            continue
        cpu = f"{r['cpu_minutes']:.2f}" if "cpu_minutes" in r else "—"
        lines.append(
            f"| {r['width']} | {r['rule']} | {r['lambd']:.4g} | {r['seed']} | {r['knn20']:.1f} % | "
            f"{r['floor20']:.1f} % | {r['on_diag_mean']:.3f} | {r['train_minutes']:.2f} | {cpu} |"
        )
    if skipped:
        lines += ["", f"Not run (training-time cap, or left out with --widths): {', '.join(skipped)}."]
    lines += ["", "CPU min: user + system time of the whole command (— : rows run before it was recorded)."]
    lines += ["", "Commands:", "", "```bash", *[r["command"] for r in rows], "```", ""]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/lambda-width"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="projector output widths D")
    parser.add_argument("--max-minutes", type=float, default=12.0, help="cap on the summed training (wall) minutes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "runs.json"
    rows = json.loads(store.read_text()) if store.is_file() else []
    done = {(r["width"], r["rule"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for row in grid(tuple(args.widths)):
            if (row["width"], row["rule"], seed) in done:
                continue
            if sum(r.get("train_minutes", 0) for r in rows) >= args.max_minutes:
                continue
            rows.append(run(row, args.out, seed))
            print(json.dumps(rows[-1]), flush=True)
            store.write_text(json.dumps(rows, indent=1))
    done = {(r["width"], r["rule"], r["seed"]) for r in rows}
    missing = [
        f"{row['name']} seed {seed}"
        for seed in args.seeds
        for row in grid()
        if (row["width"], row["rule"], seed) not in done
    ]
    write_readme(args.out, rows, missing)


if __name__ == "__main__":
    main()
