"""A real-photo benchmark: Barlow Twins pretrained on Imagenette's train photos (labels unused) for a CPU-minute
budget, ours beside lightly's, same machine, same minutes; each scored on Imagenette's val photos at the training
resolution by kNN (k=20 and 200, T=0.1, the train photos as the bank) and the linear probe, beside the same
architecture at random init (the floor).

    python benchmarks/photos.py --list
    python benchmarks/photos.py --rows photos-cpu "cifar10-cpu 64px" --minutes 20 --seeds 0 1 --out ../runs/photos/vs
    python benchmarks/photos.py --rows photos-cpu --minutes 20 --lightly --match photos-cpu --out ../runs/photos/vs
    python benchmarks/photos.py --rows photos-cpu --minutes 5 20 60 --out ../runs/photos/curve
    python benchmarks/photos.py --rows photos-cpu --minutes 0.3 --limit 500 200 --lightly --out /tmp/photos-check

Rows: each ``ours`` row is ``barlowtwins pretrain <flags> --time-budget Nm`` (its end-of-run kNN, eval/knn.json,
is written by pretrain), then ``barlowtwins linear --mode fast``. ``--lightly`` adds the LIGHTLY rows
(benchmarks/photos_lightly.py, which says what it takes from lightly and solo-learn; ``pip install -e ".[bench]"``;
``--lightly LARS``: only those naming LARS)
at the batch size and image size of the ``--match`` ours row (default: the first selected), then scores their
plain torchvision state_dict with the same ``barlowtwins knn`` and ``linear`` commands, so both arms are evaluated
identically (each at its own normalisation; the floor is our ResNet-18 initialisation of the same seed in both).
``--limit N M`` uses a class-balanced N train / M val subset (symlinks) for a quick check.

Rows go to report.md / report.json as they finish (a re-run skips finished rows; each run directory keeps its
steps' outputs), with each row's exact commands. Budgets count training time only (pretrain's rule: data set-up,
the precision probe, the monitor and evaluation come on top). Run on an otherwise idle machine: a busy CPU buys
fewer steps. Public anchor: lightly's Imagenette benchmark, ResNet-18, 800 epochs, 128 px, batch 256: 85.2 % kNN.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
RUNS = Path(__file__).resolve().parents[2] / "runs" / "photos"  # beside the repository, as ../shared is
LIGHTLY_SCRIPT = Path(__file__).with_name("photos_lightly.py")
# ours rows: name -> pretrain flags (ResNet-18, ImageNet stem in both recipes: the lightly arm builds the same)
# The monitor's kNN while training is off in every row: it is evaluation (left out of the budget either way) and
# at 128 px it would add about ten minutes of wall time to a 20-minute run.
QUIET = ["--set", "monitor.knn_every_epochs=0"]
VARIANTS: dict[str, list[str]] = {
    "photos-cpu": ["--recipe", "photos-cpu", *QUIET],  # the recipe chosen on these photos
    "cifar10-cpu 64px": ["--recipe", "cifar10-cpu", "--image-size", "64", *QUIET],  # the README's advice until now
}
# lightly rows: name -> benchmarks/photos_lightly.py flags (batch and image size come from the --match ours row)
LIGHTLY: dict[str, list[str]] = {
    "lightly, solo-learn LARS": ["--optimizer", "lars"],
    "lightly, its Imagenette benchmark's SGD": ["--optimizer", "sgd"],
}
DONE = Path("eval") / "linear.json"  # the last output of every row: the row is finished when it exists


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def subset(train: str, val: str, n_train: int, n_val: int, out: Path) -> tuple[str, str]:
    """Class-balanced subsets of symlinks (the first n/classes photos of every class, sorted by name)."""
    root = out / f"subset-{n_train}-{n_val}"
    for split, source, n in (("train", Path(train), n_train), ("val", Path(val), n_val)):
        classes = sorted(p for p in source.iterdir() if p.is_dir())
        for folder in classes:
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for photo in sorted(folder.iterdir())[: n // len(classes)]:
                link = root / split / folder.name / photo.name
                link.exists() or link.symlink_to(photo.resolve())
    return str(root / "train"), str(root / "val")


def resolved(flags: list[str]) -> dict:
    """The config an ours row runs with (``pretrain --print-config``): its batch size, image size, arch, stem."""
    text = subprocess.run(["barlowtwins", "pretrain", *flags, "--print-config"], capture_output=True, text=True)
    return yaml.safe_load(text.stdout)


def commands(row: dict, train: str, val: str, run_dir: Path, args: argparse.Namespace) -> list[tuple[list, Path]]:
    """(command, the file that says it is done) for each step of a row."""
    budget, seed = f"{row['minutes']:g}m", str(row["seed"])
    precision = [] if args.precision == "auto" else ["--precision", args.precision]
    common = ["--train-data", train, "--test-data", val, "--seed", seed]
    linear = ["barlowtwins", "linear", "--mode", args.linear_mode, *common, "--out", str(run_dir / DONE)]
    if row["arm"] == "ours":
        pretrain = ["barlowtwins", "pretrain", *row["flags"], *precision, "--data", train, "--eval-data", val]
        pretrain += ["--time-budget", budget, "--seed", seed, "--out", str(run_dir)]
        return [
            (pretrain, run_dir / "eval" / "knn.json"),
            (linear[:2] + ["--checkpoint", str(run_dir)] + linear[2:], run_dir / DONE),
        ]
    weights = str(run_dir / "resnet18.pth")
    lightly = ["python", os.path.relpath(LIGHTLY_SCRIPT), *row["flags"], *precision, "--data", train]
    lightly += ["--time-budget", budget]
    lightly += ["--batch-size", str(row["batch"]), "--image-size", str(row["image_size"]), "--seed", seed]
    knn = ["barlowtwins", "knn", "--checkpoint", weights, *common, "--out", str(run_dir / "eval" / "knn.json")]
    return [
        ([*lightly, "--out", str(run_dir)], run_dir / "timing.json"),
        (knn, run_dir / "eval" / "knn.json"),
        (linear[:2] + ["--checkpoint", weights] + linear[2:], run_dir / DONE),
    ]


def execute(command: list[str], log: Path) -> str | None:
    """Run ``command`` (``python`` as this interpreter), append it and its output to ``log``; its last error line
    when it fails, else None."""
    executable = [sys.executable, *command[1:]] if command[0] == "python" else command
    result = subprocess.run(executable, capture_output=True, text=True)
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n{result.stdout}{result.stderr[-5000:]}\n")
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["no output"])[-1]


def run_row(row: dict, train: str, val: str, out: Path, args: argparse.Namespace) -> dict:
    """Run the steps of ``row`` not yet done (each logged to stdout.txt), then read its results."""
    run_dir = out / "runs" / f"{slug(row['row'])}-{row['minutes']:g}m-s{row['seed']}"
    steps = commands(row, train, val, run_dir, args)
    row = {**row, "run_dir": str(run_dir), "command": " && ".join(shlex.join(c) for c, _ in steps)}
    for command, done in steps:
        if done.is_file():
            continue
        print(f"{row['row']}, {row['minutes']:g} min, seed {row['seed']}: {shlex.join(command[:3])} ...", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        error = execute(command, run_dir / "stdout.txt")
        if error is not None:
            return {**row, "error": error}
    knn = json.loads((run_dir / "eval" / "knn.json").read_text())["results"]
    linear = json.loads((run_dir / DONE).read_text())["results"]
    timing = json.loads((run_dir / "timing.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    batch = config["train"]["batch_size"] if row["arm"] == "ours" else config["batch_size"]
    if row["arm"] == "ours":
        printed = re.findall(r"precision auto: .*; using (\w+)", (run_dir / "stdout.txt").read_text())
        precision = printed[-1] if printed else config["train"]["precision"]
    else:
        precision = config["precision_used"]
    precision = {"bfloat16": "bf16"}.get(precision, precision)  # one name in the table, as --precision says it
    floor = knn.get("random_init", {}).get("top1", {})
    return {
        **row,
        "batch": batch,
        "image_size": config["augment"]["image_size"] if row["arm"] == "ours" else config["image_size"],
        "train_minutes": timing["train_minutes"],
        "steps": timing["steps"],
        "images_per_s": timing["steps"] * batch / max(1e-9, 60 * timing["train_minutes"]),
        "knn20": knn["pretrained"]["top1"]["20"],
        "knn200": knn["pretrained"]["top1"]["200"],
        "floor20": floor.get("20"),
        "floor200": floor.get("200"),
        "linear": linear["pretrained"]["top1"],
        "linear_floor": linear.get("random_init", {}).get("top1"),
        "precision": precision,
    }


LEAN = (
    "report.md",
    "report.json",
    "report.png",
    "runs/*/config.yaml",
    "runs/*/meta.json",
    "runs/*/timing.json",
    "runs/*/resnet18.json",
    "runs/*/eval/*.json",
)  # what a result may commit (CONTRIBUTING.md)


def copy_lean(out: Path, dest: Path, patterns: tuple[str, ...] = LEAN) -> None:
    """Copy what a result may commit (CONTRIBUTING.md): the report, its plot and each run's small files."""
    for pattern in patterns:
        for path in out.glob(pattern):
            (dest / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / path.relative_to(out))


def machine() -> str:
    import torch

    from barlowtwins.runtime import cpu_description

    try:
        from importlib.metadata import version

        lightly = f", lightly {version('lightly')}"
    except Exception:  # not installed: no lightly rows
        lightly = ""
    cores = f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)"
    date = datetime.date.today().isoformat()
    return f"{cpu_description()}, {cores}, {platform.system()}; torch {torch.__version__}{lightly}; {date}"


def write_report(rows: list[dict], out: Path, data: str, linear_mode: str) -> None:
    def pair(value, floor) -> str:
        return "—" if value is None else f"{value:.1f}" + ("" if floor is None else f" ({floor:.1f})")

    lines = [
        "# Imagenette (224 px copy): Barlow Twins, ours beside lightly, same machine, same minutes",
        "",
        f"Command: `python benchmarks/photos.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine()}.",
        "",
        f"Data: {data}. kNN: weighted, T=0.1, train photos as the bank, val photos as queries; linear: "
        f"`barlowtwins linear --mode {linear_mode}`; both at the training resolution, each arm at its own "
        "normalisation. In brackets: the same ResNet-18 at random init (our initialisation, the row's seed). "
        "images/s: training images (pairs of views) per second of training time.",
        "",
        "| row | seed | minutes | train min | steps | images/s | kNN k=20 | kNN k=200 | linear top-1 | precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        head = f"| {r['row']} | {r['seed']} | {r['minutes']:g} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"{head} {r['train_minutes']:.1f} | {r['steps']} | {r['images_per_s']:.0f} | "
            f"{pair(r['knn20'], r['floor20'])} | {pair(r['knn200'], r['floor200'])} | "
            f"{pair(r['linear'], r['linear_floor'])} | {r['precision']} |"
        )
    lines += ["", "Commands:", ""] + [f"- {r['row']}, seed {r['seed']}: `{r['command']}`" for r in rows]
    finished = [r for r in rows if "error" not in r]
    if finished:
        plot(finished, out / "report.png")
        lines += ["", "![kNN k=20 per row](report.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    """kNN k=20 against training minutes per row (several budgets), else bars of kNN k=20 and linear per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["row"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    if len({r["minutes"] for r in rows}) > 1:
        for name in names:
            points = sorted((r["train_minutes"], r["knn20"]) for r in rows if r["row"] == name)
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.axhline(rows[0]["floor20"] or 0, color="grey", linestyle="--", label="random init (first row)")
        ax.set_xlabel("training minutes")
        ax.set_ylabel("val kNN top-1, k=20 (%)")
    else:
        for i, name in enumerate(names):
            mine = [r for r in rows if r["row"] == name]
            for j, (key, floor, label) in enumerate(
                (("knn20", "floor20", "kNN k=20"), ("linear", "linear_floor", "linear"))
            ):
                value = sum(r[key] for r in mine) / len(mine)
                ax.bar(i + 0.4 * j, value, 0.4, color=f"C{j}", label=label if i == 0 else None)
                if mine[0][floor] is not None:
                    ax.hlines(mine[0][floor], i + 0.4 * j - 0.2, i + 0.4 * j + 0.2, color="k")
        ax.set_xticks([i + 0.2 for i in range(len(names))], [textwrap.fill(n, 26) for n in names], fontsize=7)
        ax.set_title(f"{rows[0]['minutes']:g} training minutes (black: random init)")
        ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="ours rows whose name contains one of these (default: all)")
    parser.add_argument("--minutes", nargs="+", type=float, default=[20.0], help="training minutes per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed")
    parser.add_argument("--out", default=str(RUNS / "study"), help="study directory (outside the repository)")
    parser.add_argument("--lightly", nargs="*", help="add the LIGHTLY rows (those naming a word given; bench extra)")
    parser.add_argument("--match", help="the ours row whose batch and image size the lightly rows take")
    parser.add_argument("--train", default=str(SHARED / "train"), help="training photos (image folder)")
    parser.add_argument("--val", default=str(SHARED / "val"), help="labelled val photos (image folder)")
    parser.add_argument("--limit", nargs=2, type=int, metavar=("TRAIN", "VAL"), help="balanced subset, e.g. 500 200")
    parser.add_argument("--linear-mode", default="fast", choices=("fast", "augmented"), help="linear --mode")
    parser.add_argument(  # auto measures at start-up, and a busy moment can flip one arm to fp32: pin it for studies
        "--precision", default="auto", choices=("auto", "bf16", "fp32"), help="both arms' precision (auto: measured)"
    )
    parser.add_argument("--list", action="store_true", help="print the rows and their flags, then exit")
    parser.add_argument("--copy-to", help="then copy the report and the runs' small files here, e.g. docs/photos")
    args = parser.parse_args()
    if args.list:
        for name, flags in [*VARIANTS.items(), *LIGHTLY.items()]:
            print(f"{name}: {shlex.join(flags)}")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = os.path.relpath(args.train), os.path.relpath(args.val)  # as a user in the repository types it
    data = f"Imagenette {train} / {val}"
    if args.limit:
        train, val = subset(args.train, args.val, *args.limit, out)
        data += f", class-balanced subsets of {args.limit[0]} / {args.limit[1]} photos ({train}, {val})"
    words = [w.lower() for w in args.rows or []]
    chosen = [n for n in VARIANTS if not words or any(w in n.lower() for w in words)]
    if not chosen:
        parser.error(f"no row matches {args.rows}; see --list")
    rows = [{"row": n, "arm": "ours", "flags": VARIANTS[n]} for n in chosen]
    if args.lightly is not None:
        match = next((n for n in VARIANTS if args.match and args.match.lower() in n.lower()), chosen[0])
        config = resolved(VARIANTS[match])
        model, size, batch = config["model"], config["augment"]["image_size"], config["train"]["batch_size"]
        if model["arch"] != "resnet18" or model["small_stem"]:
            parser.error(f"the lightly arm is torchvision's ResNet-18 (ImageNet stem); {match!r} is not")
        for name, flags in LIGHTLY.items():
            if args.lightly and not any(w.lower() in name.lower() for w in args.lightly):
                continue
            rows.append({"row": f"{name} (batch {batch}, {size} px)", "arm": "lightly", "flags": flags,
                         "batch": batch, "image_size": size})  # fmt: skip
    saved = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else []
    results = {(r["row"], r["minutes"], r["seed"]): r for r in saved if "error" not in r}
    for minutes in args.minutes:
        for seed in args.seeds:
            for row in rows:
                key = (row["row"], minutes, seed)
                if key not in results:
                    results[key] = run_row({**row, "minutes": minutes, "seed": seed}, train, val, out, args)
                write_report(list(results.values()), out, data, args.linear_mode)
                shown = {k: v for k, v in results[key].items() if k not in ("command", "flags")}
                print(json.dumps(shown), flush=True)
    if args.copy_to:
        copy_lean(out, Path(args.copy_to))


if __name__ == "__main__":
    main()
