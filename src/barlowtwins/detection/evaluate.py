"""Detection metrics: COCO AP / AP50 / AP75 by pycocotools (box, and mask for Mask R-CNN) and VOC07's 11-point AP50.

Table 4 reports AP (COCO's mean over IoU 0.5:0.95), AP50 and AP75, in percent, for VOC07+12 and COCO alike.
The evaluated split is written in COCO format (``ground_truth.json``) and the detections in COCO's results
format (``detections.json``), so pycocotools re-scores a run from those two files alone. VOC "difficult"
objects go into the ground truth as COCO crowd regions (matched without counting, as VOC07 ignores them).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from barlowtwins.detection.data import DetectionSet

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probabilities -> binary masks (torchvision, detectron2)


def _area(box: Sequence[float]) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def ground_truth_coco(data: DetectionSet) -> dict[str, Any]:
    """The split in COCO's annotation format (boxes as x, y, w, h; segmentations as read, when present)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for record in data.images:
        images.append(
            {"id": record.image_id, "file_name": record.path.name, "width": record.width, "height": record.height}
        )
        for i, box in enumerate(record.boxes):
            annotation = {
                "id": len(annotations) + 1,
                "image_id": record.image_id,
                "category_id": record.labels[i],
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "area": _area(box),
                "iscrowd": int(record.ignore[i]),
            }
            segmentation = record.segmentations[i] if record.segmentations else None
            if segmentation:
                annotation["segmentation"] = segmentation
                rles = mask_utils.frPyObjects(segmentation, record.height, record.width)
                annotation["area"] = float(np.sum(mask_utils.area(rles)))
            annotations.append(annotation)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(data.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_coco(outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """torchvision's outputs (one dict per image, original image coordinates) in COCO's results format;
    masks, when present, as compressed RLE of the mask thresholded at 0.5."""
    from pycocotools import mask as mask_utils

    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].tolist()
        masks = None
        if "masks" in output:
            binary = (output["masks"][:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)
            masks = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for i, (box, label, score) in enumerate(
            zip(boxes, output["labels"].tolist(), output["scores"].tolist(), strict=True)
        ):
            result = {
                "image_id": int(image_id),
                "category_id": int(label),
                "bbox": [round(v, 2) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                "score": round(float(score), 5),
            }
            if masks is not None:
                result["segmentation"] = {"size": masks[i]["size"], "counts": masks[i]["counts"].decode("ascii")}
            results.append(result)
    return results


def coco_metrics(ground_truth: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "bbox") -> dict:
    """pycocotools' 12 summary numbers (``COCOeval.stats``) in percent, named; AP is the mean over IoU
    0.5:0.95, AP50 / AP75 at IoU 0.5 / 0.75. No detections: every number 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: round(100 * max(float(v), 0.0), 3) for name, v in zip(COCO_STATS, evaluation.stats, strict=True)}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (_area(box) + areas - inter)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007's 11-point interpolated AP: the mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t."""
    points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
    return float(np.mean(points))


def voc07_class_ap(data: DetectionSet, results: list[dict[str, Any]], label: int, iou: float = 0.5) -> float | None:
    """VOC07's AP of one class (the devkit's rule: a detection matches the unmatched ground truth it overlaps
    most with IoU > ``iou``; one on a difficult object counts neither way). None: no such object."""
    truth = {}
    for record in data.images:
        keep = [i for i, lab in enumerate(record.labels) if lab == label]
        boxes = np.array([record.boxes[i] for i in keep], dtype=np.float64).reshape(-1, 4)
        truth[record.image_id] = (boxes, np.array([record.ignore[i] for i in keep], bool), np.zeros(len(keep), bool))
    positives = sum(int((~difficult).sum()) for _, difficult, _ in truth.values())
    if positives == 0:
        return None
    detections = sorted((r for r in results if r["category_id"] == label), key=lambda r: -r["score"])
    tp, fp = np.zeros(len(detections)), np.zeros(len(detections))
    for d, result in enumerate(detections):
        boxes, difficult, matched = truth.get(result["image_id"], (np.zeros((0, 4)), np.zeros(0, bool), None))
        x, y, w, h = result["bbox"]
        overlaps = _iou(np.array([x, y, x + w, y + h]), boxes) if len(boxes) else np.zeros(0)
        best = int(np.argmax(overlaps)) if len(overlaps) else -1
        if best < 0 or overlaps[best] <= iou:
            fp[d] = 1
        elif not difficult[best]:
            tp[d], fp[d] = (0, 1) if matched[best] else (1, 0)
            matched[best] = True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc07_ap(tp / positives, precision)


def voc07_metrics(data: DetectionSet, results: list[dict[str, Any]]) -> dict[str, Any]:
    """VOC07's 11-point AP50 in percent: the mean over classes with objects, and each class's."""
    per_class = {name: voc07_class_ap(data, results, i + 1) for i, name in enumerate(data.classes)}
    scored = {name: round(100 * ap, 3) for name, ap in per_class.items() if ap is not None}
    return {"AP50": round(float(np.mean(list(scored.values()))), 3) if scored else 0.0, "per_class": scored}
