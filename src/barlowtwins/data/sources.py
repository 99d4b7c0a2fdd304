"""What ``--data`` names, opened as an :class:`ImageSource`: image folders, shards, torchvision sets, digits.

Every sample has an image, a label (-1 where the data has none; only evaluation reads labels) and an id
that names it in subset and label files: the file path for folders, the WebDataset key for shards, the
position for in-memory sets. ``--data`` accepts:

* a directory: an ImageFolder tree (``class/img.jpg``, ImageNet layout), or a flat folder of images;
* WebDataset shards: a brace pattern (``train-{000000..000009}.tar``, quoted) or the list of paths an
  unquoted pattern expands to;
* ``cifar10``, ``cifar100``, ``stl10`` (torchvision; ``:test`` for the test split, STL-10's unlabeled
  split by default, ``stl10:train`` for its labelled one) and ``digits`` / ``digits:test``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from barlowtwins.data.decode import decode, open_image, to_rgb
from barlowtwins.data.shards import EncodedSample, decode_image, expand_shards, read_samples, shard_index
from barlowtwins.errors import BarlowTwinsError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TORCHVISION_SETS = ("cifar10", "cifar100", "stl10")
DIGITS_TEST_SIZE = 297  # a stratified sixth of the 1,797 digits, fixed by seed 0


# --- where the pixels of a map-style set come from: index -> RGB PIL image ---


# ``images[i]`` is the decoded RGB image; ``images.open(i)`` may instead open it lazily (header read, pixels not
# decoded), so a crop can ask for a reduced-size decode (data.decode.reduce_for).


class FileImages:
    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __getitem__(self, index: int) -> Image.Image:
        return decode(self.paths[index], self.paths[index])

    def open(self, index: int) -> Image.Image:
        return open_image(self.paths[index], self.paths[index])


class ArrayImages:
    """uint8 arrays (N, H, W) or (N, H, W, 3) held in memory."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.array[index]).convert("RGB")  # uint8 grey or RGB: nothing to get wrong


class EncodedImages:
    def __init__(self, samples: Sequence[EncodedSample]):
        self.samples = list(samples)

    def __getitem__(self, index: int) -> Image.Image:
        sample = self.samples[index]
        return decode_image(sample.image, f"{sample.key} in {sample.shard}")

    def open(self, index: int) -> Image.Image:
        sample = self.samples[index]
        return open_image(sample.image, f"{sample.key} in {sample.shard}")


class TorchvisionImages:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, index: int) -> Image.Image:
        return to_rgb(self.dataset[index][0], f"sample {index}")


class Picked:
    def __init__(self, images, indices: Sequence[int]):
        self.images = images
        self.indices = list(indices)

    def __getitem__(self, index: int) -> Image.Image:
        return self.images[self.indices[index]]

    def open(self, index: int) -> Image.Image:
        return lazily(self.images, self.indices[index])


def lazily(images, index: int) -> Image.Image:
    """Image ``index`` of a provider, opened lazily where the provider can, else decoded."""
    return images.open(index) if hasattr(images, "open") else images[index]


class Samples(Dataset):
    """A map-style set: ``samples[i]`` is ``(RGB PIL image, label, id)``; labels and ids need no decoding."""

    def __init__(self, images, labels: Sequence[int], ids: Sequence[str], classes: list[str] | None = None):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids)
        self.classes = classes
        if not len(self.labels) == len(self.ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, str]:
        return self.images[index], int(self.labels[index]), self.ids[index]

    def open(self, index: int) -> Image.Image:
        """Image ``index``, lazily opened when its provider can (files, encoded bytes), else decoded."""
        return lazily(self.images, index)

    def subset(self, indices: Sequence[int]) -> Samples:
        indices = list(indices)
        picked = [self.ids[i] for i in indices]
        return Samples(Picked(self.images, indices), self.labels[indices], picked, self.classes)


@dataclass
class ImageSource:
    """What ``--data`` named: map-style ``samples``, or WebDataset ``shards`` streamed at training time."""

    description: str
    num_samples: int
    samples: Samples | None = None
    shards: list[str] | None = None


def in_memory(samples: Samples, description: str) -> ImageSource:
    return ImageSource(f"{description}, {len(samples)} samples", len(samples), samples)


def digits(split: str = "train") -> Samples:
    """scikit-learn's 1,797 real 8x8 handwritten digits (bundled, no download), split 1,500 / 297."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=DIGITS_TEST_SIZE, stratify=bunch.target, random_state=0
    )
    index = train_idx if split == "train" else test_idx
    return Samples(ArrayImages(images[index]), bunch.target[index], [str(i) for i in range(len(index))])


def _torchvision_set(name: str, split: str, root: str, download: bool) -> Samples:
    import torchvision

    try:
        if name == "stl10":
            stl_split = {"train": "train", "test": "test", "unlabeled": "unlabeled"}[split]
            dataset = torchvision.datasets.STL10(root, split=stl_split, download=download)
            labels = dataset.labels
        else:
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            dataset = cls(root, train=split == "train", download=download)
            labels = dataset.targets
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise BarlowTwinsError(
            f"{name} ({split}) not found under '{root}' ({error}); pass --download to fetch it, "
            "or --data-root to point at an existing copy"
        ) from None
    return Samples(TorchvisionImages(dataset), labels, [str(i) for i in range(len(dataset))])


def _folder(path: Path) -> Samples:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    if subdirs:
        for label, directory in enumerate(subdirs):
            for root, _, files in sorted(os.walk(directory, followlinks=True)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        paths.append(os.path.join(root, name))
                        labels.append(label)
    else:
        paths = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS))
        labels = [-1] * len(paths)
    if not paths:
        raise BarlowTwinsError(
            f"{path} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)} in it or its class folders)"
        )
    return Samples(FileImages(paths), labels, paths, [d.name for d in subdirs] or None)


def _encoded(samples: list[EncodedSample]) -> Samples:
    return Samples(EncodedImages(samples), [s.label for s in samples], [s.key for s in samples])


def open_source(
    entries: Sequence[str], root: str = "data", download: bool = False, limit: int = 0, what: str = "--data"
) -> ImageSource:
    """Resolve what the user passed as ``--data`` (or ``--eval-data``) into an :class:`ImageSource`.

    ``limit`` keeps only the first N samples (for shards these are read once into memory).
    """
    if not entries:
        raise BarlowTwinsError(f"{what} is empty; pass an image folder, shard pattern or dataset name")
    if all(".tar" in entry for entry in entries):
        shards = expand_shards(entries)
        if limit:
            samples = _encoded(read_samples(shards, limit=limit))
            return in_memory(samples, f"first {len(samples)} samples of {len(shards)} shards")
        total = sum(len(shard_index(s)) for s in shards if "://" not in s)
        if total == 0:
            raise BarlowTwinsError(f"{what}: the shards hold no images ({entries[0]} ...)")
        return ImageSource(f"{len(shards)} WebDataset shards, {total} samples", total, shards=shards)
    if len(entries) > 1:
        raise BarlowTwinsError(f"{what} takes one folder or dataset name, or shard paths; got {list(entries)}")
    entry = entries[0]
    name, _, split = entry.partition(":")
    if name == "digits" and not Path(entry).exists():
        samples, description = digits(split or "train"), f"digits ({split or 'train'})"
    elif name in TORCHVISION_SETS and not Path(entry).exists():
        split = split or ("unlabeled" if name == "stl10" else "train")
        samples, description = _torchvision_set(name, split, root, download), f"{name} ({split})"
    else:
        path = Path(entry)
        if not path.exists():
            raise BarlowTwinsError(
                f"{what}: no such file or directory: {entry}; pass an image folder, .tar shards, or one of "
                f"{', '.join(('digits', *TORCHVISION_SETS))}"
            )
        if not path.is_dir():
            raise BarlowTwinsError(f"{what}: {entry} is a file; pass its folder, or .tar shards")
        samples, description = _folder(path), f"image folder {entry}"
    if limit:
        samples = samples.subset(range(min(limit, len(samples))))
    return in_memory(samples, description)


def sample_index(source: ImageSource) -> tuple[list[str], np.ndarray]:
    """``(ids, labels)`` of every sample, in the order of a single-process ordered pass, without decoding."""
    if source.samples is not None:
        return source.samples.ids, source.samples.labels
    pairs = [pair for shard in source.shards for pair in shard_index(shard)]
    return [key for key, _ in pairs], np.asarray([label for _, label in pairs], dtype=np.int64)


def select_samples(source: ImageSource, indices: Sequence[int], description: str) -> ImageSource:
    """A map-style source holding only the samples at ``indices`` (positions in :func:`sample_index`).

    Shard samples are read once into memory as encoded bytes (fine for labelled subsets: 10% of ImageNet
    is about 14 GB of JPEGs, so use an image folder for that scale).
    """
    indices = sorted(set(int(i) for i in indices))
    if source.samples is not None:
        return in_memory(source.samples.subset(indices), description)
    ids, _ = sample_index(source)
    return in_memory(_encoded(read_samples(source.shards, keys={ids[i] for i in indices})), description)
