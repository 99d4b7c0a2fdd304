"""Frozen-backbone feature extraction, shared by every protocol that does not fine-tune."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    batches: Iterable,
    device: torch.device,
    channels_last: bool = False,
    progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (float32, on CPU) and labels of every ``(images, labels)`` batch, in order.

    The backbone runs in eval mode (batch-norm running statistics), as at test time.
    """
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in tqdm(
        batches, desc=progress, disable=progress is None or not sys.stderr.isatty(), leave=False
    ):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        features.append(backbone(images).float().cpu())
        labels.append(torch.as_tensor(targets))
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)
