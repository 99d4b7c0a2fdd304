"""WebDataset shards: the one tar reader, and the one stage that decodes a streamed sample.

A sample is the tar members sharing a key (the path up to the first dot of the file name): an image
(``KEY.jpg``/``png``/...) and optionally a label (``KEY.cls``). The reader walks tar headers and reads
only the members asked for, so indexing a shard never decodes an image.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from braceexpand import UnbalancedBracesError, braceexpand
from PIL import Image

from barlowtwins.data.decode import decode
from barlowtwins.errors import BarlowTwinsError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
LABEL_KEYS = ("cls", "label", "target")


class EncodedSample(NamedTuple):
    key: str
    shard: str
    image: bytes
    label: int  # -1: none


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Brace-expand each pattern and check that every local shard exists."""
    try:
        shards = [url for pattern in patterns for url in braceexpand(pattern)]
    except UnbalancedBracesError as error:
        shown = " ".join(patterns)
        raise BarlowTwinsError(f"shard pattern {shown}: {error}; write ranges as {{000000..000009}}") from None
    for shard in shards:
        if "://" not in shard and not Path(shard).is_file():
            raise BarlowTwinsError(f"shard not found: {shard}; check the path and the {{a..b}} range")
    return shards


def sample_key(member_name: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``), the WebDataset convention."""
    directory, _, filename = member_name.rpartition("/")
    stem, _, extension = filename.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _label(data: bytes) -> int:
    return int(data.decode().strip())


def read_shard(shard: str, wanted: Callable[[str, str], bool]) -> Iterator[tuple[str, str, bytes | None]]:
    """``(key, extension, payload)`` of every file member in stored order; the payload is read only where
    ``wanted(key, extension)`` says so (None otherwise). Errors name the shard."""
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, extension = sample_key(member.name)
                payload = tar.extractfile(member).read() if wanted(key, extension) else None
                yield key, extension, payload
            _check_complete(tar, shard)
    except (tarfile.TarError, OSError, ValueError) as error:
        raise BarlowTwinsError(f"cannot read shard {shard} ({error}); is it a complete tar file of samples?") from None


def _check_complete(tar: tarfile.TarFile, shard: str) -> None:
    """Stop on a truncated shard (``tarfile`` reads one silently as a shorter archive): an uncompressed tar
    must hold its last member's data and end in zero blocks (the end-of-archive marker)."""
    handle = tar.fileobj
    if not isinstance(handle, io.BufferedReader):  # compressed: the decompressor reports a cut stream itself
        return
    size = Path(shard).stat().st_size
    members = tar.getmembers()
    last = members[-1] if members else None
    cut_member = last is not None and last.offset_data + last.size > size
    handle.seek(tar.offset)
    rest = handle.read()
    if cut_member or len(rest) < 2 * tarfile.BLOCKSIZE or rest.strip(b"\0"):
        where = f"inside {last.name}" if cut_member else f"after {last.name if last else 'its start'}"
        raise BarlowTwinsError(f"shard {shard} is truncated (it ends {where}, {size} bytes); copy or write it again")


def shard_index(shard: str) -> list[tuple[str, int]]:
    """``(key, label or -1)`` of every sample with an image in one local shard, in stored order."""
    has_image: dict[str, bool] = {}  # key -> has an image, in order of first appearance
    labels: dict[str, int] = {}
    try:
        for key, extension, payload in read_shard(shard, lambda _, ext: ext in LABEL_KEYS):
            has_image[key] = has_image.get(key, False) or extension in IMAGE_KEYS
            if payload is not None:
                labels[key] = _label(payload)
    except ValueError as error:
        raise BarlowTwinsError(f"cannot index shard {shard} (a label is not an integer: {error})") from None
    return [(key, labels.get(key, -1)) for key, image in has_image.items() if image]


def read_samples(shards: Sequence[str], keys: Collection[str] | None = None, limit: int = 0) -> list[EncodedSample]:
    """The encoded samples whose key is in ``keys`` (or the first ``limit`` samples), in shard order."""
    images: dict[str, tuple[str, bytes]] = {}
    labels: dict[str, int] = {}
    seen: set[str] = set()

    def wanted(key: str, extension: str) -> bool:
        return (keys is None or key in keys) and (extension in IMAGE_KEYS or extension in LABEL_KEYS)

    for shard in shards:
        for key, extension, payload in read_shard(shard, wanted):
            if keys is None and key not in seen and len(images) >= limit:
                return _complete(images, labels)  # the first key past the limit: the earlier samples are whole
            seen.add(key)
            if payload is None:
                continue
            if extension in IMAGE_KEYS and key not in images:
                images[key] = (shard, payload)
            elif extension in LABEL_KEYS:
                labels[key] = _label(payload)
    return _complete(images, labels)


def _complete(images: dict[str, tuple[str, bytes]], labels: dict[str, int]) -> list[EncodedSample]:
    return [EncodedSample(key, shard, data, labels.get(key, -1)) for key, (shard, data) in images.items()]


def decode_image(encoded: bytes, where: str) -> Image.Image:
    """A shard's image bytes as 8-bit RGB (``data.decode``: 16-bit and CMYK images come out right)."""
    return decode(encoded, where)


def decode_sample(sample: dict) -> tuple[Image.Image, int, str]:
    """A streamed WebDataset sample dict -> ``(RGB image, label or -1, key)``."""
    where = f"{sample.get('__key__')} in {sample.get('__url__')}"
    encoded = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if encoded is None:
        raise BarlowTwinsError(f"sample {where} has no image (expected one of {', '.join(IMAGE_KEYS)})")
    raw_label = next((sample[k] for k in LABEL_KEYS if k in sample), None)
    return decode_image(encoded, where), _label(raw_label) if raw_label is not None else -1, sample["__key__"]
