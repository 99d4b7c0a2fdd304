"""Linear evaluation (B.1): the probe against scikit-learn, the schedule, top-k, frozen backbone, CLI, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score
from sklearn.model_selection import train_test_split

from barlowtwins.cli import main
from barlowtwins.config import LinearConfig
from barlowtwins.data import digits, in_memory
from barlowtwins.evaluate.linear import resolve_mode, topk_accuracy, train_augmented, train_on_features
from barlowtwins.models.backbones import build_backbone
from barlowtwins.recipes import make_config


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digit_features():
    """Standardised 8x8 digit pixels (real data; the pixels that vary, 61 features) split 1,347 / 450."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    varies = x_train.std(0) > 0
    x_train, x_test = x_train[:, varies], x_test[:, varies]
    mean, std = x_train.mean(0), x_train.std(0)
    to = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return to(x_train), torch.tensor(y_train), to(x_test), torch.tensor(y_test)


def _objective(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, decay: float) -> float:
    """mean cross-entropy + decay/2 * |[W b]|^2: what torch's SGD with weight_decay minimises."""
    logits = torch.tensor(x @ weight.T + bias, dtype=torch.float64)
    ce = F.cross_entropy(logits, torch.tensor(y)).item()
    return ce + decay / 2 * (float((weight**2).sum()) + float((bias**2).sum()))


def test_fast_probe_reaches_the_logistic_regression_optimum_of_scikit_learn(digit_features):
    x, y, x_test, _ = digit_features
    decay = 1e-2  # strongly convex enough for 200 full-batch steps to reach the optimum
    probe, _ = train_on_features(x, y, 10, epochs=200, lr=0.5, weight_decay=decay, batch_size=len(x), seed=0)
    linear = probe[-1]
    # The same objective in scikit-learn: C * sum CE + |theta|^2 / 2, bias penalised as a weight (a ones column).
    ones = np.ones((len(x), 1))
    reference = LogisticRegression(C=1 / (decay * len(x)), fit_intercept=False, tol=1e-8, max_iter=10_000)
    reference.fit(np.hstack([x.numpy(), ones]), y.numpy())
    ref_w, ref_b = reference.coef_[:, :-1], reference.coef_[:, -1]
    ours = _objective(linear.weight.detach().numpy(), linear.bias.detach().numpy(), x.numpy(), y.numpy(), decay)
    best = _objective(ref_w, ref_b, x.numpy(), y.numpy(), decay)
    assert ours == pytest.approx(best, rel=1e-5)
    with torch.no_grad():
        ours_p = probe(x_test).softmax(1).numpy()
    ref_p = reference.predict_proba(np.hstack([x_test.numpy(), np.ones((len(x_test), 1))]))
    assert np.abs(ours_p - ref_p).max() < 5e-3


def test_default_minibatch_probe_matches_scikit_learn_accuracy(digit_features):
    x, y, x_test, y_test = digit_features
    probe, history = train_on_features(x, y, 10, epochs=100, seed=0)  # B.1: lr 0.3, cosine, batch 256, wd 1e-6
    reference = LogisticRegression(C=1 / (1e-6 * len(x)), max_iter=5000).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        ours = (probe(x_test).argmax(1) == y_test).float().mean().item()
    theirs = reference.score(x_test.numpy(), y_test.numpy())
    assert ours > 0.9
    assert abs(ours - theirs) < 0.03
    assert history[-1]["loss"] < history[0]["loss"] / 5


def test_cosine_schedule_is_torchs_per_epoch_cosine_annealing(digit_features):
    x, y, _, _ = digit_features
    epochs = 7
    _, history = train_on_features(x[:300], y[:300], 10, epochs=epochs, lr=0.3, seed=0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    expected = []
    for _ in range(epochs):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [h["lr"] for h in history] == pytest.approx(expected)
    assert history[0]["lr"] == 0.3 and expected[-1] == pytest.approx(0.15 * (1 + math.cos(math.pi * 6 / 7)))


def test_topk_accuracy_matches_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 12, generator=generator)
    labels = torch.randint(0, 12, (500,), generator=generator)
    result = topk_accuracy(logits, labels, (1, 5))
    for k in (1, 5):
        expected = 100 * top_k_accuracy_score(labels.numpy(), logits.numpy(), k=k, labels=np.arange(12))
        assert result[f"top{k}"] == pytest.approx(expected)
    assert topk_accuracy(logits[:, :3], labels.clamp(max=2), (1, 5))["top5"] == 100.0  # k capped at 3 classes


def test_feature_bn_makes_the_probe_insensitive_to_feature_scale(digit_features):
    x, y, x_test, y_test = digit_features
    x, x_test = x + 3, x_test + 3  # mostly positive and off-centre, as ReLU features

    def fit(scale: float, feature_bn: bool) -> torch.Tensor:
        probe, _ = train_on_features(x * scale, y, 10, epochs=20, seed=0, feature_bn=feature_bn)
        with torch.no_grad():
            return probe(x_test * scale).softmax(1)

    def accuracy(p: torch.Tensor) -> float:
        return (p.argmax(1) == y_test).float().mean().item()

    reference = fit(1.0, True)
    assert torch.allclose(fit(10.0, True), reference, atol=2e-3)  # the same classifier, up to rounding
    assert abs(accuracy(fit(1000.0, True)) - accuracy(reference)) < 0.02
    # Without it the same recipe gives another classifier at another scale (lr 0.3 overshoots on large features).
    assert not torch.allclose(fit(10.0, False), fit(1.0, False), atol=0.1)


def test_augmented_mode_trains_only_the_classifier_and_leaves_the_backbone_untouched():
    from barlowtwins.evaluate.linear import train_transform

    torch.manual_seed(0)
    backbone, dim, _ = build_backbone("resnet18", small_stem=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # weights and BN running statistics
    source = in_memory(digits("train").subset(range(128)), "digits")
    transform = train_transform(8, (0.5,) * 3, (0.5,) * 3, (0.08, 1.0))
    settings = LinearConfig(mode="augmented", epochs=2, batch_size=32)
    classifier, history = train_augmented(backbone, dim, 10, source, transform, settings, 0, torch.device("cpu"), 0)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["lr"] == pytest.approx(0.15)  # cosine half-way
    assert not torch.equal(classifier[-1].weight, torch.zeros_like(classifier[-1].weight))


def _save_backbone(path, arch: str, small_stem: bool, seed: int) -> None:
    torch.manual_seed(seed)
    backbone, _, _ = build_backbone(arch, small_stem)
    torch.save(backbone.state_dict(), path)


COMMON = ["--arch", "resnet18", "--small-stem", "--image-size", "8", "--workers", "0", "--limit", "300"]


@pytest.mark.slow
def test_cli_linear_writes_a_report_with_the_floor_and_the_baseline(tmp_path):
    weights = tmp_path / "weights.pth"
    _save_backbone(weights, "resnet18", True, seed=1)
    out = tmp_path / "linear.json"
    args = ["linear", "--checkpoint", str(weights), *COMMON, "--train-data", "digits", "--test-data", "digits:test"]
    assert main([*args, "--epochs", "3", "--baseline-weights", str(weights), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "fast" and report["protocol"].startswith("linear evaluation (appendix B.1)")
    assert report["hyperparameters"]["lr"] == 0.3 and report["hyperparameters"]["weight_decay"] == 1e-6
    assert set(report["results"]) == {"pretrained", "random_init", "baseline"}
    # The baseline is the same file: the same numbers. The random init is another network.
    assert report["results"]["baseline"]["top1"] == report["results"]["pretrained"]["top1"]
    assert report["results"]["pretrained"]["history"] == report["results"]["baseline"]["history"]
    assert report["results"]["random_init"]["history"] != report["results"]["pretrained"]["history"]
    assert len(report["results"]["pretrained"]["history"]) == 3
    assert "torch" in report["meta"] and out.with_suffix(".log").read_text().count("top-1") >= 3


def test_auto_mode_is_the_papers_protocol_at_imagenet_scale(tmp_path):
    """``auto`` (the default) is B.1 as written for what the imagenet recipe trains and for a plain ResNet
    state_dict such as the official resnet50.pth (224 px), the fast approximation for small-image recipes."""
    recipes = {"imagenet": "augmented", "cifar10": "fast", "cifar10-cpu": "fast", "demo": "fast"}
    assert {r: resolve_mode("auto", make_config(r, []).augment.image_size) for r in recipes} == recipes
    assert (resolve_mode("fast", 224), resolve_mode("augmented", 8)) == ("fast", "augmented")  # asked: kept
    weights = tmp_path / "resnet18.pth"  # torchvision stem, no sidecar: evaluated at 224 px
    _save_backbone(weights, "resnet18", False, seed=0)
    args = ["linear", "--checkpoint", str(weights), "--arch", "resnet18", "--train-data", "digits"]
    args += ["--test-data", "digits:test", "--workers", "0", "--limit", "16", "--batch-size", "8", "--epochs", "1"]
    assert main([*args, "--no-random-init"]) == 0
    report = json.loads((tmp_path / "resnet18-linear-augmented.json").read_text())
    assert (report["mode"], report["mode_requested"], report["hyperparameters"]["mode"]) == (
        "augmented",
        "auto",
        "augmented",
    )
    assert report["hyperparameters"]["image_size"] == 224 and "B.1 protocol" in report["mode_description"]
    assert "train_top1" in report["results"]["pretrained"]["history"][0]  # logged by the augmented loop only


def test_cli_names_the_keys_of_a_state_dict_that_does_not_fit(tmp_path, capsys):
    foreign = tmp_path / "resnet34.pth"
    _save_backbone(foreign, "resnet34", False, seed=0)
    args = ["--train-data", "digits", "--test-data", "digits:test", "--workers", "0", "--limit", "10"]
    assert main(["linear", "--checkpoint", str(foreign), "--arch", "resnet18", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "do not fit the architecture" in error and "unexpected: layer1.2." in error

    ours = tmp_path / "ours.pth"
    _save_backbone(ours, "resnet18", True, seed=0)
    torchvision_stem = tmp_path / "torchvision_resnet18.pth"  # the 7x7 stem cannot go into a small-stem net
    _save_backbone(torchvision_stem, "resnet18", False, seed=0)
    small = ["--arch", "resnet18", "--small-stem", *args]
    assert main(["transfer", "--checkpoint", str(ours), *small, "--baseline-weights", str(torchvision_stem)]) == 2
    error = capsys.readouterr().err
    assert "wrong shape: conv1.weight (64, 3, 7, 7) vs (64, 3, 3, 3)" in error
