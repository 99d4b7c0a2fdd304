"""Training curves from ``metrics.jsonl``, drawn with matplotlib (no display needed)."""

from __future__ import annotations

import io
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


def png_bytes(figure, dpi: int) -> bytes:
    """The figure drawn once as PNG bytes (for a file and TensorBoard alike), then closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def correlation_figure(block, step: int):
    """Heat-map of a block of the cross-correlation matrix C (paper eq. 2, Fig. 1): the identity is the goal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(block, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"C[:{len(block)}, :{len(block)}] at step {step}")
    fig.subplots_adjust(left=0.08, right=0.84, bottom=0.06, top=0.93)  # fixed: tight_layout cost 0.4 s a picture
    return fig


def spectrum_figure(singular_values, rank: float, step: int):
    """Singular values of the standardised embeddings (log scale), titled with their effective rank (RankMe)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(range(1, len(singular_values) + 1), [max(float(v), 1e-12) for v in singular_values])
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(f"spectrum at step {step}: effective rank {rank:.1f} of {len(singular_values)}")
    fig.subplots_adjust(left=0.19, right=0.96, bottom=0.12, top=0.92)
    return fig


def views_figure(sources, pairs, ids, size: int):
    """A grid: each source image (its whole picture) beside its view A and view B (uint8 (n, 2, 3, S, S))."""
    plt = _pyplot()
    rows = len(pairs)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.4 * rows), squeeze=False)
    for row, (source, pair, name) in enumerate(zip(sources, pairs, ids, strict=True)):
        panels = (source, pair[0].permute(1, 2, 0).numpy(), pair[1].permute(1, 2, 0).numpy())
        for ax, picture, title in zip(axes[row], panels, (str(name)[-28:], "view A", "view B"), strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{rows} view pairs at {size} px, before normalisation", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / rows))
    return fig
