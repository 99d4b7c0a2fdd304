"""Linear evaluation (appendix B.1): one linear layer trained on top of the frozen backbone.

Two modes, recorded with every number:

* ``augmented`` is the paper's protocol, B.1 exactly: each training batch is a random resized crop + flip,
  passed through the frozen backbone (eval mode, as the official ``evaluate.py`` with ``--weights freeze``).
* ``fast`` is an approximation: it extracts the frozen features of the centre-cropped training images once
  and trains the same linear layer on them, seconds per epoch on a CPU; it lacks the crop/flip augmentation
  and usually lands a little below the augmented number.

``auto`` (the default) takes ``augmented`` at ImageNet scale (evaluation images of the paper's 224 px or
more: the ``imagenet`` recipe's runs, the official checkpoint, any plain ResNet without a small stem) and
``fast`` for small images (the CIFAR and demo recipes), where it is what the ablations report.

Both test on the resize + centre crop of B.1. The learning-rate schedules are torch's own, stepped per epoch.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torchvision import transforms as T

from barlowtwins.config import AugmentConfig, EvalInputs, LinearConfig
from barlowtwins.data import ImageSource, batches, sample_index, training_batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract
from barlowtwins.evaluate.harness import Evaluation, prepare, summary

INIT_STD = 0.01  # official evaluate.py: classifier weight ~ N(0, 0.01), bias 0
MODES = ("auto", "fast", "augmented")
PAPER_SCALE = AugmentConfig.image_size  # "auto" evaluates images of this side and up as B.1 does (augmented)
Schedule = Callable[[torch.optim.Optimizer, int], LRScheduler]  # (optimizer, epochs) -> a per-epoch scheduler


def resolve_mode(mode: str, image_size: int) -> str:
    """``auto`` -> ``augmented`` (B.1 as written) for images of ``PAPER_SCALE`` px and up, else ``fast``."""
    if mode not in MODES:
        raise BarlowTwinsError(f"linear evaluation mode must be one of {', '.join(MODES)}, got '{mode}'")
    if mode != "auto":
        return mode
    return "augmented" if image_size >= PAPER_SCALE else "fast"


def cosine(optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
    """B.1's cosine schedule, stepped once per epoch."""
    return CosineAnnealingLR(optimizer, T_max=epochs)


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_scale: tuple[float, float]
) -> T.Compose:
    """B.1's training augmentation: random resized crop to ``image_size`` and a horizontal flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def new_classifier(in_dim: int, num_classes: int, seed: int, feature_bn: bool = False) -> nn.Sequential:
    """The linear layer, initialised as the official code (weights N(0, 0.01), zero bias) from ``seed``.

    ``feature_bn`` puts a batch-norm without affine parameters in front (MAE's linear probe): features
    are standardised with batch statistics while training and running statistics at test time, so the
    classifier is still linear, and models whose features differ in scale (a random-init floor, a short
    CPU run) train at the same learning rate. Off by default: B.1 has no such layer.
    """
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * INIT_STD)
        linear.bias.zero_()
    layers = [nn.BatchNorm1d(in_dim, affine=False)] if feature_bn else []
    return nn.Sequential(*layers, linear)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for each k (k capped at the number of classes): ``{"top1": .., "top5": ..}``."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels.view(-1, 1)
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def check_labels(labels: torch.Tensor, what: str) -> None:
    if len(labels) == 0 or (labels < 0).any():
        raise BarlowTwinsError(f"{what} must be labelled for this protocol; some samples have no label")


def train_on_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = LinearConfig.epochs,
    lr: float = LinearConfig.lr,
    momentum: float = LinearConfig.momentum,
    weight_decay: float = LinearConfig.weight_decay,
    batch_size: int = LinearConfig.batch_size,
    seed: int = 0,
    schedule: Schedule = cosine,
    feature_bn: bool = False,
) -> tuple[nn.Sequential, list[dict]]:
    """Train a linear layer with SGD on fixed features (fast mode, and transfer C.1); returns it and a log.

    Minimises the mean cross-entropy, with ``weight_decay`` on all parameters as torch's SGD applies it;
    the learning rate follows ``schedule``, stepped per epoch. Reshuffled every epoch from ``seed``.
    """
    check_labels(labels, "the training data")
    classifier = new_classifier(features.shape[1], num_classes, seed, feature_bn).train()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = schedule(optimizer, epochs)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed + epoch))
        epoch_batches = ((features[b], labels[b], None) for b in order.split(batch_size))
        loss, _ = cross_entropy_epoch(classifier, epoch_batches, optimizer, torch.device("cpu"), "the training data")
        history.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": loss})
        scheduler.step()
    return classifier.eval(), history


def cross_entropy_epoch(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    what: str,
) -> tuple[float, float]:
    """One pass of SGD on the cross-entropy of ``model(inputs)`` over ``(inputs, labels, ids)`` batches;
    returns (mean loss, train top-1 %). Shared by the probes (B.1, C.1) and fine-tuning (B.2)."""
    total, correct, seen = 0.0, 0, 0
    for inputs, targets, _ in batches:
        memory_format = torch.channels_last if inputs.dim() == 4 else torch.contiguous_format
        inputs, targets = inputs.to(device, memory_format=memory_format), torch.as_tensor(targets).to(device)
        check_labels(targets, what)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    return total / seen, 100.0 * correct / seen


def train_augmented(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    source: ImageSource,
    transform: Callable,
    settings: LinearConfig,
    seed: int,
    device: torch.device,
    workers: int,
    log: Callable[[dict], None] | None = None,
) -> tuple[nn.Sequential, list[dict]]:
    """B.1 as written: every step augments a batch and runs it through the frozen backbone (eval mode).

    An epoch is ``len(source) // batch_size`` steps of a fresh seeded permutation (shards: shuffled stream).
    """
    steps_per_epoch = source.num_samples // settings.batch_size
    if steps_per_epoch == 0:
        raise BarlowTwinsError(f"batch size {settings.batch_size} exceeds the {source.num_samples} training samples")
    backbone = backbone.to(device, memory_format=torch.channels_last).eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    classifier = new_classifier(feature_dim, num_classes, seed, settings.feature_bn).to(device).train()
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = cosine(optimizer, settings.epochs)
    torch.manual_seed(seed)  # the augmentations of the main process (workers are seeded by the loader)
    stream = training_batches(source, transform, settings.batch_size, workers, seed, device)

    def frozen_then_linear(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = backbone(images)
        return classifier(features)

    history = []
    for epoch in range(settings.epochs):
        epoch_batches = itertools.islice(stream, steps_per_epoch)
        loss, top1 = cross_entropy_epoch(frozen_then_linear, epoch_batches, optimizer, device, "the training data")
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": loss, "train_top1": top1}
        history.append(record)
        scheduler.step()
        if log is not None:
            log(record)
    return classifier.cpu().eval(), history


def linear_eval(e: Evaluation, settings: LinearConfig) -> dict[str, dict]:
    """Linear evaluation of each subject: top-1/top-5 on the test data and the training log."""
    s = dataclasses.replace(settings, mode=resolve_mode(settings.mode, e.images.image_size))
    test_tf = e.images.transform()
    results = {}
    for name, (backbone, feature_dim, _) in e.subjects.items():
        test = extract(backbone, batches(e.test, test_tf, s.batch_size, e.workers, e.device), e.device, None, name)
        check_labels(test.labels, "the test data")
        if s.mode == "fast":
            loader = batches(e.train, test_tf, s.batch_size, e.workers, e.device)
            train = extract(backbone, loader, e.device, progress=f"{name}: train")
            num_classes = int(max(train.labels.max(), test.labels.max())) + 1
            classifier, history = train_on_features(
                train.features,
                train.labels,
                num_classes,
                s.epochs,
                s.lr,
                s.momentum,
                s.weight_decay,
                s.batch_size,
                e.inputs.seed,
                feature_bn=s.feature_bn,
            )
        else:
            train_labels = torch.as_tensor(sample_index(e.train)[1])  # labels without decoding images
            check_labels(train_labels, "the training data")
            num_classes = int(max(train_labels.max(), test.labels.max())) + 1
            transform = train_transform(e.images.image_size, e.images.mean, e.images.std, s.crop_scale)
            classifier, history = train_augmented(
                backbone,
                feature_dim,
                num_classes,
                e.train,
                transform,
                s,
                e.inputs.seed,
                e.device,
                e.workers,
                log=lambda r, name=name: e.log(
                    f"{name}: epoch {r['epoch']}/{s.epochs} loss {r['loss']:.4f} train top-1 {r['train_top1']:.2f}%"
                ),
            )
        with torch.no_grad():
            accuracy = topk_accuracy(classifier(test.features), test.labels)
        results[name] = {**accuracy, "history": history}
        e.log(f"{name}: linear ({s.mode}) top-1 {accuracy['top1']:.2f}%  top-5 {accuracy['top5']:.2f}%")
    return results


MODE_DESCRIPTIONS = {
    "fast": "approximation of B.1: frozen features extracted once (centre crop, no augmentation), "
    "linear layer trained on them",
    "augmented": "the paper's B.1 protocol: random resized crop + flip every batch through the frozen backbone",
}


def run(inputs: EvalInputs, settings: LinearConfig) -> Path:
    """The linear protocol through the harness -> ``eval/linear-<mode>.json`` (``auto`` resolved first)."""
    e = prepare(inputs, lambda images: f"linear-{resolve_mode(settings.mode, images.image_size)}")
    requested = settings.mode
    settings = dataclasses.replace(settings, mode=resolve_mode(requested, e.images.image_size))
    chosen = f" (auto: {e.images.image_size} px images)" if requested == "auto" else ""
    e.log(
        f"linear evaluation (B.1, {settings.mode} mode{chosen}) of {', '.join(e.subjects)}; "
        f"train {e.train.description}; test {e.test.description}"
    )
    results = linear_eval(e, settings)
    e.log(f"linear ({settings.mode}) " + summary(results, ("top1", "top5")))
    return e.write(
        "linear evaluation (appendix B.1)",
        settings,
        results,
        mode=settings.mode,
        mode_requested=requested,
        mode_description=MODE_DESCRIPTIONS[settings.mode],
    )
