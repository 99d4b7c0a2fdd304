"""A picture of predictions on a few test images: ground truth in green, detections above a score in red."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from barlowtwins.detection.data import Annotated

SHOWN_SCORE = 0.5  # detections drawn: those scoring at least this, else the best three
COLUMNS = 4


def _shown(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    confident = [r for r in results if r["score"] >= SHOWN_SCORE]
    return confident or sorted(results, key=lambda r: -r["score"])[:3]


def draw_predictions(
    images: Sequence[Annotated], results: list[dict[str, Any]], classes: Sequence[str], out: str | Path
) -> None:
    """Draw ``images`` with their ground-truth boxes and detections (COCO results format) into ``out`` (PNG)."""
    from barlowtwins.plots import _pyplot

    plt = _pyplot()
    rows = max(1, -(-len(images) // COLUMNS))
    columns = min(COLUMNS, max(1, len(images)))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, record in zip(axes.flat, images, strict=False):
        with Image.open(record.path) as image:
            ax.imshow(np.asarray(image.convert("RGB")))
        for box in record.boxes:
            ax.add_patch(plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ec="lime", lw=1.5))
        for r in _shown([r for r in results if r["image_id"] == record.image_id]):
            x, y, w, h = r["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="red", lw=1.5))
            ax.text(
                x,
                y,
                f"{classes[r['category_id'] - 1]} {r['score']:.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "lw": 0},
            )
        ax.set_title(record.path.name, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
