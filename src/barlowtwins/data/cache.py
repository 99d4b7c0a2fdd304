"""Decoded-image store: a dataset decoded once into one flat uint8 buffer of images, in memory or on disk.

Training reads the same images every epoch; decoding JPEGs and running PIL per sample costs CPU the model needs.
The store decodes each image once and keeps it in one of two shapes:

* ``square``: the test-time view's input, shorter side resized to S then a centre crop S x S (``stored_image``);
  every row has one shape, so batches are slices of an (N, S, S, 3) array;
* ``full``: the whole image at its own aspect ratio, shorter side reduced to at most S and never enlarged
  (``stored_full``), with its original size, so training crops are drawn on the original image (paper §2.2,
  torchvision's ``RandomResizedCrop``) and only its resolution is capped.

Rows lie back to back in one buffer; ``index`` gives each row's offset, stored and original height and width.
On disk an entry is the directory ``<cache_dir>/<key>/`` (images.u8, index.npy, labels.npy, ids.json, meta.json),
built in a temporary directory beside it and renamed into place when complete, so a reader never sees a partial
entry and later runs memory-map it without decoding anything.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from barlowtwins.atomic import atomic_write_text
from barlowtwins.data.decode import to_rgb
from barlowtwins.errors import BarlowTwinsError

FORMAT = "barlowtwins-decoded/2"
IMAGES, INDEX, LABELS, IDS, META = "images.u8", "index.npy", "labels.npy", "ids.json", "meta.json"
OFFSET, HEIGHT, WIDTH, ORIGINAL_HEIGHT, ORIGINAL_WIDTH = range(5)  # the columns of ``index``

LONG_SIDE = 3  # a stored image's longer side is at most this many times the cap on its shorter side
Sample = tuple[Image.Image, int | None, str]
Stored = tuple[np.ndarray, tuple[int, int]]  # a row as stored (h, w, 3) and the original (height, width)


def stored_bytes(count: int, size: int) -> int:
    """Bytes that ``count`` RGB images stored at ``size``×``size`` take, in memory or on disk."""
    return count * size * size * 3


def stored_image(image: Image.Image, size: int) -> np.ndarray:
    """``image`` as RGB uint8 (size, size, 3): shorter side resized to ``size`` (PIL bicubic), centre crop.

    Sizes and crop offsets follow torchvision's ``Resize(size)`` + ``CenterCrop(size)``. An image that is
    already ``size``×``size`` is not resampled, so CIFAR-10 stored at 32 keeps its pixels exactly.
    """
    image = to_rgb(image, "an image")
    width, height = image.size
    if (width, height) != (size, size):
        if width <= height:
            width, height = size, int(size * height / width)
        else:
            width, height = int(size * width / height), size
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def stored_full(image: Image.Image, size: int) -> Stored:
    """The whole ``image`` as RGB uint8 (h, w, 3) and its original (height, width): reduced (PIL bicubic,
    antialiased) to a shorter side of at most ``size`` and a longer side of at most ``LONG_SIDE`` x ``size``,
    never enlarged. A stored image takes at most 3 x LONG_SIDE x size^2 bytes."""
    image = to_rgb(image, "an image")
    width, height = image.size
    shape = full_shape(height, width, size)
    if shape != (height, width):
        image = image.resize(shape[::-1], Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.uint8), (height, width)  # writable: loaders wrap it in a tensor


def full_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) that ``stored_full`` keeps of a height x width image."""
    scale = min(1.0, size / min(height, width), LONG_SIDE * size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True, eq=False)
class DecodedImages:
    """Decoded images back to back in ``pixels`` (uint8; an ``np.memmap`` when on disk), their ``index`` (int64
    (N, 5): offset, stored height and width, original height and width), int64 labels (-1: unlabelled), ids."""

    pixels: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Row ``i`` as stored, (h, w, 3) uint8 (a view, no copy)."""
        offset, height, width = (int(v) for v in self.index[i, :3])
        return self.pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def original_size(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i`` before it was stored."""
        return int(self.index[i, ORIGINAL_HEIGHT]), int(self.index[i, ORIGINAL_WIDTH])

    @functools.cached_property
    def shape(self) -> tuple[int, int] | None:
        """The (height, width) every row shares, or None when rows differ."""
        shapes = self.index[:, HEIGHT : WIDTH + 1]
        return (int(shapes[0, 0]), int(shapes[0, 1])) if (shapes == shapes[:1]).all() else None

    @functools.cached_property
    def resized(self) -> bool:
        """Whether any row is stored at another size than its original."""
        return bool((self.index[:, HEIGHT : WIDTH + 1] != self.index[:, ORIGINAL_HEIGHT:]).any())

    @property
    def images(self) -> np.ndarray:
        """All rows as one (N, h, w, 3) array (no copy); only when every row has one shape."""
        if self.shape is None:
            raise ValueError("the stored images differ in shape; read them one at a time with image(i)")
        return self.pixels[: len(self) * self.shape[0] * self.shape[1] * 3].reshape(len(self), *self.shape, 3)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The rows ``indices`` (1-D) as a contiguous channels-first uint8 tensor (B, 3, H, W) (one shape only)."""
        rows = self.images[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))  # ~20x faster than torch's permute


def decode_all(
    samples: Iterable[Sample],
    count: int,
    size: int,
    cache_dir: str | Path | None = None,
    key: str | None = None,
    progress: str | None = "decoding",
    square: bool = True,
) -> DecodedImages:
    """Decode ``count`` (image, label, id) samples, ``square`` (``stored_image``) or ``full`` (``stored_full``) at
    size ``size``, in memory or cached on disk. An image may come already stored (``stored_image``'s array, or
    ``stored_full``'s pair), as loader workers hand them over.

    With ``cache_dir``, the entry ``cache_dir/key`` is opened (memory-mapped, read-only) if complete, without
    consuming ``samples``; otherwise it is built. Processes sharing a cache build an entry once (a file lock).
    A label of None is stored as -1.
    """
    if count < 1 or size < 1:
        raise BarlowTwinsError(f"cannot cache {count} images at {size} px; count and size must be positive")
    if cache_dir is None:
        rows: list[np.ndarray] = []
        index, labels, ids = _decode_into(rows.append, samples, count, size, square, progress)
        return DecodedImages(np.concatenate(rows) if rows else np.empty(0, np.uint8), index, labels, ids)
    if not key or key.startswith(".") or Path(key).name != key:
        raise ValueError(f"cache key {key!r} must be a plain directory name, e.g. from cache_key()")
    entry = Path(cache_dir).expanduser() / key
    found = _open_entry(entry, count, size, square)
    if found is not None:
        return found
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry.parent / f".{key}.lock"):
        found = _open_entry(entry, count, size, square)
        if found is None:
            _build(entry, samples, count, size, square, progress)
            found = _open_entry(entry, count, size, square)
    assert found is not None, f"{entry} was just built but does not open"
    return found


def _decode_into(
    put: Callable[[np.ndarray], object],
    samples: Iterable[Sample],
    count: int,
    size: int,
    square: bool,
    progress: str | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode the samples, handing each flat row to ``put`` in order; returns index, labels and ids."""
    index = np.zeros((count, 5), dtype=np.int64)
    labels = np.empty(count, dtype=np.int64)
    ids: list[str] = []
    offset = 0
    disable = progress is None or not sys.stderr.isatty()
    with tqdm(total=count, desc=progress, unit="img", disable=disable, leave=False, dynamic_ncols=True) as bar:
        for i, (image, label, sample_id) in enumerate(samples):
            if i == count:
                raise BarlowTwinsError(
                    f"the samples hold more than count={count} images; pass the dataset's true size as count"
                )
            row, original = _row(image, size, square, sample_id)
            put(row.reshape(-1))
            index[i] = (offset, row.shape[0], row.shape[1], *original)
            offset += row.size
            labels[i] = -1 if label is None else int(label)
            ids.append(str(sample_id))
            bar.update()
    if len(ids) != count:
        raise BarlowTwinsError(
            f"the samples hold {len(ids)} images, not count={count}; pass the dataset's true size as count"
        )
    return index, labels, ids


def _row(image, size: int, square: bool, sample_id: str) -> Stored:
    """One sample as stored, with its original size; a BarlowTwinsError naming the sample when it is not an
    RGB image. A row already stored by a loader worker is taken as it is."""
    if square and isinstance(image, np.ndarray) and image.shape == (size, size, 3) and image.dtype == np.uint8:
        return image, (size, size)  # the original size of a centre crop is not kept: the crop is the image
    if not square and isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], np.ndarray):
        return np.ascontiguousarray(image[0], dtype=np.uint8), tuple(image[1])
    if not isinstance(image, Image.Image):
        raise BarlowTwinsError(
            f"sample {sample_id!r} is a {type(image).__name__}, not a PIL image; decode images with PIL.Image.open"
        )
    try:
        row, original = (stored_image(image, size), (size, size)) if square else stored_full(image, size)
    except (OSError, ValueError, BarlowTwinsError) as error:
        raise BarlowTwinsError(f"sample {sample_id!r} cannot be decoded as RGB ({error}); fix or drop it") from None
    if row.ndim != 3 or row.shape[2] != 3:
        raise BarlowTwinsError(
            f"sample {sample_id!r} is not RGB after conversion (array {row.shape}); convert it to 8-bit RGB first"
        )
    return row, original


def _build(entry: Path, samples: Iterable[Sample], count: int, size: int, square: bool, progress: str | None) -> None:
    """Decode into ``.<key>.building`` beside ``entry``, then rename it to ``entry`` (caller holds the lock)."""
    building = entry.with_name(f".{entry.name}.building")
    shutil.rmtree(building, ignore_errors=True)  # left by a killed build: no live builder, we hold the lock
    needed, free = stored_bytes(count, size) if square else 0, shutil.disk_usage(entry.parent).free
    if needed > free:
        raise BarlowTwinsError(
            f"the decoded cache needs {needed / 1e9:.2f} GB in {entry.parent} but {free / 1e9:.2f} GB are free; "
            "free space or choose another cache directory"
        )
    building.mkdir()
    try:
        with open(building / IMAGES, "wb") as handle:
            index, labels, ids = _decode_into(
                lambda row: handle.write(row.tobytes()), samples, count, size, square, progress
            )
            handle.flush()
            os.fsync(handle.fileno())
        for name, array in ((INDEX, index), (LABELS, labels)):
            with open(building / name, "wb") as handle:
                np.save(handle, array)
                handle.flush()
                os.fsync(handle.fileno())
        atomic_write_text(json.dumps(ids), building / IDS)
        total = int(index[-1, OFFSET] + index[-1, HEIGHT] * index[-1, WIDTH] * 3)
        meta = {"format": FORMAT, "key": entry.name, "count": count, "size": size, "square": square, "bytes": total}
        atomic_write_text(json.dumps(meta, indent=2) + "\n", building / META)
        if entry.exists():
            shutil.rmtree(entry)  # damaged or of an older format; _open_entry rejected it
        os.replace(building, entry)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise BarlowTwinsError(
            f"cannot write the decoded cache in {entry.parent} ({error.strerror}); free space or choose another "
            "cache directory (data.cache_dir), or data.cache=off to decode every step"
        ) from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _open_entry(entry: Path, count: int, size: int, square: bool) -> DecodedImages | None:
    """The complete entry at ``entry`` memory-mapped read-only, or None when it is absent, damaged or outdated."""
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if (meta.get("count"), meta.get("size"), meta.get("square")) != (count, size, square):
        raise BarlowTwinsError(
            f"cache entry {entry} holds {meta.get('count')} images at {meta.get('size')} px, not {count} at {size}; "
            "derive the key with cache_key() from the data and the size, or delete the entry"
        )
    try:
        total = int(meta["bytes"])
        if (entry / IMAGES).stat().st_size != total:
            return None
        pixels = np.memmap(entry / IMAGES, dtype=np.uint8, mode="r", shape=(total,))
        index, labels = np.load(entry / INDEX), np.load(entry / LABELS)
        ids = json.loads((entry / IDS).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if index.shape != (count, 5) or labels.shape != (count,) or labels.dtype != np.int64:
        return None
    if not isinstance(ids, list) or len(ids) != count:
        return None
    return DecodedImages(pixels, index, labels, ids)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: concurrent processes (one per GPU, say) then build an entry once.

    The holder removes the file before letting go, so none is left in the cache directory, whether the build
    worked or failed; a process that waited on a file removed meanwhile locks a fresh one instead."""
    while True:
        handle = open(path, "a")  # noqa: SIM115 (closed below, after the file is removed)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _same_file(path, handle.fileno()):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the file this lock was on is gone: its holder finished
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd``."""
    try:
        found, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def cache_key(description: str, files: Sequence[str | Path], size: int, square: bool = True) -> str:
    """A 16-hex-digit key for decoded content: the description, each file's absolute path, byte size and mtime
    (a rewritten shard changes it), the stored size and shape. Files count in the given order, the order of rows."""
    stats = []
    for file in files:
        path = Path(file).expanduser().resolve()
        try:
            stat = path.stat()
        except OSError as error:
            raise BarlowTwinsError(f"cannot key the cache on {file} ({error.strerror}); check the path") from None
        stats.append([str(path), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"format": FORMAT, "description": description, "files": stats, "size": size, "square": square})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$BARLOWTWINS_CACHE if set, else $XDG_CACHE_HOME/barlowtwins, else ~/.cache/barlowtwins."""
    if os.environ.get("BARLOWTWINS_CACHE"):
        return Path(os.environ["BARLOWTWINS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "barlowtwins"
