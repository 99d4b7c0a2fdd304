"""Training curves from ``metrics.jsonl``, drawn with matplotlib (no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_png: str | Path) -> None:
    """Loss terms and the normalised diagnostics against the step, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_diag) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "invariance", "redundancy"):
        ax_loss.plot(steps, [r[key] for r in records], label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("Barlow Twins loss (eq. 1)")
    ax_loss.legend()
    ax_diag.plot(steps, [r["on_diag_mean"] for r in records], label="mean C_ii (-> 1)")
    ax_diag.plot(steps, [r["off_diag_rms"] for r in records], label="rms C_ij, i != j (-> 0)")
    ax_diag.set_xlabel("step")
    ax_diag.set_title("cross-correlation diagnostics")
    ax_diag.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
