"""Continued pretraining (``pretrain --init``) measured on real photos: is a backbone trained elsewhere and
continued on your photos worth more than the same minutes on your photos alone? (issue 28, item 3)

    python benchmarks/photos_init.py --out ../runs/photos-init --copy-to docs/photos-recipe/init-30m

Three arms, one seed, kNN (k=20 and 200, T=0.1, Imagenette's train photos as the bank, its val photos as the
queries) at 128 px with ImageNet's normalisation, as ``photos-cpu`` trains and scores, beside the ResNet-18 at
random init:

* **CIFAR alone**: ``--recipe cifar10-cpu`` on CIFAR-10's 50,000 training images (32 px) for ``--cifar-minutes``,
  its backbone exported and scored on Imagenette at 128 px as a plain torchvision state_dict, the way someone
  else's weights arrive (``knn`` refuses another size than the pretraining one for our own runs and exports);
* **CIFAR, continued**: that run given to ``pretrain --recipe photos-cpu --init`` on Imagenette's train photos for
  ``--continue-minutes`` (backbone and projector taken: both recipes build a ResNet-18 with the ImageNet stem and
  a 1024-wide projector);
* **scratch**: ``--recipe photos-cpu`` on Imagenette for ``--cifar-minutes + --continue-minutes``, the same total.

Budgets count training time only. Each step is skipped when its output exists (a re-run finishes a study and
rewrites the report). Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from photos import SHARED, copy_lean, execute, machine  # benchmarks/photos.py: Imagenette, commands, copying, machine

CIFAR = SHARED.parent / "cifar10"
QUIET = ["--set", "monitor.knn_every_epochs=0"]  # the monitor's kNN is evaluation: off, as in benchmarks/photos.py
CIFAR_SCORED = "cifar-on-imagenette.json"  # the CIFAR backbone's kNN on Imagenette
LEAN = ("report.md", "report.json", CIFAR_SCORED, "*/config.yaml", "*/meta.json", "*/timing.json", "*/eval/knn.json")
PLAIN = "{}/cifar-backbone-plain.pth"  # the CIFAR backbone as a plain torchvision state_dict
IMAGENET_NORM = ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]  # photos-cpu's


def steps(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str], Path]]:
    """(arm, command, the file that shows it done) for each step of the study, in order."""
    seed = ["--seed", str(args.seed)]
    imagenette = ["--data", args.train, "--eval-data", args.val]
    cifar, continued, scratch = out / "cifar", out / "continued", out / "scratch"
    shards = f"{args.cifar}/cifar10-{{}}-{{{{000000..{{:06d}}}}}}.tar"  # the brace pattern of CIFAR-10's shards
    cifar_data = [shards.format("train", 9), shards.format("test", 1)]
    total = args.cifar_minutes + args.continue_minutes
    return [
        (
            "CIFAR alone",
            ["barlowtwins", "pretrain", "--recipe", "cifar10-cpu", "--data", cifar_data[0], "--eval-data",
             cifar_data[1], *QUIET, "--time-budget", f"{args.cifar_minutes:g}m", *seed, "--out", str(cifar)],
            cifar / "timing.json",
        ),
        (
            "CIFAR alone",
            ["barlowtwins", "export", "--checkpoint", str(cifar), "--out", str(out / "cifar-backbone.pth")],
            out / "cifar-backbone.pth",
        ),
        (  # as someone else's weights arrive: a plain state_dict (no sidecar), so kNN takes the photos' size
            "CIFAR alone",
            ["python", "-c", f"import torch; torch.save(torch.load({str(out / 'cifar-backbone.pth')!r}, "
             f"weights_only=True), {str(PLAIN.format(out))!r})"],
            Path(PLAIN.format(out)),
        ),
        (
            "CIFAR alone",
            ["barlowtwins", "knn", "--checkpoint", PLAIN.format(out), "--arch", "resnet18", "--no-small-stem",
             "--image-size", "128", *IMAGENET_NORM, "--train-data", args.train, "--test-data", args.val, *seed,
             "--out", str(out / CIFAR_SCORED)],
            out / CIFAR_SCORED,
        ),
        (
            "CIFAR, continued",
            ["barlowtwins", "pretrain", "--recipe", "photos-cpu", "--init", str(cifar), *imagenette, *QUIET,
             "--time-budget", f"{args.continue_minutes:g}m", *seed, "--out", str(continued)],
            continued / "timing.json",
        ),
        (
            "scratch",
            ["barlowtwins", "pretrain", "--recipe", "photos-cpu", *imagenette, *QUIET, "--time-budget",
             f"{total:g}m", *seed, "--out", str(scratch)],
            scratch / "timing.json",
        ),
    ]  # fmt: skip


def run(arm: str, command: list[str], done: Path, log: Path) -> None:
    if done.is_file():
        return
    print(f"{arm}: {shlex.join(command[:3])} ...", flush=True)
    error = execute(command, log)
    if error is not None:
        sys.exit(f"{arm} failed: {error} (see {log})")


def row(arm: str, minutes: str, knn: Path, timing: Path | None, init_line: str = "") -> dict:
    results = json.loads(knn.read_text())["results"]
    spent = json.loads(timing.read_text()) if timing else {}
    return {
        "arm": arm,
        "minutes": minutes,
        "steps": spent.get("steps"),
        "knn20": results["pretrained"]["top1"]["20"],
        "knn200": results["pretrained"]["top1"]["200"],
        "floor20": results["random_init"]["top1"]["20"],
        "floor200": results["random_init"]["top1"]["200"],
        "init": init_line,
    }


def report(args: argparse.Namespace, out: Path, done: list[tuple[str, list[str], Path]]) -> None:
    total = args.cifar_minutes + args.continue_minutes
    log = (out / "stdout.txt").read_text() if (out / "stdout.txt").exists() else ""
    init_line = next((line.strip() for line in log.splitlines() if line.strip().startswith("--init ")), "")
    rows = [
        row("CIFAR alone", f"{args.cifar_minutes:g} on CIFAR-10", out / CIFAR_SCORED, None),
        row("CIFAR, continued", f"{args.cifar_minutes:g} + {args.continue_minutes:g} on Imagenette",
            out / "continued" / "eval" / "knn.json", out / "continued" / "timing.json", init_line),
        row("scratch", f"{total:g} on Imagenette", out / "scratch" / "eval" / "knn.json",
            out / "scratch" / "timing.json"),
    ]  # fmt: skip
    rows[0]["steps"] = json.loads((out / "cifar" / "timing.json").read_text())["steps"]
    lines = [
        "# Continued pretraining on real photos: `--init` against the same minutes from scratch",
        "",
        f"Command: `python benchmarks/photos_init.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine()}.",
        "",
        "kNN top-1 on Imagenette's val photos (weighted, T=0.1, its train photos as the bank), 128 px, ImageNet's "
        "normalisation; in brackets the same ResNet-18 at random init. Steps: of each run's own training.",
        "",
        "| arm | training minutes | steps | kNN k=20 | kNN k=200 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['minutes']} | {r['steps']} | {r['knn20']:.1f} ({r['floor20']:.1f}) | "
                     f"{r['knn200']:.1f} ({r['floor200']:.1f}) |")  # fmt: skip
    if init_line:
        lines += ["", f"What `--init` took (the continued run's log): `{init_line}`"]
    lines += ["", "Commands, in order:", ""] + [f"- {arm}: `{shlex.join(command)}`" for arm, command, _ in done]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="study directory (outside the repository)")
    parser.add_argument("--cifar", default=os.path.relpath(CIFAR), help="CIFAR-10 shards' folder")
    parser.add_argument("--train", default=os.path.relpath(SHARED / "train"), help="training photos (image folder)")
    parser.add_argument("--val", default=os.path.relpath(SHARED / "val"), help="labelled val photos (image folder)")
    parser.add_argument("--cifar-minutes", type=float, default=20.0, help="cifar10-cpu's budget on CIFAR-10")
    parser.add_argument("--continue-minutes", type=float, default=10.0, help="photos-cpu --init's budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy-to", help="then copy the report and the runs' small files here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = steps(args, out)
    for arm, command, finished in done:
        run(arm, command, finished, out / "stdout.txt")
    report(args, out, done)
    print((out / "report.md").read_text())
    if args.copy_to:
        copy_lean(out, Path(args.copy_to), LEAN)


if __name__ == "__main__":
    main()
