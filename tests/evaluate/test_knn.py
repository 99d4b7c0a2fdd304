"""Weighted kNN against a brute-force reference and scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from barlowtwins import knn_accuracy, knn_predict


def brute_force_scores(train_x, train_y, test_x, k, temperature, num_classes):
    scores = torch.zeros(len(test_x), num_classes, dtype=torch.float64)
    for q, query in enumerate(test_x.double()):
        sims = [float(query @ x.double() / (query.norm() * x.double().norm())) for x in train_x]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        for i in order:
            scores[q, int(train_y[i])] += torch.exp(torch.tensor(sims[i] / temperature))
    return scores


def test_scores_match_brute_force():
    train_x, train_y = torch.randn(60, 5), torch.randint(0, 4, (60,))
    test_x = torch.randn(13, 5)
    ours = knn_predict(train_x, train_y, test_x, k=7, temperature=0.5, num_classes=4, chunk_size=5)
    reference = brute_force_scores(train_x, train_y, test_x, 7, 0.5, 4)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)


def test_one_neighbour_agrees_with_scikit_learn_cosine():
    train_x, train_y = torch.randn(200, 8), torch.randint(0, 5, (200,))
    test_x = torch.randn(50, 8)
    sklearn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(train_x.numpy(), train_y.numpy())
    ours = knn_predict(train_x, train_y, test_x, k=1, temperature=0.1).argmax(1)
    assert torch.equal(ours, torch.as_tensor(sklearn.predict(test_x.numpy())))


def test_accuracy_on_separable_clusters_and_k_larger_than_bank():
    centres = torch.eye(3) * 10
    train_y = torch.arange(3).repeat_interleave(20)
    train_x = centres[train_y] + torch.randn(60, 3)
    test_y = torch.arange(3).repeat_interleave(5)
    test_x = centres[test_y] + torch.randn(15, 3)
    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, ks=(5, 500), temperature=0.1)
    assert accuracy[5] == 100.0
    assert accuracy[500] == pytest.approx(100.0)  # k is capped at the bank size; weights still favour the near


def test_temperature_sharpens_votes():
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    train_y = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train_x, train_y, query, k=3, temperature=0.01).argmax().item() == 0
    assert knn_predict(train_x, train_y, query, k=3, temperature=100.0).argmax().item() == 1
