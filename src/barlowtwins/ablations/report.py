"""A study's report: our numbers (mean ± std over seeds) beside the paper's, one verdict per row, a plot.

The verdict tests the paper's conclusion for a row as an ordering against the row's reference (the baseline,
the method's best batch size, or the narrower projector) on the fast linear probe's top-1, the paper's
metric: a difference counts only beyond the noise, the larger of 1 p.p. and the sum of the two stds.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from barlowtwins.atomic import atomic_write_text
from barlowtwins.config import AblateConfig
from barlowtwins.runtime import run_metadata

MUCH = 5.0  # p.p.: "much lower" (the paper's rows so marked are 8-71 p.p. below its baseline)
METRICS = ("linear", "knn")
FILES = {"linear": "linear-fast", "knn": "knn"}  # eval/<name>.json written by each protocol


def _read(path: Path, name: str, subject: str) -> float | None:
    file = path / "eval" / f"{FILES[name]}.json"
    if not file.is_file():
        return None
    results = json.loads(file.read_text())["results"].get(subject)
    if results is None:
        return None
    top1 = results["top1"]
    return next(iter(top1.values())) if isinstance(top1, dict) else top1  # kNN: the first (headline) k


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def verdict(expect: str | None, ours: dict, reference: dict | None, diverged: bool = False) -> tuple[str, str]:
    """(``holds`` | ``contradicted`` | ``within noise`` | ``no claim`` | ``no data``, a short explanation).

    A variant whose every run diverged (non-finite loss) learned nothing usable: that agrees with a claim
    that it is lower, and contradicts a claim that it is similar or higher."""
    if expect is None:
        return "no claim", "reference row" if reference is None else "the text makes no claim for this row"
    if diverged:
        agrees = expect in ("lower", "much_lower", "slightly_lower")
        return ("holds" if agrees else "contradicted"), "every run diverged (non-finite loss): nothing usable learned"
    if reference is None or ours["mean"] is None or reference["mean"] is None:
        return "no data", "a run is missing or failed"
    diff, noise = ours["mean"] - reference["mean"], max(1.0, ours["std"] + reference["std"])
    said = f"{diff:+.1f} p.p. vs reference (noise {noise:.1f})"
    if expect == "similar":
        return ("holds" if abs(diff) <= noise else "contradicted"), said
    if expect == "slightly_lower" and -diff > max(MUCH, noise):
        return "holds in direction", f"{said}; far more than the paper's slight drop"
    sign = 1 if expect == "higher" else -1
    if sign * diff > (max(MUCH, noise) if expect == "much_lower" else noise):
        return "holds", said
    if sign * diff > noise:
        return "holds in direction", f"{said}; less than the {MUCH:g} p.p. of 'much lower'"
    return ("within noise" if abs(diff) <= noise else "contradicted"), said


def collect(spec: dict[str, Any], runs: list, status: dict[str, str]) -> list[dict[str, Any]]:
    """One row per variant: the best grid point's linear and kNN summaries over seeds, and the verdict."""
    rows = []
    for variant, row in spec["variants"].items():
        points: dict[str, dict[str, list[float]]] = {}
        for run in (r for r in runs if r.variant == variant):
            values = points.setdefault(run.point, {m: [] for m in METRICS})
            for metric in METRICS:
                value = _read(run.path, metric, "pretrained")
                if value is not None:
                    values[metric].append(value)
        summaries = {p: {m: _summary(values[m]) for m in METRICS} for p, values in points.items()}
        best = max(summaries, key=lambda p: summaries[p]["linear"]["mean"] or -1.0)
        mine = [str(r.path) for r in runs if r.variant == variant]
        diverged_runs = [path for path in mine if status.get(path) == "diverged"]
        grid = {p: summary for p, summary in summaries.items() if p}
        edges = [*grid][:1] + [*grid][-1:] if len(grid) > 1 else []
        fields = ("paper", "source", "expect", "claim", "group")
        rows.append(
            {
                "variant": variant,
                "point": best,
                **{k: row.get(k) for k in fields},
                "ours": summaries[best],
                "grid": grid,
                "best_at_edge": best in edges and summaries[best]["linear"]["mean"] is not None,
                "failed": [path for path in mine if status.get(path) == "failed"],
                "runs": len(mine),
                "diverged_runs": diverged_runs,
                "diverged": bool(mine) and len(diverged_runs) == len(mine),
            }
        )
    for row, spec_row in zip(rows, spec["variants"].values(), strict=True):
        reference = _reference(spec, rows, row, spec_row)
        row["reference"] = reference["variant"] if reference else None
        row["verdict"], row["why"] = verdict(
            row["expect"], row["ours"]["linear"], reference and reference["ours"]["linear"], row["diverged"]
        )
        if row["diverged_runs"] and not row["diverged"]:
            row["why"] += f"; {len(row['diverged_runs'])} of {row['runs']} runs diverged, left out"
    return rows


def _reference(spec, rows, row, spec_row) -> dict[str, Any] | None:
    by_name = {r["variant"]: r for r in rows}
    if spec["reference"] == "group-best":
        group = [r for r in rows if r["group"] == row["group"] and r["ours"]["linear"]["mean"] is not None]
        return max(group, key=lambda r: r["ours"]["linear"]["mean"]) if group else None
    name = spec_row.get("reference") if spec["reference"] == "previous" else spec["reference"]
    return None if name is None or name == row["variant"] else by_name.get(name)


def _cell(summary: dict[str, Any], diverged: bool = False) -> str:
    if summary["mean"] is None:
        return "diverged" if diverged else "—"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}"


def write(spec, runs, status, settings: AblateConfig, data, commands: list[dict[str, list[str]]]) -> Path:
    """``report.json``, ``report.md`` and ``report.png`` in the study directory; returns the markdown path."""
    out = Path(settings.out)
    rows = collect(spec, runs, status)
    floor = {m: _read(runs[0].path, m, "random_init") for m in METRICS}
    report = {
        "study": spec["name"],
        "title": spec["title"],
        "paper_metric": "ImageNet linear top-1 (%), ResNet-50, 300 epochs (paper §4)",
        "our_metrics": "fast linear probe top-1 and kNN top-1 (%) on --eval-data; mean and sample std over seeds",
        "settings": {**settings.__dict__, "data": data.__dict__},
        "random_init_floor": floor,
        "rows": rows,
        "command": "barlowtwins " + shlex.join(sys.argv[1:]),
        "run_commands": commands,
        "meta": run_metadata(),
    }
    atomic_write_text(json.dumps(report, indent=2, default=str) + "\n", out / "report.json")
    atomic_write_text(_markdown(report, settings), out / "report.md")
    _plot(rows, floor, spec["title"], out / "report.png")
    return out / "report.md"


def _markdown(report: dict[str, Any], settings: AblateConfig) -> str:
    floor = report["random_init_floor"]
    lines = [
        f"# {report['title']}",
        "",
        f"Made by `{report['command']}` (base recipe `{settings.recipe}`, "
        + (f"time budget `{settings.time_budget}` per run" if settings.time_budget else "no time budget: epochs")
        + f", {settings.seeds} seed(s)). Ours: {report['our_metrics']}. Paper: {report['paper_metric']}. "
        "Compare orderings, not values."
        + (" With one seed the noise is not measured: 1 p.p. is assumed." if settings.seeds == 1 else ""),
        "",
        "Random-init floor (same architecture, seed 0's initial weights): "
        + ", ".join(f"{m} {'—' if v is None else f'{v:.1f}'}" for m, v in floor.items()),
        "",
        "| row | paper top-1 | ours linear | ours kNN | reference | paper's conclusion | here |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in report["rows"]:
        name = f"{r['variant']} ({r['point']})" if r["point"] else r["variant"]
        paper = "—" if r["paper"] is None else f"{r['paper']:.1f}"
        linear, knn = (_cell(r["ours"][m], r["diverged"]) for m in ("linear", "knn"))
        lines.append(
            f"| {name} | {paper} | {linear} | {knn} | "
            f"{r['reference'] or '—'} | {r['claim']} | {r['verdict']}: {r['why']} |"
        )
    lines += _grid_table(report["rows"])
    failed = [path for r in report["rows"] for path in r["failed"]]
    if failed:
        lines += ["", "Failed runs (see logs/): " + ", ".join(failed)]
    some = [path for r in report["rows"] if not r["diverged"] for path in r["diverged_runs"]]
    if some:
        lines += ["", "Diverged (non-finite loss; left out of their row's mean and std, see logs/): " + ", ".join(some)]
    lines += ["", "![ours against the paper](report.png)", ""]
    return "\n".join(lines)


def _grid_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every grid point's linear (kNN) top-1, the kept one in bold: shows how flat the grid is and whether its
    best sits at an edge, where the optimum may lie outside the grid."""
    points = list(dict.fromkeys(p for r in rows for p in r["grid"]))
    if len(points) < 2:  # no grid, or one point: the main table says it all
        return []
    lines = ["", "Every grid point (linear top-1, kNN in brackets; mean over seeds; bold: the point kept above):", ""]
    lines += ["| row | " + " | ".join(points) + " |", "|---|" + "---:|" * len(points)]
    for r in rows:
        cells = []
        for p in points:
            linear, knn = (r["grid"].get(p, {}).get(m, {}).get("mean") for m in METRICS)
            cell = "—" if linear is None else f"{linear:.1f} ({'—' if knn is None else f'{knn:.1f}'})"
            cells.append(f"**{cell}**" if p == r["point"] and linear is not None else cell)
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    edge = [r["variant"] for r in rows if r["best_at_edge"]]
    if edge:
        lines += ["", "Best at an edge of the grid (the optimum may lie beyond it; widen the grid): " + ", ".join(edge)]
    return lines


def _plot(rows: list[dict[str, Any]], floor: dict[str, float | None], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    x = range(len(rows))
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(rows) + 4), 4.5))
    for offset, metric in ((-0.2, "linear"), (0.2, "knn")):
        means = [r["ours"][metric]["mean"] or 0 for r in rows]
        stds = [r["ours"][metric]["std"] or 0 for r in rows]
        ours.bar([i + offset for i in x], means, 0.4, yerr=stds, capsize=3, label=metric)
        if floor[metric] is not None:
            ours.axhline(floor[metric], linestyle="--", linewidth=1, color="C0" if metric == "linear" else "C1")
    ours.set_title("ours: top-1 mean ± std (dashed: random init)")
    paper.bar(list(x), [r["paper"] or 0 for r in rows], 0.6, color="gray")
    paper.set_title("paper: ImageNet linear top-1 (0: figure only)")
    for panel in (ours, paper):
        panel.set_xticks(list(x), names, rotation=30, ha="right")
    ours.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
