"""Tiny generated detection sets for the detection tests: coloured shapes on a grey background with known boxes
and masks, written in PASCAL VOC and COCO layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"square": (220, 40, 40), "bar": (40, 60, 220)}  # class -> RGB fill


def shapes(index: int, width: int, height: int) -> list[tuple[str, list[int]]]:
    """The objects of image ``index``: (class, [x0, y0, x1, y1]) in pixels, different per image."""
    rng = np.random.default_rng(index)
    side = int(rng.integers(height // 4, height // 2))
    x, y = int(rng.integers(0, width // 2 - side + 1)), int(rng.integers(0, height - side))  # left of the bar
    objects = [("square", [x, y, x + side, y + side])]
    bar_w, bar_h = int(rng.integers(6, width // 5)), int(rng.integers(height // 2, height - 4))
    bx, by = int(rng.integers(width // 2 + 2, width - bar_w)), int(rng.integers(0, height - bar_h))
    objects.append(("bar", [bx, by, bx + bar_w, by + bar_h]))
    return objects


def draw(objects: list[tuple[str, list[int]]], width: int, height: int) -> np.ndarray:
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    for name, (x0, y0, x1, y1) in objects:
        pixels[y0:y1, x0:x1] = COLOURS[name]
    return pixels


def make_voc(root: Path, train: int = 8, test: int = 4, width: int = 80, height: int = 64) -> Path:
    """A VOC tree: train.txt and test.txt ids, JPEGs (PNG-quality via high JPEG quality), 1-based XML boxes."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:03d}" for i in range(train + test)]
    for i, image_id in enumerate(ids):
        objects = shapes(i, width, height)
        Image.fromarray(draw(objects, width, height)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        xml = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, (x0, y0, x1, y1) in objects
        )
        size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{size}{xml}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids[:train]) + "\n")
    (root / "ImageSets/Main/test.txt").write_text("\n".join(ids[train:]) + "\n")
    return root


def make_coco(root: Path, train: int = 8, test: int = 4, width: int = 80, height: int = 64) -> Path:
    """A folder in COCO 2017's layout; the squares' masks as polygons, the bars' as uncompressed RLE."""
    from pycocotools import mask as mask_utils

    categories = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]  # ids need not be 1..K
    category = {c["name"]: c["id"] for c in categories}
    for split, first, count in (("train2017", 0, train), ("val2017", train, test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(first, first + count):
            objects = shapes(i, width, height)
            name = f"{i:06d}.png"
            Image.fromarray(draw(objects, width, height)).save(root / split / name)
            images.append({"id": 100 + i, "file_name": name, "width": width, "height": height})
            for label, (x0, y0, x1, y1) in objects:
                if label == "square":
                    segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                else:
                    mask = np.zeros((height, width), dtype=np.uint8)
                    mask[y0:y1, x0:x1] = 1
                    counts = _uncompressed_rle(mask)
                    segmentation = {"size": [height, width], "counts": counts}
                    assert mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width)).sum() == mask.sum()
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": 100 + i,
                        "category_id": category[label],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "segmentation": segmentation,
                    }
                )
        (root / "annotations").mkdir(exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths of 0s and 1s in column-major order, starting with 0s."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts
