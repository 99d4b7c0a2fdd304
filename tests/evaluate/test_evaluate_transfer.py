"""Transfer (C.1): the two-drop schedule, the SVMs' cross-validated C and mAP, multi-label targets, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.svm import LinearSVC

from barlowtwins.cli import main
from barlowtwins.config import TransferConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.transfer import (
    choose_cost,
    drops_at,
    linear_transfer,
    one_vs_rest,
    read_multilabel_file,
    svm_eval,
)
from barlowtwins.models.backbones import build_backbone

COSTS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digit_pixels():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return x_train / 16, y_train, x_test / 16, y_test


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _factors(epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler, factors = drops_at(optimizer, epochs), []
    for _ in range(epochs):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_learning_rate_drops_tenfold_at_two_equally_spaced_points():
    assert [_factors(30)[e] for e in (0, 9, 10, 19, 20, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert _factors(14) == pytest.approx([1] * 5 + [0.1] * 4 + [0.01] * 5)


def test_linear_transfer_follows_the_schedule_and_learns(digit_pixels):
    x, y, x_test, y_test = (torch.tensor(a, dtype=torch.float32) for a in digit_pixels)
    y, y_test = y.long(), y_test.long()
    result = linear_transfer(x, y, x_test, y_test, TransferConfig(epochs=30, lr=0.5))
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.5] * 10 + [0.05] * 10 + [0.005] * 10)
    assert result["top1"] > 90 and result["top5"] >= result["top1"]


def test_chosen_cost_is_the_one_scikit_learns_grid_search_picks(digit_pixels):
    x, y, _, _ = digit_pixels
    x = _normalised(x)
    for digit in (3, 8):
        target = (y == digit).astype(int)
        cost, scores = choose_cost(x, target, COSTS, folds=3, seed=0)
        search = GridSearchCV(
            LinearSVC(class_weight={1: 2.0, 0: 1.0}, max_iter=2000, tol=1e-4, random_state=0),
            {"C": list(COSTS)},
            scoring="average_precision",
            cv=StratifiedKFold(3, shuffle=True, random_state=0),
        ).fit(x, target)
        assert cost == search.best_params_["C"]
        assert scores == pytest.approx(search.cv_results_["mean_test_score"].tolist(), rel=1e-4)
        assert cost > COSTS[0]  # the grid is not degenerate: the smallest C under-fits


def test_svm_map_and_top1_match_an_independent_refit(digit_pixels):
    x, y, x_test, y_test = digit_pixels
    keep = y < 4  # four classes keep the test fast
    x, y = x[keep], y[keep]
    x_test, y_test = x_test[y_test < 4], y_test[y_test < 4]
    result = svm_eval(x, y, x_test, y_test, COSTS, folds=3, seed=0)
    scores = np.stack(
        [
            LinearSVC(C=c, class_weight={1: 2.0, 0: 1.0}, max_iter=2000, tol=1e-4, random_state=0)
            .fit(_normalised(x), (y == k).astype(int))
            .decision_function(_normalised(x_test))
            for k, c in enumerate(result["C"])
        ],
        axis=1,
    )
    aps = [100 * average_precision_score(y_test == k, scores[:, k]) for k in range(4)]
    assert result["ap"] == pytest.approx(aps, abs=1e-6)
    assert result["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert result["top1"] == pytest.approx(100 * np.mean(scores.argmax(1) == y_test), abs=1e-6)


def test_ignored_multilabel_targets_count_as_absent(digit_pixels):
    x, y, x_test, y_test = digit_pixels
    x, y, x_test, y_test = x[:300], y[:300], x_test[:150], y_test[:150]
    targets = np.stack([y % 2 == 0, y >= 5], axis=1).astype(int)  # two overlapping labels per image
    test_targets = np.stack([y_test % 2 == 0, y_test >= 5], axis=1).astype(int)
    ignored = targets.copy()
    ignored[:40, 1] = -1  # VOC's "difficult": neither positive nor negative for class 1
    test_ignored = test_targets.copy()
    test_ignored[:30, 1] = -1
    full = svm_eval(x, ignored, x_test, test_ignored, (0.1, 1.0, 10.0), folds=3, seed=0)
    without = svm_eval(x[40:], targets[40:], x_test[30:], test_targets[30:], (0.1, 1.0, 10.0), folds=3, seed=0)
    assert full["C"][1] == without["C"][1]
    assert full["ap"][1] == pytest.approx(without["ap"][1])
    assert "top1" not in full
    assert one_vs_rest(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_multilabel_file_format(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a.jpg 1 0 -1\nb.jpg 0 1 1\n")
    ids, matrix = read_multilabel_file(path)
    assert ids == ["a.jpg", "b.jpg"] and matrix.tolist() == [[1, 0, -1], [0, 1, 1]]
    path.write_text("a.jpg 1 2\n")
    with pytest.raises(BarlowTwinsError, match="1, 0 or -1"):
        read_multilabel_file(path)


@pytest.mark.slow
def test_cli_transfer_runs_both_classifiers_and_multilabel_svms(tmp_path):
    torch.manual_seed(0)
    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    common = ["transfer", "--checkpoint", str(tmp_path / "w.pth"), "--arch", "resnet18", "--small-stem"]
    common += ["--train-data", "digits", "--test-data", "digits:test", "--image-size", "8", "--workers", "0"]
    common += ["--limit", "150", "--no-random-init", "--svm-costs", "0.1", "1", "--epochs", "3"]
    assert main([*common, "--out", str(tmp_path / "t.json")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    result = report["results"]["pretrained"]
    assert set(result) == {"linear", "svm"} and len(result["linear"]["history"]) == 3
    assert all(c in (0.1, 1.0) for c in result["svm"]["C"])
    assert report["hyperparameters"]["weight_decay"] == 5e-4 and report["hyperparameters"]["drops"] == 2

    # Multi-label targets keyed by sample id (digits: the position), listed in another order.
    from barlowtwins.data import digits

    def write(path, labels):
        lines = [f"{i} {int(v % 2 == 0)} {int(v >= 5)}" for i, v in enumerate(labels)]
        path.write_text("\n".join(reversed(lines)) + "\n")

    write(tmp_path / "train.txt", digits("train").labels[:150])
    write(tmp_path / "test.txt", digits("test").labels[:150])
    labels = ["--train-labels", str(tmp_path / "train.txt"), "--test-labels", str(tmp_path / "test.txt")]
    assert main([*common, *labels, "--classifiers", "svm", "--out", str(tmp_path / "m.json")]) == 0
    svm = json.loads((tmp_path / "m.json").read_text())["results"]["pretrained"]["svm"]
    assert len(svm["ap"]) == 2 and "top1" not in svm
    assert main([*common, *labels, "--out", str(tmp_path / "x.json")]) == 2  # softmax needs single labels
