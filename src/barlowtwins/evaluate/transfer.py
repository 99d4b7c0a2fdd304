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
from torch.optim.lr_scheduler import MultiStepLR

from barlowtwins.config import EvalInputs, TransferConfig
from barlowtwins.data import batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import Features, extract
from barlowtwins.evaluate.harness import Evaluation, prepare
from barlowtwins.evaluate.linear import check_labels, topk_accuracy, train_on_features
from barlowtwins.evaluate.subsets import match_ids

SVM_POSITIVE_WEIGHT = 2.0  # Goyal et al. (2019): class_weight {positive: 2, negative: 1}
SVM_MAX_ITER = 2000  # Goyal et al. (2019): LinearSVC max_iter
CLASSIFIERS = ("linear", "svm")
T = TransferConfig


def drops_at(optimizer: torch.optim.Optimizer, epochs: int, drops: int = T.drops, gamma: float = T.gamma):
    """C.1's schedule: ``gamma`` at ``drops`` milestones splitting the run into equal parts (14 epochs: x0.1
    from epoch 5, x0.01 from epoch 9, 0-based), as torch's ``MultiStepLR``."""
    milestones = [round(epochs * i / (drops + 1)) for i in range(1, drops + 1)]
    return MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def one_vs_rest(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Single-label ints (N,) -> a (N, C) target matrix of 1 (the class) and 0 (the rest)."""
    return (np.asarray(labels)[:, None] == np.arange(num_classes)[None, :]).astype(np.int64)


def choose_cost(
    features: np.ndarray,
    targets: np.ndarray,
    costs: Sequence[float] = T.svm_costs,
    folds: int = T.svm_folds,
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
    costs: Sequence[float] = T.svm_costs,
    folds: int = T.svm_folds,
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
    settings: TransferConfig,
    seed: int = 0,
) -> dict:
    """C.1's SGD linear classifier on fixed features: top-1/top-5 on the test features and the log."""
    s = settings
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    classifier, history = train_on_features(
        train_x,
        train_y,
        num_classes,
        s.epochs,
        s.lr,
        s.momentum,
        s.weight_decay,
        s.batch_size,
        seed,
        schedule=lambda optimizer, epochs: drops_at(optimizer, epochs, s.drops, s.gamma),
        feature_bn=s.feature_bn,
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


def _targets(path: str | None, features: Features, what: str) -> np.ndarray:
    """Multi-label rows of the file at ``path`` in the order of the extracted samples, else the single labels."""
    if path is None:
        check_labels(features.labels, what)
        return features.labels.numpy()
    listed, matrix = read_multilabel_file(path)
    return matrix[match_ids(features.ids, listed, path)]  # for each sample, its row in the file


def _evaluate_subject(e: Evaluation, name: str, backbone, settings: TransferConfig, label_files) -> dict:
    s, transform = settings, e.images.transform()
    train = extract(backbone, batches(e.train, transform, s.batch_size, e.workers, e.device), e.device, None, name)
    test = extract(backbone, batches(e.test, transform, s.batch_size, e.workers, e.device), e.device, None, name)
    result = {}
    if "linear" in s.classifiers:
        check_labels(train.labels, "--train-data")
        check_labels(test.labels, "--test-data")
        result["linear"] = r = linear_transfer(
            train.features, train.labels, test.features, test.labels, s, e.inputs.seed
        )
        e.log(f"{name}: linear top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
    if "svm" in s.classifiers:
        train_y = _targets(label_files[0], train, "--train-data")
        test_y = _targets(label_files[1], test, "--test-data")
        r = svm_eval(
            train.features.numpy(), train_y, test.features.numpy(), test_y, s.svm_costs, s.svm_folds, e.inputs.seed
        )
        result["svm"] = r
        e.log(f"{name}: SVM mAP {r['mAP']:.2f}" + (f"  top-1 {r['top1']:.2f}%" if "top1" in r else ""))
        edge = sum(c in (min(s.svm_costs), max(s.svm_costs)) for c in r["C"])
        if edge:
            e.log(f"{name}: note: C is at an end of --svm-costs for {edge} of {len(r['C'])} classes; widen the grid")
    return result


def run(
    inputs: EvalInputs, settings: TransferConfig, train_labels: str | None = None, test_labels: str | None = None
) -> Path:
    """Transfer (C.1) through the harness -> ``eval/transfer.json``; label files make the SVMs multi-label."""
    if bool(train_labels) != bool(test_labels):
        raise BarlowTwinsError("multi-label targets need both --train-labels and --test-labels")
    if train_labels and "linear" in settings.classifiers:
        raise BarlowTwinsError("the softmax linear classifier is single-label; with label files use --classifier svm")
    e = prepare(inputs, "transfer")
    e.log(
        f"transfer (C.1: {', '.join(settings.classifiers)}) of {', '.join(e.subjects)}; "
        f"train {e.train.description}; test {e.test.description}"
    )
    results = {
        name: _evaluate_subject(e, name, subject.backbone, settings, (train_labels, test_labels))
        for name, subject in e.subjects.items()
    }
    return e.write(
        "transfer by linear evaluation (appendix C.1)",
        settings,
        results,
        mode="frozen features extracted once (resize + centre crop, no augmentation)",
        multilabel_files=[train_labels, test_labels] if train_labels else None,
    )
