"""Atomic file writes: readers see the old file or the complete new one, never a partial write.

Writes go to a temporary file in the same directory, are flushed to disk and then renamed over the old
file, so a crash mid-write (or a full disk) leaves the previous checkpoint, config or report intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(handle)`` to a temporary file beside ``path``, flush it to disk, rename it over
    ``path``: readers see either the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete the temporary files that writes killed mid-way left in ``directory`` (call it only while no
    other process writes there, e.g. holding the run's lock); returns the bytes freed."""
    freed = 0
    for leftover in Path(directory).glob(".*.tmp"):
        freed += leftover.stat().st_size
        leftover.unlink(missing_ok=True)
    return freed
