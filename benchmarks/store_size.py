"""What the stored resolution costs and what lower settings trade away (``data.stored_size``).

For each cap on the stored shorter side (the default rule, 915 px for 224 px views from 8 % crops, then lower
settings) and for the previous square store (shorter side 224, centre crop 224 x 224), on real photos:

* bytes per stored image (mean and max) and the projection for ImageNet's 1,281,167 training images, from the
  mean stored size of generated JPEGs at ImageNet's typical sizes (or of the photos, with --imagenet-sizes 0);
* how far 224 px training crops cut from the store are from torchvision's ``resized_crop`` of the original at the
  same box (mean absolute difference, 0-255), and the share of crops cut from fewer stored pixels than the output's
  224 where the original had more (the resolution the cap took away);
* for the square store, the share of each photo's area that no crop can ever reach.

Run: ``python benchmarks/store_size.py --photos ../shared/data/raccoon/JPEGImages``. No timing: sizes and pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from barlowtwins.data.cache import full_shape, stored_full, stored_image
from barlowtwins.data.decode import decode
from barlowtwins.views.crops import full_resolution_side, resized_crop, sample_crop_boxes

SIZE, SCALE = 224, (0.08, 1.0)  # the paper's views
IMAGENET_TRAIN = 1_281_167
IMAGENET_SHAPES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (640, 480), (400, 300), (500, 500)]


def crop_error(
    original: Image.Image, stored: np.ndarray, crops: int, generator: torch.Generator
) -> tuple[float, float]:
    """Mean |crop from the store - torchvision's crop of the original| and the share of crops cut from fewer
    pixels than the output has where the original had more (resolution the store lost)."""
    image = Image.fromarray(stored)
    scale = (image.width / original.width, image.height / original.height)
    errors, reduced = [], 0
    for box in sample_crop_boxes(crops, original.height, original.width, SCALE, generator).tolist():
        ours = resized_crop(image, box, scale, SIZE).permute(1, 2, 0).numpy().astype(np.float32)
        ref = np.asarray(TF.resized_crop(original, *box, [SIZE, SIZE], interpolation=TF.InterpolationMode.BICUBIC))
        errors.append(np.abs(ours - ref).mean())
        reduced += min(box[2] * scale[1], box[3] * scale[0]) < min(SIZE, box[2], box[3]) - 0.5
    return float(np.mean(errors)), reduced / crops


def square_errors(original: Image.Image, crops: int, generator: torch.Generator) -> tuple[float, float]:
    """The square store: crops drawn inside the centre square (as the previous path did), against torchvision on
    the original at the box the square's crop covers; and the share of the photo outside the square."""
    stored = Image.fromarray(stored_image(original, SIZE))
    short = min(original.size)
    factor = short / SIZE
    left0, top0 = (original.width - short) / 2, (original.height - short) / 2
    errors = []
    for top, left, h, w in sample_crop_boxes(crops, SIZE, SIZE, SCALE, generator).tolist():
        ours = resized_crop(stored, (top, left, h, w), (1.0, 1.0), SIZE).permute(1, 2, 0).numpy().astype(np.float32)
        box = [round(top0 + top * factor), round(left0 + left * factor), round(h * factor), round(w * factor)]
        ref = np.asarray(TF.resized_crop(original, *box, [SIZE, SIZE], interpolation=TF.InterpolationMode.BICUBIC))
        errors.append(np.abs(ours - ref).mean())
    return float(np.mean(errors)), 1 - short * short / (original.width * original.height)


def imagenet_bytes(cap: int, count: int) -> float:
    """Mean stored bytes of an image at ImageNet's typical sizes (shapes cycled, as the benchmark generates)."""
    sizes = [IMAGENET_SHAPES[i % len(IMAGENET_SHAPES)] for i in range(count)]
    per = []
    for width, height in sizes:
        per.append(3 * int(np.prod(full_shape(height, width, cap))))
    return float(np.mean(per))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", required=True, help="folder of full-size JPEGs (e.g. the raccoon photos)")
    parser.add_argument("--caps", type=int, nargs="+", default=[0, 512, 384, 256], help="0: the default rule")
    parser.add_argument("--crops", type=int, default=8, help="crops per photo and setting")
    parser.add_argument("--limit", type=int, default=200, help="photos used")
    parser.add_argument("--imagenet-sizes", type=int, default=1000, help="ImageNet-size shapes for the projection")
    args = parser.parse_args()
    paths = sorted(Path(args.photos).glob("*.jp*g"))[: args.limit]
    photos = [decode(str(p), str(p)) for p in paths]
    pixels = [p.width * p.height for p in photos]
    print(
        f"{len(photos)} photos from {args.photos}: {min(pixels) / 1e6:.2f}-{max(pixels) / 1e6:.2f} Mpx, "
        f"median {np.median(pixels) / 1e6:.2f} Mpx; {args.crops} crops of {SIZE} px each, scale {SCALE}"
    )
    print()
    columns = ["store", "shorter side", "bytes / photo (mean, max)", "ImageNet train, projected"]
    columns += ["crop error vs torchvision (0-255)", "crops that lost resolution", "area never cropped"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cap in args.caps:
        side = cap or full_resolution_side(SIZE, SCALE[0])
        generator = torch.Generator().manual_seed(0)
        sizes, errors, enlarged = [], [], []
        for photo in photos:
            stored, _ = stored_full(photo, side)
            sizes.append(stored.nbytes)
            error, share = crop_error(photo, stored, args.crops, generator)
            errors.append(error)
            enlarged.append(share)
        projected = imagenet_bytes(side, args.imagenet_sizes) * IMAGENET_TRAIN / 1e9
        name = f"whole photo, default rule ({side} px)" if cap == 0 else "whole photo"
        print(
            f"| {name} | ≤ {side} | {np.mean(sizes) / 1e6:.2f} MB, {max(sizes) / 1e6:.2f} MB | {projected:,.0f} GB "
            f"| {np.mean(errors):.2f} | {100 * np.mean(enlarged):.1f} % | 0 % |"
        )
    generator = torch.Generator().manual_seed(0)
    results = [square_errors(photo, args.crops, generator) for photo in photos]
    projected = 3 * SIZE * SIZE * IMAGENET_TRAIN / 1e9
    print(
        f"| previous: centre square | {SIZE} | {3 * SIZE * SIZE / 1e6:.2f} MB, {3 * SIZE * SIZE / 1e6:.2f} MB | "
        f"{projected:,.0f} GB | {np.mean([e for e, _ in results]):.2f} | (all cut from 224 px) | "
        f"{100 * np.mean([a for _, a in results]):.1f} % |"
    )


if __name__ == "__main__":
    main()
