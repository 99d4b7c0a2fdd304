"""Transfer by linear evaluation (appendix C.1): frozen features of another dataset, two classifiers.

* ``linear``: PIRL's Places-205 / iNaturalist setting, a linear layer trained with SGD at lr 0.01
  divided by 10 at two equally spaced points, weight decay 5e-4, momentum 0.9, on features extracted
  once (resize + centre crop, no augmentation).
* ``svm``: the VOC07 protocol (Goyal et al., 2019, as the paper follows PIRL): one linear SVM per class on
  L2-normalised features, its cost C chosen per class by k-fold cross-validation of average precision,
  then refit on all training data; reports mAP and, for single-label data, top-1 of the highest score.
  Multi-label targets are a matrix of 1 (positive), 0 (negative) and -1 (ignored, VOC's "difficult").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC

from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.linear import topk_accuracy, train_on_features

EPOCHS = 14  # C.1: 14 epochs on Places-205 (84 on iNaturalist2018)
LR = 0.01  # C.1: learning rate 0.01 ...
DROPS = 2  # C.1: ... reduced by a factor of 10 at two equally spaced intervals
GAMMA = 0.1  # C.1: the factor of each reduction
WEIGHT_DECAY = 5e-4  # C.1: weight decay 5x10^-4
MOMENTUM = 0.9  # C.1: SGD momentum 0.9
BATCH_SIZE = 256  # not in C.1; B.1's batch size
SVM_COSTS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # Goyal et al. (2019) VOC07 grid, trimmed of 1e-7..1e-5
SVM_FOLDS = 3  # Goyal et al. (2019): 3-fold cross-validation of C
SVM_POSITIVE_WEIGHT = 2.0  # Goyal et al. (2019): class_weight {positive: 2, negative: 1}
SVM_MAX_ITER = 2000  # Goyal et al. (2019): LinearSVC max_iter
CLASSIFIERS = ("linear", "svm")


def drop_factor(epoch: int, epochs: int, drops: int = DROPS, gamma: float = GAMMA) -> float:
    """Learning-rate factor of (0-based) ``epoch``: ``gamma`` per passed milestone, the milestones splitting
    the run into ``drops + 1`` equal parts (14 epochs: x0.1 from epoch 5, x0.01 from epoch 9, 0-based)."""
    milestones = [round(epochs * i / (drops + 1)) for i in range(1, drops + 1)]
    return gamma ** sum(epoch >= m for m in milestones)


def one_vs_rest(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Single-label ints (N,) -> a (N, C) target matrix of 1 (the class) and 0 (the rest)."""
    return (np.asarray(labels)[:, None] == np.arange(num_classes)[None, :]).astype(np.int64)


def choose_cost(
    features: np.ndarray,
    targets: np.ndarray,
    costs: Sequence[float] = SVM_COSTS,
    folds: int = SVM_FOLDS,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """The cost C with the best mean k-fold average precision for one binary (0/1) target, and all means.

    Ties go to the smaller C. Folds are stratified and shuffled with ``seed``.
    """
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for cost in costs:
        svm = _svm(cost)
        scores.append(float(cross_val_score(svm, features, targets, cv=splitter, scoring="average_precision").mean()))
    return float(costs[int(np.argmax(scores))]), scores


def _svm(cost: float) -> LinearSVC:
    return LinearSVC(
        C=cost,
        class_weight={1: SVM_POSITIVE_WEIGHT, 0: 1.0},
        loss="squared_hinge",
        penalty="l2",
        dual=True,
        max_iter=SVM_MAX_ITER,
        tol=1e-4,
        random_state=0,  # liblinear shuffles its coordinates; fixed, so reruns give the same C and AP
    )


def svm_eval(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    costs: Sequence[float] = SVM_COSTS,
    folds: int = SVM_FOLDS,
    seed: int = 0,
) -> dict:
    """Per-class linear SVMs with cross-validated C (VOC07 protocol); ``*_y`` ints (N,) or matrices (N, C).

    Returns mAP (percent), per-class AP and chosen C, and ``top1`` when the labels are single-label ints.
    """
    train_x = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1).numpy()
    test_x = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1).numpy()
    single_label = np.ndim(train_y) == 1
    if single_label:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        train_t, test_t = one_vs_rest(train_y, num_classes), one_vs_rest(test_y, num_classes)
    else:
        train_t, test_t = np.asarray(train_y), np.asarray(test_y)
        num_classes = train_t.shape[1]
    scores = np.zeros((len(test_x), num_classes))
    chosen, aps = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in range(num_classes):
            keep = train_t[:, c] >= 0
            positives = int((train_t[keep, c] == 1).sum())
            if positives < folds or keep.sum() - positives < folds:
                raise BarlowTwinsError(
                    f"class {c} has {positives} positive training samples; the SVM's {folds}-fold "
                    "cross-validation needs at least that many positives and negatives"
                )
            cost, _ = choose_cost(train_x[keep], train_t[keep, c], costs, folds, seed)
            svm = _svm(cost).fit(train_x[keep], train_t[keep, c])
            scores[:, c] = svm.decision_function(test_x)
            test_keep = test_t[:, c] >= 0
            has_positive = (test_t[test_keep, c] == 1).any()
            ap = average_precision_score(test_t[test_keep, c], scores[test_keep, c]) if has_positive else float("nan")
            chosen.append(cost)
            aps.append(100.0 * ap)
    result = {"mAP": float(np.nanmean(aps)), "ap": aps, "C": chosen}
    if single_label:
        result.update(topk_accuracy(torch.as_tensor(scores), torch.as_tensor(test_y)))
    return result


def linear_transfer(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = EPOCHS,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    drops: int = DROPS,
    gamma: float = GAMMA,
    seed: int = 0,
    feature_bn: bool = False,
) -> dict:
    """C.1's SGD linear classifier on fixed features: top-1/top-5 on the test features and the log."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    classifier, history = train_on_features(
        train_x,
        train_y,
        num_classes,
        epochs,
        lr,
        momentum,
        weight_decay,
        batch_size,
        seed,
        lr_factor=lambda epoch, total: drop_factor(epoch, total, drops, gamma),
        feature_bn=feature_bn,
    )
    with torch.no_grad():
        return {**topk_accuracy(classifier(test_x), test_y), "history": history}


def read_multilabel_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """A multi-label target file: one sample per line, ``ID v1 v2 ... vC`` with each v in {1, 0, -1}."""
    try:
        lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as error:
        raise BarlowTwinsError(f"cannot read label file {path} ({error.strerror})") from None
    if not lines or len({len(parts) for parts in lines}) != 1 or len(lines[0]) < 2:
        raise BarlowTwinsError(f"{path}: every line must be 'ID v1 ... vC' with the same number of classes")
    try:
        matrix = np.asarray([[int(v) for v in parts[1:]] for parts in lines], dtype=np.int64)
    except ValueError:
        raise BarlowTwinsError(f"{path}: target values must be 1, 0 or -1") from None
    if not np.isin(matrix, (-1, 0, 1)).all():
        raise BarlowTwinsError(f"{path}: target values must be 1, 0 or -1")
    return [parts[0] for parts in lines], matrix
