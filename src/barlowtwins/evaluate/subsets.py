"""Labelled subsets for semi-supervised evaluation (appendix B.2), as list files in SimCLR's format.

The paper fine-tunes on SimCLR's 1% and 10% ImageNet subsets: text files with one image name per line
(``n01440764_10026.JPEG``). The official ``evaluate.py`` downloads them at run time; here a subset is
either read from such a file or drawn class-balanced with a seed and written as one, so the exact images
are on disk beside the result and nothing is fetched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from barlowtwins.atomic import atomic_write_text
from barlowtwins.errors import BarlowTwinsError


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``fraction`` of the samples, the same fraction of every class.

    Each class keeps ``round(fraction * class size)`` samples (at least one), drawn with ``seed``, so
    the subset is as balanced as the full set and the same seed gives the same subset.
    """
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise BarlowTwinsError(f"label fraction must be in (0, 1], got {fraction}")
    if (labels < 0).any():
        raise BarlowTwinsError("a class-balanced subset needs a label for every sample; this data has unlabelled ones")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def write_subset_file(ids: Sequence[str], path: str | Path) -> None:
    """One sample id (WebDataset key or image path) per line, SimCLR's subset format."""
    bad = [i for i in ids if "\n" in i or not i.strip()]
    if bad:
        raise BarlowTwinsError(f"sample id {bad[0]!r} cannot be written one per line")
    atomic_write_text("".join(f"{i}\n" for i in ids), path)


def read_subset_file(path: str | Path) -> list[str]:
    """The ids listed in a subset file (blank lines and surrounding spaces ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise BarlowTwinsError(f"cannot read subset file {path} ({error.strerror})") from None
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise BarlowTwinsError(f"subset file {path} lists no samples")
    return ids


def match_ids(wanted: Sequence[str], ids: Sequence[str], where: str) -> np.ndarray:
    """Positions in ``ids`` of each wanted id, matched exactly or by file name (SimCLR lists file names).

    Every wanted id must name exactly one sample, so a list made for other data fails loudly.
    """
    exact: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for position, sample_id in enumerate(ids):
        exact.setdefault(sample_id, []).append(position)
        by_name.setdefault(os.path.basename(sample_id), []).append(position)
    positions = []
    unknown = []
    for name in wanted:
        found = exact.get(name) or by_name.get(name) or by_name.get(os.path.basename(name))
        if not found:
            unknown.append(name)
        elif len(found) > 1:
            raise BarlowTwinsError(f"{where}: '{name}' names {len(found)} samples; use full paths or unique keys")
        else:
            positions.append(found[0])
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else "")
        raise BarlowTwinsError(f"{where}: {len(unknown)} listed samples are not in the data: {shown}")
    if len(set(positions)) != len(positions):
        raise BarlowTwinsError(f"{where} lists the same sample more than once")
    return np.asarray(positions, dtype=np.int64)
