"""Training curves from ``metrics.jsonl``, drawn with matplotlib (no display needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def plot_metrics(
    metrics_path: str | Path, out_png: str | Path, terms: Sequence[str], diagnostics: Sequence[str]
) -> None:
    """The loss ``terms`` (log scale) and the normalised ``diagnostics`` against the step, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_diag) = plt.subplots(1, 2, figsize=(11, 4))
    for panel, keys in ((ax_loss, terms), (ax_diag, diagnostics)):
        for key in keys:
            if all(r.get(key) is not None for r in records):
                panel.plot(steps, [r[key] for r in records], label=key)
        panel.set_xlabel("step")
        panel.legend()
    ax_loss.set_yscale("log")
    ax_loss.set_title("loss and its terms")
    ax_diag.set_title("diagnostics")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
