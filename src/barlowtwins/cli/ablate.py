"""``ablate``: the paper's §4 studies, one command each (parsing only; see barlowtwins.ablations)."""

from __future__ import annotations

import argparse

from barlowtwins.ablations.studies import STUDY_NAMES  # plain data, no torch: the command line stays fast
from barlowtwins.cli.helptext import add_command
from barlowtwins.config import AblateConfig


def _cmd_ablate(args: argparse.Namespace) -> None:
    from barlowtwins.ablations.runner import StudyData, run_study

    settings = AblateConfig(
        recipe=args.recipe,
        time_budget=args.time_budget,
        seeds=args.seeds,
        out=args.out,
        batch_sizes=tuple(args.batch_sizes),
        lrs=tuple(args.lrs),
        widths=tuple(args.widths),
        linear_epochs=args.linear_epochs,
    )
    data = StudyData(
        tuple(args.data), tuple(args.eval_data), tuple(args.set), args.limit, args.eval_limit, args.workers, args.device
    )
    path = run_study(args.study, settings, data, args.dry_run)
    if path is not None:
        print(f"wrote {path}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    d = AblateConfig()
    p = add_command(
        commands,
        "ablate",
        "re-run one of the paper's ablation studies (§4) and write a report",
        "Re-run one of the paper's ablation studies (§4): table5 (loss variants), table6 (asymmetric settings), "
        "batch-size (Fig. 2), augmentations (Fig. 3), projector-width (Fig. 4) or projector-depth. Every variant "
        "and seed is its own pretraining run from --recipe within --time-budget, scored by kNN and a fast "
        "linear probe; report.md and report.json give mean and std over the seeds. Re-running resumes.",
        (
            "barlowtwins ablate table5 --data cifar10 --eval-data cifar10:test --time-budget 10m --seeds 3",
            "barlowtwins ablate batch-size --data cifar10 --eval-data cifar10:test --dry-run",
        ),
    )
    p.add_argument("study", choices=STUDY_NAMES, help="the study to run")
    p.add_argument("--data", nargs="+", required=True, help="training data, as for pretrain")
    p.add_argument("--eval-data", nargs="+", required=True, help="labelled test data for kNN and the linear probe")
    p.add_argument("--recipe", default=d.recipe, help="base recipe of every run")
    p.add_argument("--time-budget", default=d.time_budget, help="training time per run, e.g. 10m ('' : epochs)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="runs per variant")
    p.add_argument("--out", default=d.out, help="study directory (re-running resumes it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--limit", type=int, default=0, help="first N training samples (pretraining and evaluation; 0: all)")
    p.add_argument("--eval-limit", type=int, default=0, help="first N test samples (0: all)")
    p.add_argument("--workers", type=int, help="data loading processes of each run (default: the recipe's)")
    p.add_argument("--device", help="device of each run (default: the recipe's)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(d.batch_sizes), help="batch-size study")
    p.add_argument("--lrs", type=float, nargs="+", default=list(d.lrs), help="lr_weights grid per batch size")
    p.add_argument("--widths", type=int, nargs="+", default=list(d.widths), help="projector-width study")
    p.add_argument("--linear-epochs", type=int, default=d.linear_epochs, help="epochs of the fast linear probe")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.set_defaults(run=_cmd_ablate)
