"""Semi-supervised fine-tuning (appendix B.2): the whole network trained on 1% or 10% of the labels.

Backbone and a new linear classifier are fine-tuned together (batch-norm in training mode) with SGD and
momentum, no weight decay, two learning rates (0.002 backbone, 0.5 classifier) both multiplied by 0.2
after epochs 12 and 16 of 20 (torch's ``MultiStepLR``). The augmentation is B.1's (random resized crop +
flip); testing is B.1's resize + centre crop. The labelled subset is a list file
(:mod:`barlowtwins.evaluate.subsets`), read or drawn class-balanced and saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR

from barlowtwins.config import EvalInputs, SemiConfig
from barlowtwins.data import ImageSource, batches, sample_index, select_samples
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract
from barlowtwins.evaluate.harness import Evaluation, prepare, summary
from barlowtwins.evaluate.linear import check_labels, cross_entropy_epoch, new_classifier, topk_accuracy
from barlowtwins.evaluate.linear import train_transform as augmentation
from barlowtwins.evaluate.subsets import balanced_subset, match_ids, read_subset_file, write_subset_file


def finetune(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    labelled: ImageSource,
    transform: Callable,
    settings: SemiConfig,
    seed: int = 0,
    device: torch.device | None = None,
    workers: int = 0,
    log: Callable[[dict], None] | None = None,
) -> tuple[nn.Sequential, list[dict]]:
    """Fine-tune ``backbone`` + a new linear layer on the map-style ``labelled`` data; returns both and a log.

    Every epoch visits every labelled image once in a seeded order (the last batch may be smaller, as
    in the official code; a trailing batch of one is dropped, batch-norm cannot train on it).
    """
    s, device = settings, device or torch.device("cpu")
    torch.manual_seed(seed)
    classifier = new_classifier(feature_dim, num_classes, seed)
    model = nn.Sequential(backbone, *classifier).to(device, memory_format=torch.channels_last).train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(
        [{"params": backbone.parameters(), "lr": s.lr_backbone}, {"params": classifier.parameters()}],
        lr=s.lr_classifier,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
    )
    scheduler = MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)
    drop_last = labelled.num_samples % s.batch_size == 1
    loader = batches(labelled, transform, s.batch_size, workers, device, shuffle_seed=seed, drop_last=drop_last)
    if len(loader) == 0:
        raise BarlowTwinsError(f"the labelled subset holds {labelled.num_samples} sample(s); fine-tuning needs two")
    history = []
    for epoch in range(s.epochs):
        loss, top1 = cross_entropy_epoch(model, loader, optimizer, device, "the labelled subset")
        lrs = [group["lr"] for group in optimizer.param_groups]
        record = {"epoch": epoch + 1, "lr_backbone": lrs[0], "lr_classifier": lrs[1], "loss": loss, "train_top1": top1}
        history.append(record)
        scheduler.step()
        if log is not None:
            log(record)
    return model.eval(), history


def semi_supervised_eval(e: Evaluation, labelled: ImageSource, settings: SemiConfig) -> dict[str, dict]:
    """Fine-tune each subject on ``labelled`` (map-style) and test it: top-1/top-5 and the log.

    Each backbone is fine-tuned in place; pass copies if you need the originals afterwards.
    """
    _, train_labels = sample_index(labelled)
    _, test_labels = sample_index(e.test)
    check_labels(torch.as_tensor(train_labels), "the labelled subset")
    check_labels(torch.as_tensor(test_labels), "the test data")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    s, images = settings, e.images
    train_tf = augmentation(images.image_size, images.mean, images.std, s.crop_scale)
    results = {}
    for name, (backbone, feature_dim, _) in e.subjects.items():
        model, history = finetune(
            backbone,
            feature_dim,
            num_classes,
            labelled,
            train_tf,
            s,
            e.inputs.seed,
            e.device,
            e.workers,
            log=lambda r, name=name: e.log(
                f"{name}: epoch {r['epoch']}/{s.epochs} lr {r['lr_backbone']:.2g}/{r['lr_classifier']:.2g} "
                f"loss {r['loss']:.4f} train top-1 {r['train_top1']:.2f}%"
            ),
        )
        loader = batches(e.test, images.transform(), s.batch_size, e.workers, e.device)
        test = extract(model, loader, e.device, progress=f"{name}: test")
        accuracy = topk_accuracy(test.features, test.labels)
        results[name] = {**accuracy, "history": history}
        e.log(f"{name}: semi-supervised top-1 {accuracy['top1']:.2f}%  top-5 {accuracy['top5']:.2f}%")
    return results


def choose_subset(
    e: Evaluation, ids: list[str], labels: np.ndarray, settings: SemiConfig, subset: str | None, subset_out: str | None
) -> tuple[np.ndarray, str, str]:
    """(positions, subset file, how it was chosen): the ``subset`` list file, else drawn class-balanced and saved."""
    if subset:
        return match_ids(read_subset_file(subset), ids, subset), subset, f"listed in {subset}"
    positions = balanced_subset(labels, settings.fraction, e.inputs.seed)
    subset_file = subset_out or str(e.out.with_name(e.out.stem + "-subset.txt"))
    write_subset_file([ids[i] for i in positions], subset_file)
    how = f"class-balanced {settings.fraction:g} of the labels, seed {e.inputs.seed}, saved to {subset_file}"
    return positions, subset_file, how


def run(inputs: EvalInputs, settings: SemiConfig, subset: str | None = None, subset_out: str | None = None) -> Path:
    """The semi-supervised protocol through the harness -> ``eval/semi-<subset>.json`` (+ the subset file)."""
    e = prepare(inputs, f"semi-{Path(subset).stem}" if subset else f"semi-{settings.fraction * 100:g}pct")
    ids, labels = sample_index(e.train)  # once: for shards this reads every tar's headers
    positions, subset_file, how = choose_subset(e, ids, labels, settings, subset, subset_out)
    labelled = select_samples(e.train, positions, f"{how} of {e.train.description}")
    counts = np.bincount(labels[positions]).tolist()
    e.log(f"semi-supervised fine-tuning (B.2) of {', '.join(e.subjects)} on {labelled.description}; per class {counts}")
    results = semi_supervised_eval(e, labelled, settings)
    e.log("semi-supervised " + summary(results, ("top1", "top5")))
    subset_info = {"file": str(subset_file), "how": how, "size": len(positions), "per_class": counts}
    return e.write(
        "semi-supervised fine-tuning (appendix B.2)",
        settings,
        results,
        mode="fine-tune all parameters",
        subset=subset_info,
        labelled_data=labelled.description,
    )
