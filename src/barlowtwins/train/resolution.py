"""Low-resolution-first training (FFCV's progressive resizing, Leclerc et al. 2023): the views of early steps
are shrunk on the training device, so a time budget buys more steps, and the side grows to
``augment.image_size`` for the last part of the run, the resolution the backbone is evaluated at.

Not in the paper (§2.2 trains at 224 px throughout). The views are made at ``augment.image_size`` as always
(the same crops, colours and blur) and only resized here, so the augmentation pipeline is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIDE_MULTIPLE = 8  # sides are rounded to a multiple of this (convolution-friendly shapes, few distinct sizes)


def view_side(step: int, total: int, start: int, end: int, ramp: tuple[float, float]) -> int:
    """The views' side at ``step`` of ``total``: ``start`` until ``ramp[0]`` of the run, then linearly up to
    ``end`` at ``ramp[1]``, then ``end`` (FFCV's start_ramp / end_ramp, as fractions of the run), rounded to
    a multiple of 8 px. ``start`` 0 or at least ``end``: always ``end``."""
    if not start or start >= end or total <= 0:
        return end
    side = float(_sides(np.array([step / total]), start, end, ramp)[0])
    return min(end, max(SIDE_MULTIPLE, SIDE_MULTIPLE * round(side / SIDE_MULTIPLE)))


def step_cost(progress: np.ndarray, start: int, end: int, ramp: tuple[float, float]) -> np.ndarray:
    """A step's cost relative to a step at ``end`` px, at each fraction ``progress`` of the run: the share of
    the pixels (convolutions' work grows with them), for :class:`barlowtwins.train.budget.Budget` to fit the
    growing steps into a time budget."""
    return (_sides(progress, start, end, ramp) / end) ** 2


def _sides(progress: np.ndarray, start: int, end: int, ramp: tuple[float, float]) -> np.ndarray:
    begin, finish = ramp
    if finish <= begin:
        fraction = (progress >= finish).astype(float)
    else:
        fraction = np.clip((progress - begin) / (finish - begin), 0.0, 1.0)
    return start + fraction * (end - start)


def resize_views(views: list[torch.Tensor], side: int) -> list[torch.Tensor]:
    """Views A and B (the first two, (N, C, H, W)) at ``side`` x ``side``, bilinear with antialiasing (as a
    photo is shrunk), in the memory format they came in; views already that size, and multi-crop's small views
    after them, are returned as they are."""
    return [_resized(view, side) if i < 2 else view for i, view in enumerate(views)]


def _resized(view: torch.Tensor, side: int) -> torch.Tensor:
    if view.shape[-2:] == (side, side):
        return view
    channels_last = view.is_contiguous(memory_format=torch.channels_last)
    out = F.interpolate(view, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
