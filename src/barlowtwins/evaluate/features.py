"""The one feature-extraction loop: frozen features (and projector outputs) with labels and sample ids."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn
from tqdm import tqdm


class Features(NamedTuple):
    features: torch.Tensor  # (N, dim) float32 on CPU
    labels: torch.Tensor  # (N,) int64, -1 where unlabelled
    ids: list[str]
    projections: torch.Tensor | None = None  # projector outputs, when a projector was given


@torch.no_grad()
def extract(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    projector: nn.Module | None = None,
    progress: str | None = None,
) -> Features:
    """``model(images)`` of every ``(images, labels, ids)`` batch, in eval mode (batch-norm running statistics,
    as at test time) and channels-last (faster convolutions on CPUs and GPUs). The model's mode is restored."""
    was_training = model.training
    model.to(device, memory_format=torch.channels_last).eval()
    if projector is not None:
        projector.to(device).eval()
    features, projections, labels, ids = [], [], [], []
    for images, targets, keys in tqdm(
        batches, desc=progress, disable=progress is None or not sys.stderr.isatty(), leave=False
    ):
        h = model(images.to(device, non_blocking=True, memory_format=torch.channels_last))
        features.append(h.float().cpu())
        if projector is not None:
            projections.append(projector(h).float().cpu())
        labels.append(torch.as_tensor(targets))
        ids.extend(keys)
    model.train(was_training)
    return Features(torch.cat(features), torch.cat(labels), ids, torch.cat(projections) if projections else None)
