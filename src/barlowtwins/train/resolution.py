"""Low-resolution-first training (FFCV's progressive resizing, Leclerc et al. 2023): the views of early steps
are smaller, so a step costs less (the backbone's work and, where the views are made at that side, the views'
too) and a time budget buys more steps; the side grows to ``augment.image_size`` for the last part of the run,
the resolution the backbone is evaluated at.

Not in the paper (§2.2 trains at 224 px throughout). The loop plans each step's side (:func:`view_side`) and
where the data path allows, the views are made at it: on the whole-batch path (images of one shape, views made
in the training process when the loop asks for a batch, ``views.batched.BatchedViews``) views A and B are
cropped straight to the step's side and coloured there, with the same crop boxes and colour draws as at
``augment.image_size`` and the blur's kernel and sigma scaled by side / image_size, so they are the full-size
views resized, up to resampling. The other paths (crops cut ahead in loader workers for photos of several shapes,
streamed shards, ``data.views=pil``) make the views at ``augment.image_size`` as always; :func:`resize_views`
then shrinks them on the training device (it leaves views already at the side as they are). Multi-crop's small
views keep their own size throughout.
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
    photo is shrunk), in the memory format they came in; views already that size (made at the side, on the
    whole-batch path), and multi-crop's small views after them, are returned as they are."""
    return [_resized(view, side) if i < 2 else view for i, view in enumerate(views)]


def _resized(view: torch.Tensor, side: int) -> torch.Tensor:
    if view.shape[-2:] == (side, side):
        return view
    channels_last = view.is_contiguous(memory_format=torch.channels_last)
    out = F.interpolate(view, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
