"""Summarise raccoon-compare.sh: box AP of a pretrained backbone against random initialisation, over seeds.

Reads ``DIR/<init>-<seed>/detection.json`` and writes ``DIR/summary.md`` and ``DIR/summary.json``: per run the
steps that fitted the budget and AP / AP50 / AP75 / VOC07 AP50, then per initialisation the mean and the sample
standard deviation over seeds (the seed-to-seed noise), and the margin (difference of means) against the larger of
the two noises. Usage: ``python docs/detection/raccoon-summary.py docs/detection/raccoon-20m``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("AP", "AP50", "AP75", "VOC07 AP50")


def _row(report: dict) -> dict[str, float]:
    box = report["bbox"]
    return {"AP": box["AP"], "AP50": box["AP50"], "AP75": box["AP75"], "VOC07 AP50": report["voc07"]["AP50"]}


def main(directory: Path) -> None:
    runs: dict[str, list[dict]] = {"pretrained": [], "random": []}
    lines = ["| run | steps | train min | " + " | ".join(METRICS) + " |", "|---" * (3 + len(METRICS)) + "|"]
    for path in sorted(directory.glob("*-*/detection.json")):
        init, seed = path.parent.name.rsplit("-", 1)
        report = json.loads(path.read_text())
        row = _row(report)
        runs[init].append(row)
        cells = " | ".join(f"{row[m]:.1f}" for m in METRICS)
        lines.append(f"| {init}, seed {seed} | {report['steps']} | {report['train_minutes']} | {cells} |")
    summary: dict[str, dict[str, dict[str, float]]] = {}
    lines += ["", "| initialisation | runs | " + " | ".join(METRICS) + " |", "|---" * (2 + len(METRICS)) + "|"]
    for init, rows in runs.items():
        summary[init] = {}
        for metric in METRICS:
            values = [r[metric] for r in rows]
            noise = statistics.stdev(values) if len(values) > 1 else float("nan")
            summary[init][metric] = {"mean": statistics.fmean(values), "std": noise}
        cells = " | ".join(f"{summary[init][m]['mean']:.1f} ± {summary[init][m]['std']:.1f}" for m in METRICS)
        lines.append(f"| {init} | {len(rows)} | {cells} |")
    lines += ["", "Margin (pretrained − random mean) against the larger seed-to-seed standard deviation:", ""]
    for metric in METRICS:
        margin = summary["pretrained"][metric]["mean"] - summary["random"][metric]["mean"]
        noise = max(summary["pretrained"][metric]["std"], summary["random"][metric]["std"])
        summary.setdefault("margin", {})[metric] = {"margin": margin, "noise": noise, "ratio": margin / noise}
        pairs = list(zip(runs["pretrained"], runs["random"], strict=True))
        ahead = sum(a[metric] > b[metric] for a, b in pairs)
        summary["margin"][metric]["pretrained_ahead"] = f"{ahead} of {len(pairs)}"
        lines.append(
            f"- {metric}: {margin:+.1f} points, noise {noise:.1f} ({margin / noise:.1f}×); "
            f"pretrained ahead in {ahead} of {len(pairs)} seeds"
        )
    (directory / "summary.md").write_text("\n".join(lines) + "\n")
    (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
