"""Weighted k-nearest-neighbour classification on L2-normalised frozen features.

Not in the paper, but the standard cheap monitor of self-supervised representations (Wu et al., 2018;
DINO's ``knn_classifier``; lightly uses k=200, temperature 0.1). Pure functions on tensors, and
:func:`knn_eval`, which extracts the features of a bank and queries for several backbones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from barlowtwins.config import EvalInputs, KnnConfig
from barlowtwins.data import ImageSource, batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract
from barlowtwins.validation import check_ranges


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (num_test, num_classes): each of the k nearest training samples by cosine
    similarity s votes for its class with weight exp(s / temperature)."""
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, len(train_features))
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1)
    scores = []
    for start in range(0, len(queries), chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(len(similarity), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_index].long(), weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...] = KnnConfig.k,
    temperature: float = KnnConfig.temperature,
) -> dict[int, float]:
    """Top-1 accuracy (percent) of :func:`knn_predict` for each k."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    accuracy = {}
    for k in ks:
        scores = knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
        accuracy[k] = 100.0 * (scores.argmax(dim=1) == test_labels).float().mean().item()
    return accuracy


def knn_eval(
    backbones: dict[str, nn.Module],
    bank: ImageSource,
    queries: ImageSource,
    transform: Callable,
    ks: tuple[int, ...],
    temperature: float,
    batch_size: int,
    device: torch.device,
    workers: int,
) -> dict[str, dict[int, float]]:
    """kNN top-1 (percent) per k of each named backbone; the bank is labelled training data."""
    results = {}
    for name, backbone in backbones.items():
        train = extract(
            backbone, batches(bank, transform, batch_size, workers, device), device, progress=f"{name}: bank"
        )
        if (train.labels < 0).all():
            raise BarlowTwinsError("kNN needs labels in the training data (its bank); this data has none")
        test = extract(backbone, batches(queries, transform, batch_size, workers, device), device, progress=name)
        results[name] = knn_accuracy(train.features, train.labels, test.features, test.labels, ks, temperature)
    return results


def run(inputs: EvalInputs, settings: KnnConfig) -> Path:
    """The kNN protocol through the harness: the weights beside their random-init floor -> JSON report."""
    from barlowtwins.evaluate.harness import prepare

    check_ranges(settings, "knn")
    e = prepare(inputs, "knn")
    backbones = {name: subject.backbone for name, subject in e.subjects.items()}
    ks, temperature = settings.k, settings.temperature
    clipped = {str(k): e.train.num_samples for k in ks if k > e.train.num_samples}
    for k, bank in clipped.items():
        e.log(f"k={k} is larger than the bank ({bank} samples): its neighbours are all {bank} bank samples")
    accuracy = knn_eval(
        backbones, e.train, e.test, e.images.transform(), ks, temperature, settings.batch_size, e.device, e.workers
    )
    for k in ks:
        e.log(f"kNN top-1 (k={k}, T={temperature}): " + "  ".join(f"{n} {a[k]:.2f}%" for n, a in accuracy.items()))
    results = {name: {"top1": {str(k): v for k, v in accs.items()}} for name, accs in accuracy.items()}
    extra = {"k_clipped_to_bank": clipped} if clipped else {}
    return e.write("weighted kNN on L2-normalised frozen backbone features", settings, results, **extra)
