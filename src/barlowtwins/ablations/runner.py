"""Run a study: every variant x seed (x grid point) is its own ``barlowtwins pretrain`` run directory, then
``barlowtwins knn`` and ``barlowtwins linear --mode fast`` on it, then the report.

Each step is a subprocess running the same command a user would type (``--dry-run`` prints them), so a
variant that crashes or diverges is recorded and the study goes on, memory is returned between runs, and any
run can be reproduced by hand. A run is finished when it has both evaluation results; re-running the study
skips finished runs, evaluates trained ones, and resumes interrupted ones through pretrain's own checkpoint
resume. The random-init floor is evaluated once per study, beside the first run.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from barlowtwins.ablations import report, studies
from barlowtwins.config import RESUMABLE_CHANGES, AblateConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import changed_settings, flatten
from barlowtwins.validation import parse_projector_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyData:
    """What every run of a study trains and evaluates on, and the extra overrides for all of them."""

    train: tuple[str, ...]  # --data
    eval: tuple[str, ...]  # --eval-data: the labelled test set (the training data is the kNN bank / probe set)
    sets: tuple[str, ...] = ()  # --set KEY=VALUE passed to every run, before the variant's own
    limit: int = 0  # first N training samples (pretraining, kNN bank, probe training set)
    eval_limit: int = 0  # first N test samples
    workers: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class Run:
    variant: str
    point: str  # grid label ("" without a grid)
    seed: int
    path: Path
    overrides: tuple[str, ...]


def plan(spec: dict[str, Any], settings: AblateConfig, data: StudyData) -> list[Run]:
    """Every run of the study, in order: variant, grid point, seed."""
    hidden = _hidden_width(settings.recipe, data.sets)
    runs = []
    for variant, row in spec["variants"].items():
        for point, extra in (row.get("grid") or {"": []}).items():
            name = f"{variant}__{point}" if point else variant
            overrides = tuple(o.replace("{hidden}", str(hidden)) for o in (*data.sets, *row["set"], *extra))
            runs += [
                Run(variant, point, s, Path(settings.out) / name / f"seed{s}", overrides) for s in range(settings.seeds)
            ]
    return runs


def _hidden_width(recipe: str, sets: tuple[str, ...]) -> int:
    """The base recipe's first projector width, for the projector study's ``{hidden}`` layers."""
    from barlowtwins.recipes import make_config, parse_override

    return parse_projector_spec(make_config(recipe, [parse_override(s) for s in sets]).model.projector)[0]


def commands(run: Run, settings: AblateConfig, data: StudyData, floor: bool) -> dict[str, list[str]]:
    """The pretrain, knn and linear commands of ``run`` (the floor only beside the study's first run)."""
    base = [sys.executable, "-m", "barlowtwins"]
    common = [*(["--workers", str(data.workers)] if data.workers is not None else [])]
    common += ["--device", data.device] if data.device else []
    pretrain = [*base, "pretrain", "--recipe", settings.recipe, "--data", *data.train, "--out", str(run.path)]
    pretrain += ["--seed", str(run.seed), *common]
    pretrain += ["--time-budget", settings.time_budget] if settings.time_budget else []
    pretrain += ["--limit", str(data.limit)] if data.limit else []
    for override in run.overrides:
        pretrain += ["--set", override]
    evaluation = ["--checkpoint", str(run.path), "--train-data", *data.train, "--test-data", *data.eval, *common]
    evaluation += ["--limit", str(data.limit)] if data.limit else []
    evaluation += ["--test-limit", str(data.eval_limit)] if data.eval_limit else []
    evaluation += ["--random-init" if floor else "--no-random-init"]
    return {
        "pretrain": pretrain,
        "knn": [*base, "knn", *evaluation],
        "linear": [*base, "linear", *evaluation, "--mode", "fast", "--epochs", str(settings.linear_epochs)],
    }


def is_finished(run: Run) -> bool:
    return all((run.path / "eval" / f"{name}.json").is_file() for name in ("knn", "linear-fast"))


def check_same_settings(run: Run, pretrain: list[str]) -> None:
    """Refuse to reuse a run whose saved ``config.yaml`` differs from what its command resolves to now
    (``pretrain --print-config``; a recipe edited since, say): a row must not mix runs of two configurations.
    The length of training counts here (a finished run is not resumed), the other resumable settings do not."""
    saved = run.path / "config.yaml"
    if not saved.is_file():
        return
    printed = subprocess.run([*pretrain, "--print-config"], capture_output=True, text=True, check=False)
    if printed.returncode != 0:
        last = (printed.stderr.strip().splitlines() or ["pretrain --print-config failed"])[-1]
        raise BarlowTwinsError(last.removeprefix("barlowtwins: error: "))
    now, before = yaml.safe_load(printed.stdout), yaml.safe_load(saved.read_text())
    changes = changed_settings(before, now, RESUMABLE_CHANGES - {"train.epochs", "train.time_budget"})
    if changes:
        old, new = flatten(before), flatten(now)
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changes[:3])
        raise BarlowTwinsError(
            f"{run.path} was made with other settings than this command gives now ({shown}); pass the run's "
            "own settings (--set KEY=VALUE) to extend the study, or use another --out"
        )


def _execute(command: list[str], log: Path) -> bool:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode == 0


def _diverged(log: Path) -> bool:
    """Whether the run's last error was a non-finite loss: a result of the variant (e.g. Table 5's
    cross-covariance without BN), not a failure of the machinery."""
    errors = [line for line in log.read_text().splitlines() if line.startswith("barlowtwins: error:")]
    return bool(errors) and "training diverged" in errors[-1]  # train/divergence.py's message


def run_study(name: str, settings: AblateConfig, data: StudyData, dry_run: bool = False) -> Path | None:
    """Run (or, with ``dry_run``, log at INFO) every run of study ``name``; write the report; return its path."""
    if name not in studies.STUDY_NAMES:
        raise BarlowTwinsError(f"unknown study '{name}'; choose one of {', '.join(studies.STUDY_NAMES)}")
    if not data.train or not data.eval:
        raise BarlowTwinsError("ablate needs --data (training) and --eval-data (labelled test data)")
    spec = studies.study(name, settings.batch_sizes, settings.lrs, settings.widths)
    runs = plan(spec, settings, data)
    out = Path(settings.out)
    status: dict[str, str] = {}
    for i, run in enumerate(runs):
        cmds = commands(run, settings, data, floor=i == 0)
        if dry_run:
            logger.info("\n".join(shlex.join(c) for c in cmds.values()))
            continue
        label = f"[{i + 1}/{len(runs)}] {run.path.relative_to(out)}"
        check_same_settings(run, cmds["pretrain"])
        if is_finished(run):
            logger.info("%s: finished, skipped", label)
            status[str(run.path)] = "finished"
            continue
        started, log = time.perf_counter(), out / "logs" / f"{run.path.parent.name}-{run.path.name}.log"
        trained = (run.path / "timing.json").is_file() or _execute(cmds["pretrain"], log)
        ok = trained and _execute(cmds["knn"], log) and _execute(cmds["linear"], log)
        status[str(run.path)] = "finished" if ok else "diverged" if _diverged(log) else "failed"
        minutes = (time.perf_counter() - started) / 60
        logger.info("%s: %s in %.1f min (log %s)", label, status[str(run.path)], minutes, log)
    if dry_run:
        return None
    return report.write(
        spec, runs, status, settings, data, [commands(r, settings, data, i == 0) for i, r in enumerate(runs)]
    )
