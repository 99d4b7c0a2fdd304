"""Atomic file writes: readers see the old file or the complete new one, never a partial write.

Writes go to a temporary file in the same directory, are flushed to disk and then renamed over the old
file, so a crash mid-write (or a full disk) leaves the previous checkpoint, config or report intact.
:func:`rotate_save` also keeps the file it replaces, as a second copy to fall back on.
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
            _write_synced(handle, write)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_synced(handle: IO[bytes], write: Callable[[IO[bytes]], None]) -> None:
    write(handle)
    handle.flush()
    os.fsync(handle.fileno())


def rotation_temporary(path: str | Path) -> Path:
    """Where :func:`rotate_save` writes the new ``path`` first: ``.NAME.next.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.next.tmp")


def rotate_save(obj: Any, path: str | Path, previous: str | Path) -> None:
    """``torch.save`` to ``path`` keeping the file it replaces as ``previous``.

    The new file is written to :func:`rotation_temporary` and flushed to disk; then ``path`` is renamed to
    ``previous`` and the temporary to ``path``. A kill at any moment leaves a complete file to read: ``path``,
    or ``previous`` and the complete temporary between the two renames (``finish_rotation`` in
    :mod:`barlowtwins.checkpoint` completes that save). A failed write removes the temporary and changes nothing.
    """
    path, previous = Path(path), Path(previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = rotation_temporary(path)
    try:
        with open(temporary, "wb") as handle:
            _write_synced(handle, lambda h: torch.save(obj, h))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if path.exists():
        os.replace(path, previous)
    os.replace(temporary, path)
    sync_directory(path.parent)


def sync_directory(directory: str | Path) -> None:
    """Flush a directory's entries (renames) to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
