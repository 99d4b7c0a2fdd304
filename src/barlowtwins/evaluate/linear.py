"""Linear evaluation (appendix B.1): one linear layer trained on top of the frozen backbone.

Two modes, recorded with every number:

* ``augmented`` is B.1 exactly: each training batch is a random resized crop + flip, passed through the
  frozen backbone (eval mode, as the official ``evaluate.py`` with ``--weights freeze``).
* ``fast`` extracts the frozen features of the centre-cropped training images once and trains the same
  linear layer on them, seconds per epoch on a CPU; it lacks the crop/flip augmentation and usually lands
  a little below the augmented number.

Both test on the resize + centre crop of B.1 (256 -> 224, i.e. a resize to ``image_size * 256/224``).
The pieces are pure functions on tensors so that :mod:`barlowtwins.evaluate.transfer` reuses them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from barlowtwins.augment import eval_transform
from barlowtwins.data import ImageSource, evaluation_loader, sample_index, training_batches
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract_features

EPOCHS = 100  # B.1: the linear classifier is trained for 100 epochs
LR = 0.3  # B.1: learning rate 0.3 ...
MOMENTUM = 0.9  # B.1: SGD with momentum (0.9 in the official evaluate.py)
WEIGHT_DECAY = 1e-6  # B.1: weight decay 10^-6
BATCH_SIZE = 256  # B.1: batch size 256
CROP_SCALE = (0.08, 1.0)  # B.1 "random crop": torchvision's RandomResizedCrop default, as the official code
RESIZE_RATIO = 256 / 224  # B.1 test time: resize to 256, centre-crop 224 (32 px: resize 37, crop 32)
INIT_STD = 0.01  # official evaluate.py: classifier weight ~ N(0, 0.01), bias 0
MODES = ("fast", "augmented")
MEMORY_FORMAT = torch.channels_last  # faster convolutions on CPUs and GPUs alike (~25% on a 2-core CPU), as pretraining


def cosine_factor(epoch: int, epochs: int) -> float:
    """B.1's cosine schedule, stepped once per epoch (``CosineAnnealingLR(T_max=epochs)``): 1 at epoch 0."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = CROP_SCALE,
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


def frozen_features(
    backbone: nn.Module,
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    workers: int,
    device: torch.device,
    progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (eval-mode backbone, float32 on CPU) and labels of one ordered pass over ``source``."""
    if source.shards is not None:  # a worker without a shard fails in WebDataset: at most one per shard
        workers = min(workers, len(source.shards))
    loader = evaluation_loader(source, transform, batch_size, workers, device)
    backbone = backbone.to(device, memory_format=MEMORY_FORMAT)
    return extract_features(backbone, loader, device, channels_last=True, progress=progress)


def train_on_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = EPOCHS,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    lr_factor: Callable[[int, int], float] = cosine_factor,
    feature_bn: bool = False,
) -> tuple[nn.Sequential, list[dict]]:
    """Train a linear layer with SGD on fixed features (fast mode, and transfer C.1); returns it and a log.

    Minimises the mean cross-entropy, with ``weight_decay`` on all parameters as torch's SGD applies it;
    the learning rate of epoch e is ``lr * lr_factor(e, epochs)``. Reshuffled every epoch from ``seed``.
    """
    check_labels(labels, "the training data")
    classifier = new_classifier(features.shape[1], num_classes, seed, feature_bn).train()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(epoch, epochs)
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        history.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": total / len(order)})
    return classifier.eval(), history


def cross_entropy_epoch(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    what: str,
) -> tuple[float, float]:
    """One pass of SGD on the cross-entropy of ``model(images)``; returns (mean loss, train top-1 %).

    Shared by the linear probe with augmentation (B.1) and semi-supervised fine-tuning (B.2).
    """
    total, correct, seen = 0.0, 0, 0
    for images, targets in batches:
        images, targets = images.to(device, memory_format=MEMORY_FORMAT), torch.as_tensor(targets).to(device)
        check_labels(targets, what)
        logits = model(images)
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
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int,
    lr_factor: Callable[[int, int], float] = cosine_factor,
    feature_bn: bool = False,
    log: Callable[[dict], None] | None = None,
) -> tuple[nn.Sequential, list[dict]]:
    """B.1 as written: every step augments a batch and runs it through the frozen backbone (eval mode).

    An epoch is ``len(source) // batch_size`` steps of a fresh seeded permutation (shards: shuffled stream).
    """
    steps_per_epoch = source.num_samples // batch_size
    if steps_per_epoch == 0:
        raise BarlowTwinsError(f"batch size {batch_size} exceeds the {source.num_samples} training samples")
    backbone = backbone.to(device, memory_format=MEMORY_FORMAT).eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    classifier = new_classifier(feature_dim, num_classes, seed, feature_bn).to(device).train()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    torch.manual_seed(seed)  # the augmentations of the main process (workers are seeded by the loader)
    batches = training_batches(source, transform, batch_size, workers, seed, device)
    history = []
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(epoch, epochs)

        def frozen_then_linear(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = backbone(images)
            return classifier(features)

        loss, top1 = cross_entropy_epoch(
            frozen_then_linear, itertools.islice(batches, steps_per_epoch), optimizer, device, "the training data"
        )
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": loss, "train_top1": top1}
        history.append(record)
        if log is not None:
            log(record)
    return classifier.cpu().eval(), history


def linear_eval(
    backbones: dict[str, tuple[nn.Module, int]],
    train_source: ImageSource,
    test_source: ImageSource,
    mode: str = "fast",
    image_size: int = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    resize_ratio: float = RESIZE_RATIO,
    crop_scale: tuple[float, float] = CROP_SCALE,
    epochs: int = EPOCHS,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    device: torch.device | None = None,
    workers: int = 0,
    feature_bn: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Linear evaluation of each named ``(backbone, feature_dim)``: top-1/top-5 on the test data and the log.

    ``mode`` is ``"fast"`` (features extracted once, no augmentation) or ``"augmented"`` (B.1).
    """
    if mode not in MODES:
        raise BarlowTwinsError(f"linear evaluation mode must be one of {', '.join(MODES)}, got '{mode}'")
    device = device or torch.device("cpu")
    test_tf = eval_transform(image_size, tuple(mean), tuple(std), resize_ratio)
    results = {}
    for name, (backbone, feature_dim) in backbones.items():
        test_x, test_y = frozen_features(backbone, test_source, test_tf, batch_size, workers, device, f"{name}: test")
        check_labels(test_y, "the test data")
        if mode == "fast":
            train_x, train_y = frozen_features(
                backbone, train_source, test_tf, batch_size, workers, device, f"{name}: train"
            )
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
                feature_bn=feature_bn,
            )
        else:
            train_y = torch.as_tensor(sample_index(train_source)[1])  # labels without decoding images
            check_labels(train_y, "the training data")
            num_classes = int(max(train_y.max(), test_y.max())) + 1
            classifier, history = train_augmented(
                backbone,
                feature_dim,
                num_classes,
                train_source,
                train_transform(image_size, mean, std, crop_scale),
                epochs,
                lr,
                momentum,
                weight_decay,
                batch_size,
                seed,
                device,
                workers,
                feature_bn=feature_bn,
                log=lambda r, name=name: log(
                    f"{name}: epoch {r['epoch']}/{epochs} loss {r['loss']:.4f} train top-1 {r['train_top1']:.2f}%"
                ),
            )
        with torch.no_grad():
            accuracy = topk_accuracy(classifier(test_x), test_y)
        results[name] = {**accuracy, "history": history}
        log(f"{name}: linear ({mode}) top-1 {accuracy['top1']:.2f}%  top-5 {accuracy['top5']:.2f}%")
    return results
