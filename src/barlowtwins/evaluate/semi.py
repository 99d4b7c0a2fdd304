"""Semi-supervised fine-tuning (appendix B.2): the whole network trained on 1% or 10% of the labels.

Backbone and a new linear classifier are fine-tuned together (batch-norm in training mode) with SGD and
momentum, no weight decay, two learning rates (0.002 backbone, 0.5 classifier) both multiplied by 0.2
after epochs 12 and 16 of 20. The augmentation is B.1's (random resized crop + flip); testing is B.1's
resize + centre crop. The labelled subset is a list file (:mod:`barlowtwins.evaluate.subsets`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from barlowtwins.augment import eval_transform
from barlowtwins.data import ImageSource, Transformed, sample_index
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.linear import (
    CROP_SCALE,
    MEMORY_FORMAT,
    RESIZE_RATIO,
    check_labels,
    cross_entropy_epoch,
    frozen_features,
    new_classifier,
    topk_accuracy,
)
from barlowtwins.evaluate.linear import train_transform as augmentation

EPOCHS = 20  # B.2: 20 epochs
LR_BACKBONE = 0.002  # B.2: learning rate 0.002 for the ResNet-50
LR_CLASSIFIER = 0.5  # B.2: 0.5 for the final classification layer
MILESTONES = (12, 16)  # B.2: multiplied by 0.2 after the 12th and 16th epoch
GAMMA = 0.2  # B.2: the factor at each milestone
MOMENTUM = 0.9  # B.2: "SGD with momentum" (0.9 in the official evaluate.py)
WEIGHT_DECAY = 0.0  # B.2: "do not use weight decay"
BATCH_SIZE = 256  # B.2: batch size 256
FRACTIONS = (0.01, 0.1)  # B.2 / Table 2: 1% and 10% of the labels


def step_factor(epoch: int, milestones: Sequence[int] = MILESTONES, gamma: float = GAMMA) -> float:
    """Learning-rate factor of (0-based) ``epoch``: ``gamma`` per milestone passed, B.2's "after the 12th
    and 16th epoch" meaning epochs 13-16 run at 0.2 and 17-20 at 0.04 (0-based 12-15 and 16-19)."""
    return gamma ** sum(epoch >= m for m in milestones)


def finetune(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    dataset: Dataset,
    transform: Callable,
    epochs: int = EPOCHS,
    lr_backbone: float = LR_BACKBONE,
    lr_classifier: float = LR_CLASSIFIER,
    milestones: Sequence[int] = MILESTONES,
    gamma: float = GAMMA,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    device: torch.device | None = None,
    workers: int = 0,
    log: Callable[[dict], None] | None = None,
) -> tuple[nn.Sequential, list[dict]]:
    """Fine-tune ``backbone`` + a new linear layer on the labelled map-style ``dataset``; returns both and a log.

    Every epoch visits every labelled image once in a seeded order (the last batch may be smaller, as
    in the official code; a trailing batch of one is dropped, batch-norm cannot train on it).
    """
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    classifier = new_classifier(feature_dim, num_classes, seed)
    model = nn.Sequential(backbone, *classifier).to(device, memory_format=MEMORY_FORMAT).train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(
        [
            {"params": backbone.parameters(), "lr": lr_backbone, "base_lr": lr_backbone},
            {"params": classifier.parameters(), "lr": lr_classifier, "base_lr": lr_classifier},
        ],
        lr=lr_classifier,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    loader = DataLoader(
        Transformed(dataset, transform),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(dataset) % batch_size == 1,
        num_workers=workers,
    )
    if len(loader) == 0:
        raise BarlowTwinsError(f"the labelled subset holds {len(dataset)} sample(s); fine-tuning needs at least two")
    history = []
    for epoch in range(epochs):
        factor = step_factor(epoch, milestones, gamma)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        loss, top1 = cross_entropy_epoch(model, loader, optimizer, device, "the labelled subset")
        record = {
            "epoch": epoch + 1,
            "lr_backbone": optimizer.param_groups[0]["lr"],
            "lr_classifier": optimizer.param_groups[1]["lr"],
            "loss": loss,
            "train_top1": top1,
        }
        history.append(record)
        if log is not None:
            log(record)
    return model.eval(), history


def semi_supervised_eval(
    backbones: dict[str, tuple[nn.Module, int]],
    labelled: ImageSource,
    test_source: ImageSource,
    image_size: int = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    resize_ratio: float = RESIZE_RATIO,
    crop_scale: tuple[float, float] = CROP_SCALE,
    epochs: int = EPOCHS,
    lr_backbone: float = LR_BACKBONE,
    lr_classifier: float = LR_CLASSIFIER,
    milestones: Sequence[int] = MILESTONES,
    gamma: float = GAMMA,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    device: torch.device | None = None,
    workers: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Fine-tune each named ``(backbone, feature_dim)`` on ``labelled`` (map-style) and test it: top-1/top-5.

    Each backbone is fine-tuned in place; pass copies if you need the originals afterwards.
    """
    if labelled.dataset is None:
        raise BarlowTwinsError("the labelled subset must be map-style; select it with data.select_samples")
    device = device or torch.device("cpu")
    _, train_labels = sample_index(labelled)
    _, test_labels = sample_index(test_source)
    check_labels(torch.as_tensor(train_labels), "the labelled subset")
    check_labels(torch.as_tensor(test_labels), "the test data")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_tf = augmentation(image_size, mean, std, crop_scale)
    test_tf = eval_transform(image_size, tuple(mean), tuple(std), resize_ratio)
    results = {}
    for name, (backbone, feature_dim) in backbones.items():
        model, history = finetune(
            backbone,
            feature_dim,
            num_classes,
            labelled.dataset,
            train_tf,
            epochs,
            lr_backbone,
            lr_classifier,
            milestones,
            gamma,
            momentum,
            weight_decay,
            batch_size,
            seed,
            device,
            workers,
            log=lambda r, name=name: log(
                f"{name}: epoch {r['epoch']}/{epochs} lr {r['lr_backbone']:.2g}/{r['lr_classifier']:.2g} "
                f"loss {r['loss']:.4f} train top-1 {r['train_top1']:.2f}%"
            ),
        )
        logits, labels = frozen_features(model, test_source, test_tf, batch_size, workers, device, f"{name}: test")
        accuracy = topk_accuracy(logits, labels)
        results[name] = {**accuracy, "history": history}
        log(f"{name}: semi-supervised top-1 {accuracy['top1']:.2f}%  top-5 {accuracy['top5']:.2f}%")
    return results
