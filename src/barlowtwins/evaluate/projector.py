"""TensorBoard's embedding projector files, written by ``SummaryWriter.add_embedding``.

``tensorboard --logdir DIR`` then shows each backbone's features (L2-normalised, so PCA, t-SNE and the
projector's own neighbours follow the cosine geometry the neighbours picture uses) with a label and a file name
per point and a thumbnail of its photo. The thumbnails go in one square sprite image, which TensorBoard's
projector accepts up to 8192 px a side: ``ceil(sqrt(points)) * side`` must not exceed it (4,096 points of 48 px
make 3,072 px; at 48 px up to 28,900 points fit).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from barlowtwins.errors import BarlowTwinsError

MAX_SPRITE = 8192  # px per side of the sprite image TensorBoard's projector loads
METADATA_HEADER = ["label", "file"]
DECIMALS = 6  # of each feature in tensors.tsv (text): half the size of float32's shortest repr, nothing visible lost


def sprite_side(points: int, side: int) -> int:
    """Side in px of the square sprite of ``points`` thumbnails of ``side`` px (TensorBoard's arrangement)."""
    return math.ceil(math.sqrt(points)) * side


def check_sprite(points: int, side: int) -> None:
    """Refuse a sprite TensorBoard would not load, naming both flags."""
    if sprite_side(points, side) > MAX_SPRITE:
        most = (MAX_SPRITE // side) ** 2
        raise BarlowTwinsError(
            f"{points} projector points of {side} px make a sprite of {sprite_side(points, side)} px a side; "
            f"TensorBoard's projector takes at most {MAX_SPRITE}: pass --projector-points {most} or less, "
            "or a smaller --sprite-size"
        )


def _cell(text: str) -> str:
    return " ".join(text.split()) or "-"  # no tab or newline may break the TSV; no empty cell


def write_projector(
    out: str | Path,
    embeddings: Mapping[str, torch.Tensor],
    labels: Sequence[str | None],
    files: Sequence[str],
    pictures: np.ndarray,
) -> Path:
    """One projector embedding per name in ``embeddings`` (rows = points), sharing the metadata (``labels``,
    ``files``) and the thumbnails ``pictures`` (uint8 (N, S, S, 3)). Returns ``projector_config.pbtxt``."""
    from torch.utils.tensorboard import SummaryWriter

    check_sprite(len(pictures), pictures.shape[1])
    metadata = [[_cell(label or "unlabelled"), _cell(name)] for label, name in zip(labels, files, strict=True)]
    label_img = torch.from_numpy(np.ascontiguousarray(pictures)).permute(0, 3, 1, 2).float() / 255
    with SummaryWriter(str(out)) as writer, contextlib.redirect_stdout(io.StringIO()):  # its "dir exists" notice
        for tag, features in embeddings.items():
            writer.add_embedding(
                F.normalize(features.float(), dim=1).double().numpy().round(DECIMALS),
                metadata=metadata,
                metadata_header=METADATA_HEADER,
                label_img=label_img,
                tag=tag,
            )
    return Path(out) / "projector_config.pbtxt"
