"""Weighted k-nearest-neighbour classification on L2-normalised frozen features.

Not in the paper, but the standard cheap monitor of self-supervised representations (Wu et al., 2018;
DINO's ``knn_classifier``; lightly uses k=200, temperature 0.1). A pure function on tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    ks: tuple[int, ...] = (200, 20),
    temperature: float = 0.1,
) -> dict[int, float]:
    """Top-1 accuracy (percent) of :func:`knn_predict` for each k."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    accuracy = {}
    for k in ks:
        scores = knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
        accuracy[k] = 100.0 * (scores.argmax(dim=1) == test_labels).float().mean().item()
    return accuracy
