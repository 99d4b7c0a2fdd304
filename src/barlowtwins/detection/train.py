"""``detect(config)``: fine-tune a detector on our backbone, then score it (paper Table 4, appendix C.2).

SGD with momentum, C.2's step schedule (linear warm-up, x ``gamma`` at the milestones), weight decay on all
but the 1-D parameters (biases, norm layers; detectron2 leaves norms undecayed). With pretraining's guarantees:
a run directory with atomic checkpoints and resume, a lock, SIGTERM / SIGUSR1 checkpoint-and-stop, a progress
bar, a finiteness check of every loss and of the weights before each checkpoint, and ``time_budget`` (the
steps that fit, the milestones scaled with them). One process; under torchrun it says so and stops.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from barlowtwins import distributed
from barlowtwins.atomic import atomic_write_text
from barlowtwins.config import IMAGENET_MEAN, IMAGENET_STD, DetectConfig
from barlowtwins.detection.backbone import load_resnet
from barlowtwins.detection.data import DetectionDataset, DetectionSet, StepBatches, collate, read_split
from barlowtwins.detection.detector import build_detector
from barlowtwins.detection.evaluate import coco_metrics, detections_coco, ground_truth_coco, voc07_metrics
from barlowtwins.detection.pictures import draw_predictions
from barlowtwins.detection.run import DetectRun
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import run_metadata, seed_everything, select_device
from barlowtwins.train.budget import Budget
from barlowtwins.train.divergence import FiniteWatch
from barlowtwins.train.preemption import Preemption
from barlowtwins.validation import parse_duration

logger = logging.getLogger(__name__)

EVAL_BATCH = 2  # test images per forward pass


def lr_factor(
    step: int, total: int, steps: int, milestones: tuple[int, ...], warmup: int, warmup_factor: float, gamma: float
) -> float:
    """C.2's schedule at ``step`` of ``total`` planned steps: ``gamma`` per milestone passed (milestones given
    for ``steps`` and scaled to ``total``), times detectron2's linear warm-up from ``warmup_factor`` to 1."""
    factor = gamma ** sum(step >= round(m * total / steps) for m in milestones)
    if step < warmup:
        alpha = step / warmup
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def _optimizer(model: torch.nn.Module, c: DetectConfig) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": c.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum)


def _load_data(c: DetectConfig) -> tuple[DetectionSet, DetectionSet]:
    train = read_split(c.data, "train", c.classes)
    test = read_split(c.data, "test", train.classes)
    if c.limit:
        train.images = train.images[: c.limit]
    if c.test_limit:
        test.images = test.images[: c.test_limit]
    if not train.images or not test.images:
        raise BarlowTwinsError(
            f"--data {' '.join(c.data)}: no usable {'training' if not train.images else 'test'} images"
        )
    if c.model == "mask_rcnn" and not train.has_masks:
        raise BarlowTwinsError("--model mask_rcnn needs masks: pass a COCO-layout folder with segmentations")
    logger.info("train: %s\ntest: %s\nclasses: %s", train.summary(), test.summary(), ", ".join(train.classes))
    return train, test


def build(c: DetectConfig, classes: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detector of ``c`` around the backbone of ``c.checkpoint``, and the backbone's description."""
    resnet, info = load_resnet(c.checkpoint, c.arch, c.seed)
    images = info.get("images", {})
    torch.manual_seed(c.seed)  # the detector's new layers
    detector = build_detector(
        resnet, classes, c.model, c.variant, c.norm, c.min_sizes, c.max_size, c.test_size,
        images.get("mean", IMAGENET_MEAN), images.get("std", IMAGENET_STD),
        c.box_batch_per_image, c.detections_per_image, c.score_threshold,
    )  # fmt: skip
    return detector, info


def detect(config: DetectConfig) -> dict[str, Any]:
    """Fine-tune and evaluate as ``config`` says; returns the report also written to ``out/eval/detection.json``
    (under torchrun: on the main process; the others return an empty report)."""
    torch.set_flush_denormal(True)  # fresh heads make denormal floats: steps 2-8x slower without (anchors.md)
    c = config
    device, local_rank = distributed.join(select_device(c.device), c.batch_size)
    world = distributed.world_size()  # (the process group is left before evaluating)
    train, test = _load_data(c)
    detector, info = build(c, len(train.classes))
    if distributed.is_distributed() and c.norm == "sync":
        detector = distributed.convert_sync_batchnorm(detector, device.type)  # C.2's SyncBatchNorm
    detector.to(device)
    optimizer = _optimizer(detector, c)
    run = DetectRun(c.out, main=distributed.is_main_process())
    progress = _start(run, c, detector, optimizer)
    trainer = detector
    if distributed.is_distributed():
        ids = [local_rank] if device.type == "cuda" else None
        trainer = torch.nn.parallel.DistributedDataParallel(detector, device_ids=ids)
    with run:
        seconds, steps = _fine_tune(c, trainer, detector, optimizer, run, train, progress, device)
        # Leave the process group before the main process evaluates alone (others waiting would time out).
        distributed.barrier()
        distributed.shutdown()
        if not run.main:
            return {}
        report = evaluate(c, detector, test, device, run.path / "eval")
        report.update(train_set=train.summary(), backbone=_describe(info), steps=steps)
        report.update(train_minutes=round(seconds / 60, 2), time_budget=c.time_budget)
        report.update(processes=world, config=c.to_dict(), meta=run_metadata())
        run.log({"step": steps, **{f"{k}_{m}": v for k in ("bbox", "segm") for m, v in report.get(k, {}).items()}})
        atomic_write_text(_json(report), run.path / "eval" / "detection.json")
    logger.info(_headline(report))
    return report


def _start(run: DetectRun, c: DetectConfig, detector, optimizer) -> dict[str, Any]:
    """``run.start`` on the main process first (it takes the directory), then on the others (they resume)."""
    progress = run.start(c, detector, optimizer) if run.main else None
    distributed.barrier()
    return progress if run.main else run.start(c, detector, optimizer)


def _describe(info: dict[str, Any]) -> dict[str, Any]:
    keep = ("weights", "arch", "small_stem", "stem_stride", "epoch", "seed")
    return {"init": "random" if info.get("weights") == "random init" else "pretrained"} | {
        k: info[k] for k in keep if k in info
    }


def _fine_tune(
    c, trainer, detector, optimizer, run: DetectRun, train: DetectionSet, progress, device
) -> tuple[float, int]:
    """The training loop (``trainer``: the detector, or its DDP wrapper); returns (training seconds over all
    sessions, steps done). Each process trains on its share of every global batch."""
    step = progress["step"]
    agree = distributed.broadcast_object if distributed.is_distributed() else None  # the main process's plan
    budget = Budget(parse_duration(c.time_budget), c.steps, progress["train_seconds"], progress["total_steps"], agree)
    rank, world = distributed.rank(), distributed.world_size()
    loader = torch.utils.data.DataLoader(
        DetectionDataset(train, masks=c.model == "mask_rcnn", train=True),
        batch_sampler=StepBatches(len(train.images), c.batch_size, c.seed, step, rank=rank, world=world),
        collate_fn=collate,
        num_workers=c.workers,
        persistent_workers=False,
    )
    batches = iter(loader)
    seed_everything(c.seed + 1 + step + 1_000_003 * rank)  # resize draws differ per step and process, repeat on resume
    interval = 1 if sys.stderr.isatty() else 30
    bar = tqdm(total=budget.total_steps, initial=step, unit="step", mininterval=interval, disable=not run.main)
    trainer.train()
    watch, budget_started = FiniteWatch(step, fix=f"lower lr (now {c.lr}: --set lr={c.lr / 2:g})"), False
    with bar, Preemption(device, c.log_every) as preemption:
        while step < budget.total_steps:
            images, targets = next(batches)
            if not budget_started:
                budget.restart_clock()  # the first batch's loading (workers starting) is set-up, not training
                budget_started = True
            warmup = budget.warmup_steps(c.warmup_steps)
            factor = lr_factor(step, budget.total_steps, c.steps, c.milestones, warmup, c.warmup_factor, c.gamma)
            for group in optimizer.param_groups:
                group["lr"] = c.lr * factor
            losses = trainer([i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets])
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            watch.add(loss)
            step += 1
            bar.total = budget.step_done(step)
            bar.update(1)
            if step % c.log_every == 0 or step == budget.total_steps:
                watch.check(step, run.path, run.saved_step)
                record = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
                run.log({**record, "lr": c.lr * factor})
                bar.set_postfix(loss=f"{record['loss']:.3g}", refresh=False)
            stop = preemption.requested(step)
            if stop or step == budget.total_steps or step % c.checkpoint_every == 0:
                watch.check(step, run.path, run.saved_step, detector, optimizer)
                run.save(detector, optimizer, c, step, budget.spent, budget.total_steps)
            if stop:
                raise preemption.stop(step, run.path)
    return budget.spent, step


@torch.no_grad()
def predict(detector, data: DetectionSet, device, workers: int = 0) -> list[dict[str, Any]]:
    """Detections on every image of ``data`` in COCO's results format (original image coordinates)."""
    detector.eval()
    keys = [(i, False) for i in range(len(data.images))]
    loader = torch.utils.data.DataLoader(
        DetectionDataset(data, masks=False, train=False),
        batch_sampler=[keys[i : i + EVAL_BATCH] for i in range(0, len(keys), EVAL_BATCH)],
        collate_fn=collate,
        num_workers=workers,
    )
    results = []
    for images, targets in tqdm(loader, desc="evaluating", unit="batch", mininterval=30, leave=False):
        outputs = [{k: v.cpu() for k, v in o.items()} for o in detector([i.to(device) for i in images])]
        results += detections_coco(outputs, [int(t["image_id"]) for t in targets])
    return results


def evaluate(c: DetectConfig, detector, test: DetectionSet, device, out: Path) -> dict[str, Any]:
    """Score ``detector`` on ``test``; writes ground_truth.json, detections.json and predictions.png in ``out``."""
    started = time.perf_counter()
    results = predict(detector, test, device, c.workers)
    truth = ground_truth_coco(test)
    atomic_write_text(_json(truth), out / "ground_truth.json")
    atomic_write_text(_json(results), out / "detections.json")
    report: dict[str, Any] = {"unit": "percent (COCO AP: mean over IoU 0.50:0.95; AP50, AP75 at IoU 0.5, 0.75)"}
    report.update(model=c.model, variant=c.variant, norm=c.norm, classes=test.classes)
    report.update(test_set=test.summary(), bbox=coco_metrics(truth, results, "bbox"))
    if c.model == "mask_rcnn":
        report["segm"] = coco_metrics(truth, results, "segm")
    if all((Path(root) / "Annotations").is_dir() for root in c.data):
        report["voc07"] = voc07_metrics(test, results)  # the VOC devkit's 11-point AP50
    if c.pictures:
        draw_predictions(test.images[: c.pictures], results, test.classes, out / "predictions.png")
    report["eval_seconds"] = round(time.perf_counter() - started, 1)
    return report


def _json(value: Any) -> str:
    return json.dumps(value, indent=1) + "\n"


def _headline(report: dict[str, Any]) -> str:
    b = report["bbox"]
    lines = [f"box AP / AP50 / AP75: {b['AP']:.1f} / {b['AP50']:.1f} / {b['AP75']:.1f}"]
    if "segm" in report:
        s = report["segm"]
        lines.append(f"mask AP / AP50 / AP75: {s['AP']:.1f} / {s['AP50']:.1f} / {s['AP75']:.1f}")
    if "voc07" in report:
        lines.append(f"VOC07 11-point AP50: {report['voc07']['AP50']:.1f}")
    return "\n".join(lines)
