"""Detection data: PASCAL VOC trees and COCO JSON read into one list of annotated images, and their batches.

Appendix C.2 fine-tunes on VOC07+12 (the union of two VOC trees) and COCO 2017. Boxes are kept as
continuous ``x0, y0, x1, y1`` pixel coordinates (VOC's 1-based ``xmin, ymin`` minus one, as detectron2).
Bad annotations never raise a traceback: a box partly outside its image is clipped, one with no area left,
of an unknown class or whose image is missing is skipped, and each kind is counted in ``skipped``.
Training flips image, boxes and masks together here; the random resize of image, boxes and masks is
torchvision's ``GeneralizedRCNNTransform`` (a shorter side drawn from ``min_sizes`` per image).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from barlowtwins.errors import BarlowTwinsError

VOC_TRAIN_SPLITS = ("trainval", "train")  # the contract: trainval.txt if present, else train.txt
VOC_TEST_SPLITS = ("test", "val")
COCO_FILES = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "test": ("annotations/instances_val2017.json", "val2017"),
}


@dataclass
class Annotated:
    """One image and its objects; ``ignore`` marks VOC "difficult" and COCO "crowd" objects (left out of
    training, and of the evaluation's matching as COCO's crowd regions are)."""

    path: Path
    image_id: int
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)  # x0, y0, x1, y1
    labels: list[int] = field(default_factory=list)  # 1..K (0 is the detector's background)
    ignore: list[bool] = field(default_factory=list)
    segmentations: list[Any] = field(default_factory=list)  # COCO polygons or RLE, one per object (VOC: none)


@dataclass
class DetectionSet:
    images: list[Annotated]
    classes: list[str]
    skipped: Counter = field(default_factory=Counter)  # kind of bad annotation -> count
    has_masks: bool = False

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        boxes = sum(len(a.boxes) for a in self.images)
        return f"{len(self.images)} images, {boxes} objects" + (f" (skipped or clipped: {kinds})" if kinds else "")


def layout(root: str | Path) -> str:
    """``"coco"`` for a folder in COCO 2017's layout, ``"voc"`` for a VOC tree, else a one-line error."""
    root = Path(root)
    if (root / COCO_FILES["train"][0]).is_file() or (root / COCO_FILES["test"][0]).is_file():
        return "coco"
    if (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir():
        return "voc"
    raise BarlowTwinsError(
        f"--data {root} is neither a VOC tree (JPEGImages/, Annotations/, ImageSets/Main/) nor a folder in "
        "COCO 2017's layout (annotations/instances_train2017.json, train2017/, ...)"
    )


def _clip(box: list[float], width: int, height: int, skipped: Counter) -> list[float] | None:
    """The box clipped to the image (counted when it reached outside), or None if no area is left."""
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    if x1 <= x0 or y1 <= y0:
        skipped["boxes with no area inside the image"] += 1
        return None
    if [x0, y0, x1, y1] != box:
        skipped["boxes clipped to the image"] += 1
    return [x0, y0, x1, y1]


def _voc_ids(root: Path, splits: Sequence[str]) -> list[str]:
    for split in splits:
        path = root / "ImageSets" / "Main" / f"{split}.txt"
        if path.is_file():
            return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    raise BarlowTwinsError(f"{root}/ImageSets/Main has none of {', '.join(s + '.txt' for s in splits)}")


def _voc_objects(xml_path: Path) -> list[tuple[str, list[float], bool]]:
    """(class name, box, difficult) of each object of a VOC XML file."""
    try:
        tree = ElementTree.parse(xml_path)
        objects = []
        for obj in tree.findall("object"):
            b = obj.find("bndbox")
            box = [float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            box[0] -= 1.0  # VOC's 1-based pixel indices -> continuous coordinates (detectron2)
            box[1] -= 1.0
            difficult = obj.find("difficult")
            objects.append((obj.find("name").text.strip(), box, difficult is not None and difficult.text == "1"))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as error:
        raise BarlowTwinsError(f"cannot read the VOC annotation {xml_path} ({error})") from None
    return objects


def read_voc(roots: Sequence[str | Path], splits: Sequence[str], classes: Sequence[str] = ()) -> DetectionSet:
    """The images of ``splits`` (the first present) of every VOC tree in ``roots``. ``classes`` fixes the label
    order; empty, it is the sorted names found here (pass the training set's classes to the test set)."""
    entries, skipped = [], Counter()
    for root in map(Path, roots):
        for image_id in _voc_ids(root, splits):
            xml, image = root / "Annotations" / f"{image_id}.xml", root / "JPEGImages" / f"{image_id}.jpg"
            if not xml.is_file() or not image.is_file():
                skipped["images or annotation files missing"] += 1
                continue
            entries.append((image, _voc_objects(xml)))
    names = list(classes) or sorted({name for _, objects in entries for name, _, _ in objects})
    index = {name: i + 1 for i, name in enumerate(names)}
    images = []
    for image_path, objects in entries:
        width, height = _image_size(image_path)
        record = Annotated(image_path, len(images) + 1, width, height)
        for name, box, difficult in objects:
            if name not in index:
                skipped["objects of unknown classes"] += 1
                continue
            clipped = _clip(box, width, height, skipped)
            if clipped is not None:
                record.boxes.append(clipped)
                record.labels.append(index[name])
                record.ignore.append(difficult)
        images.append(record)
    return DetectionSet(images, names, skipped)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise BarlowTwinsError(f"cannot read the image {path} ({error})") from None


def read_coco(annotation_file: str | Path, image_dir: str | Path, classes: Sequence[str] = ()) -> DetectionSet:
    """A COCO ``instances_*.json`` and its image folder; labels follow the category ids' order (or ``classes``)."""
    try:
        coco = json.loads(Path(annotation_file).read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        coco_images, annotations = coco["images"], coco.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BarlowTwinsError(f"cannot read the COCO annotations {annotation_file} ({error})") from None
    names = list(classes) or [c["name"] for c in categories]
    label_of = {c["id"]: names.index(c["name"]) + 1 for c in categories if c["name"] in names}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    images, skipped, has_masks = [], Counter(), False
    for entry in coco_images:
        path = Path(image_dir) / entry["file_name"]
        if not path.is_file():
            skipped["images or annotation files missing"] += 1
            continue
        record = Annotated(path, int(entry["id"]), int(entry["width"]), int(entry["height"]))
        for ann in by_image.get(entry["id"], []):
            if ann.get("category_id") not in label_of:
                skipped["objects of unknown classes"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            clipped = _clip([x, y, x + w, y + h], record.width, record.height, skipped)
            if clipped is None:
                continue
            record.boxes.append(clipped)
            record.labels.append(label_of[ann["category_id"]])
            record.ignore.append(bool(ann.get("iscrowd", 0)))
            record.segmentations.append(ann.get("segmentation"))
            has_masks = has_masks or bool(ann.get("segmentation"))
        images.append(record)
    return DetectionSet(images, names, skipped, has_masks)


def read_split(roots: Sequence[str | Path], split: str, classes: Sequence[str] = ()) -> DetectionSet:
    """``split`` ("train" or "test") of ``--data``: VOC trees or one COCO 2017 folder, recognised by layout."""
    kinds = {layout(root) for root in roots}
    if kinds == {"coco"}:
        if len(roots) != 1:
            raise BarlowTwinsError("--data takes one COCO folder (several folders are for VOC trees, VOC07+12)")
        annotations, folder = COCO_FILES[split]
        if not (Path(roots[0]) / annotations).is_file():
            raise BarlowTwinsError(f"--data {roots[0]} has no {annotations}")
        return read_coco(Path(roots[0]) / annotations, Path(roots[0]) / folder, classes)
    if kinds == {"voc"} and split == "train":
        return read_voc(roots, VOC_TRAIN_SPLITS, classes)
    if kinds == {"voc"}:  # VOC07+12 tests on VOC2007's test.txt alone: the trees that have the first split found
        present = [
            (s, r) for s in VOC_TEST_SPLITS for r in roots if (Path(r) / "ImageSets/Main" / f"{s}.txt").is_file()
        ]
        name = present[0][0] if present else VOC_TEST_SPLITS[0]
        return read_voc([r for s, r in present if s == name] or roots, (name,), classes)
    raise BarlowTwinsError("--data mixes VOC trees and COCO folders; pass one kind")


def decode_masks(segmentations: Sequence[Any], height: int, width: int) -> torch.Tensor:
    """COCO polygons / RLE -> (N, H, W) uint8 masks (pycocotools); an object without one gets its box's mask."""
    from pycocotools import mask as mask_utils

    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for i, segmentation in enumerate(segmentations):
        if not segmentation:
            continue
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        masks[i] = mask_utils.decode(rle)
    return torch.from_numpy(masks)


def flip_target(target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The target of the horizontally mirrored image: x -> width - x for boxes, masks mirrored."""
    flipped = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped["boxes"] = boxes
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return flipped


class DetectionDataset(torch.utils.data.Dataset):
    """Items by ``(index, flip)`` key (:class:`StepBatches` draws the flips, so a resumed run repeats them):
    a float image in [0, 1] (3, H, W) and torchvision's target dict; training leaves out ignored objects."""

    def __init__(self, data: DetectionSet, masks: bool, train: bool):
        self.images, self.masks, self.train = data.images, masks, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, flip = key
        record = self.images[index]
        with Image.open(record.path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        keep = [i for i, ignored in enumerate(record.ignore) if not (self.train and ignored)]
        target = {
            "boxes": torch.tensor([record.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([record.labels[i] for i in keep], dtype=torch.int64),
            "image_id": torch.tensor(record.image_id),
        }
        if self.masks:
            segmentations = [record.segmentations[i] if record.segmentations else None for i in keep]
            target["masks"] = decode_masks(segmentations, record.height, record.width)
        if flip:
            image, target = image.flip(-1), flip_target(target, record.width)
        return image, target


class StepBatches:
    """Endless batches of ``(index, flip)`` keys: permutations of the images one after another, each with its
    coin flips, from ``seed``; starting at ``step`` gives the batches a run that reached it would see next.
    With ``world`` processes each takes every ``world``-th key of each global batch from its ``rank``."""

    def __init__(
        self, size: int, batch_size: int, seed: int, step: int = 0, flip: bool = True, rank: int = 0, world: int = 1
    ):
        self.size, self.batch_size, self.seed, self.step, self.flip = size, batch_size, seed, step, flip
        self.rank, self.world = rank, world

    def _epoch(self, epoch: int) -> list[tuple[int, bool]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        flips = (torch.rand(self.size, generator=generator) < 0.5).tolist()
        return [(i, bool(f) and self.flip) for i, f in zip(order, flips, strict=True)]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        position = self.step * self.batch_size
        epoch, offset = divmod(position, self.size)
        pending = self._epoch(epoch)[offset:]
        while True:
            while len(pending) < self.batch_size:
                epoch += 1
                pending += self._epoch(epoch)
            yield pending[: self.batch_size][self.rank :: self.world]
            pending = pending[self.batch_size :]


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch as torchvision's detectors take it: a list of images and a list of targets."""
    return [image for image, _ in batch], [target for _, target in batch]
