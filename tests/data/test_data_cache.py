"""Decoded-image cache: stored resolution against torchvision, in-memory and on-disk arrays, reuse without
decoding, crash safety (interrupted and killed builds), cache keys, and the errors a user can hit."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import barlowtwins
from barlowtwins import BarlowTwinsError
from barlowtwins.data.cache import (
    cache_key,
    decode_all,
    default_cache_dir,
    stored_bytes,
    stored_image,
)


def random_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def toy_samples(count: int, sizes: list[tuple[int, int]] | None = None) -> list[tuple[Image.Image, int, str]]:
    sizes = sizes or [(8, 8)]
    return [(random_image(*sizes[i % len(sizes)], seed=i), i % 4, f"key{i:03d}") for i in range(count)]


def never_read():
    raise AssertionError("the cache decoded samples although a complete entry exists")
    yield


def dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def test_square_image_at_the_stored_size_is_kept_exactly():
    image = random_image(32, 32, seed=0)
    np.testing.assert_array_equal(stored_image(image, 32), np.asarray(image))
    gray = random_image(32, 32, seed=1, mode="L")
    expected = np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(stored_image(gray, 32), expected)


@pytest.mark.parametrize(
    "width, height", [(45, 37), (37, 45), (100, 33), (33, 101), (20, 50), (64, 64), (32, 35), (41, 30)]
)
def test_other_images_match_torchvision_resize_and_centre_crop(width, height):
    image = random_image(width, height, seed=width * height)
    reference = transforms.Compose(
        [transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32)]
    )(image)
    stored = stored_image(image, 32)
    assert stored.shape == (32, 32, 3) and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.asarray(reference))


def test_in_memory_decode_stacks_stored_images_and_batches_channels_first():
    samples = toy_samples(9, sizes=[(8, 8), (12, 9), (9, 15)])
    samples[4] = (samples[4][0], None, samples[4][2])
    decoded = decode_all(iter(samples), count=9, size=8, progress=None)
    expected = np.stack([stored_image(image, 8) for image, _, _ in samples])
    assert not isinstance(decoded.images, np.memmap) and len(decoded) == 9
    np.testing.assert_array_equal(decoded.images, expected)
    assert decoded.labels.dtype == np.int64
    assert decoded.labels.tolist() == [0, 1, 2, 3, -1, 1, 2, 3, 0]
    assert decoded.ids == [f"key{i:03d}" for i in range(9)]

    for indices in ([7, 0, 7, 3], np.array([2, 8]), torch.tensor([5, 1, 4])):
        batch = decoded.batch(indices)
        reference = torch.from_numpy(expected[np.asarray(indices)].transpose(0, 3, 1, 2).copy())
        assert batch.dtype == torch.uint8 and batch.is_contiguous()
        torch.testing.assert_close(batch, reference, rtol=0, atol=0)


def test_disk_cache_is_built_once_then_memory_mapped_without_decoding(tmp_path):
    samples = toy_samples(6, sizes=[(8, 8), (10, 13)])
    consumed = []

    def counted():
        for sample in samples:
            consumed.append(sample[2])
            yield sample

    first = decode_all(counted(), count=6, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert len(consumed) == 6
    entry = tmp_path / "toy"
    assert sorted(p.name for p in entry.iterdir()) == ["ids.json", "images.u8", "index.npy", "labels.npy", "meta.json"]
    assert (entry / "images.u8").stat().st_size == stored_bytes(6, 8) == 6 * 8 * 8 * 3
    meta = json.loads((entry / "meta.json").read_text())
    assert (meta["count"], meta["size"], meta["square"], meta["key"]) == (6, 8, True, "toy")
    assert meta["bytes"] == 6 * 8 * 8 * 3
    in_memory = decode_all(iter(samples), count=6, size=8, progress=None)
    np.testing.assert_array_equal(first.images, in_memory.images)

    again = decode_all(never_read(), count=6, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.images, in_memory.images)
    np.testing.assert_array_equal(again.labels, in_memory.labels)
    assert again.ids == in_memory.ids
    torch.testing.assert_close(again.batch([5, 0]), in_memory.batch([5, 0]), rtol=0, atol=0)

    other = decode_all(iter(samples[:3]), count=3, size=8, cache_dir=tmp_path, key="other", progress=None)
    assert dirs(tmp_path) == ["other", "toy"] and len(other) == 3
    np.testing.assert_array_equal(other.images, in_memory.images[:3])


def test_interrupted_build_leaves_no_entry_and_the_next_call_rebuilds(tmp_path):
    samples = toy_samples(5)

    def failing():
        yield from samples[:3]
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        decode_all(failing(), count=5, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert dirs(tmp_path) == []
    decoded = decode_all(iter(samples), count=5, size=8, cache_dir=tmp_path, key="toy", progress=None)
    expected = np.stack([stored_image(image, 8) for image, _, _ in samples])
    np.testing.assert_array_equal(decoded.images, expected)


def run_python(script: str, *args: str) -> subprocess.Popen:
    """Start ``script`` in a fresh interpreter that imports this checkout's barlowtwins."""
    src = str(Path(barlowtwins.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", textwrap.dedent(script), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_build_is_never_taken_as_complete_and_its_leftovers_are_removed(tmp_path):
    script = """
        import os, sys
        from PIL import Image
        from barlowtwins.data.cache import decode_all

        def samples():
            for i in range(10):
                if i == 6:
                    os._exit(3)  # killed mid-build: no cleanup runs
                yield Image.new("RGB", (8, 8), (i, 0, 0)), i, str(i)

        decode_all(samples(), count=10, size=8, cache_dir=sys.argv[1], key="toy", progress=None)
    """
    process = run_python(script, str(tmp_path))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr.decode()
    leftovers = dirs(tmp_path)
    assert "toy" not in leftovers and len(leftovers) == 1  # the partial build, under a temporary name

    samples = [(Image.new("RGB", (8, 8), (i, 0, 0)), i, str(i)) for i in range(10)]
    decoded = decode_all(iter(samples), count=10, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert dirs(tmp_path) == ["toy"]
    assert decoded.images[:, 0, 0, 0].tolist() == list(range(10)) and decoded.labels.tolist() == list(range(10))


def test_concurrent_builders_of_one_entry_decode_it_once(tmp_path, monkeypatch):
    """The first builder holds the lock until the second has found it taken and waits on it: no sleep, no race."""
    samples = toy_samples(5)
    holding, contended, consumed, found_taken = threading.Event(), threading.Event(), [], []
    real_flock = fcntl.flock

    def flock(handle, operation):  # the second builder (this thread) checks that the lock is held, then waits
        if threading.current_thread() is threading.main_thread() and operation == fcntl.LOCK_EX:
            try:
                real_flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found_taken.append(1)
                contended.set()
                real_flock(handle, fcntl.LOCK_EX)
            return
        real_flock(handle, operation)

    def held_until_contended():  # consumed while the first builder holds the lock
        holding.set()
        assert contended.wait(timeout=30)  # the second builder is at the lock: now build
        yield from samples

    def recorded():
        for sample in samples:
            consumed.append(sample[2])
            yield sample

    monkeypatch.setattr(fcntl, "flock", flock)
    results = {}
    first = threading.Thread(
        target=lambda: results.setdefault("first", decode_all(held_until_contended(), 5, 8, tmp_path, "toy", None))
    )
    first.start()
    assert holding.wait(timeout=30)
    second = decode_all(recorded(), 5, 8, tmp_path, "toy", progress=None)
    first.join(timeout=30)
    assert found_taken == [1] and consumed == []  # it waited for the first build, then read it
    np.testing.assert_array_equal(second.images, results["first"].images)
    np.testing.assert_array_equal(second.images, np.stack([stored_image(image, 8) for image, _, _ in samples]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no lock file left


def test_a_failed_build_leaves_no_lock_file(tmp_path, monkeypatch):
    def failing():
        yield from toy_samples(2)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        decode_all(failing(), count=5, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1))
    with pytest.raises(BarlowTwinsError, match="the decoded cache needs 0.00 GB in .* but 0.00 GB are free"):
        decode_all(iter(toy_samples(5)), count=5, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert list(tmp_path.iterdir()) == []


def test_damaged_entry_is_rebuilt(tmp_path):
    samples = toy_samples(4)
    decode_all(iter(samples), count=4, size=8, cache_dir=tmp_path, key="toy", progress=None)
    with open(tmp_path / "toy" / "images.u8", "r+b") as handle:
        handle.truncate(100)
    decoded = decode_all(iter(samples), count=4, size=8, cache_dir=tmp_path, key="toy", progress=None)
    np.testing.assert_array_equal(decoded.images, np.stack([stored_image(image, 8) for image, _, _ in samples]))


def test_cache_key_follows_the_files_the_description_and_the_size(tmp_path, monkeypatch):
    shards = [tmp_path / "a.tar", tmp_path / "b.tar"]
    for shard in shards:
        shard.write_bytes(b"x" * 100)
        os.utime(shard, ns=(1_000_000_000, 1_000_000_000))
    key = cache_key("cifar10 train", shards, 32)
    assert len(key) == 16 and key == cache_key("cifar10 train", [str(p) for p in shards], 32)
    monkeypatch.chdir(tmp_path)
    assert cache_key("cifar10 train", ["a.tar", "b.tar"], 32) == key

    assert cache_key("cifar10 test", shards, 32) != key
    assert cache_key("cifar10 train", shards, 64) != key
    assert cache_key("cifar10 train", shards[::-1], 32) != key
    assert cache_key("cifar10 train", shards[:1], 32) != key

    shards[1].write_bytes(b"y" * 100)  # same size, new content: the mtime tells
    os.utime(shards[1], ns=(1_000_000_000, 2_000_000_000))
    assert cache_key("cifar10 train", shards, 32) != key
    os.utime(shards[1], ns=(1_000_000_000, 1_000_000_000))
    assert cache_key("cifar10 train", shards, 32) == key
    shards[1].write_bytes(b"x" * 101)
    os.utime(shards[1], ns=(1_000_000_000, 1_000_000_000))
    assert cache_key("cifar10 train", shards, 32) != key

    with pytest.raises(BarlowTwinsError, match="missing.tar"):
        cache_key("cifar10 train", [tmp_path / "missing.tar"], 32)


@pytest.mark.parametrize("given, problem", [(3, "hold 3 images, not count=5"), (7, "hold more than count=5 images")])
def test_wrong_count_names_the_problem_and_the_fix(tmp_path, given, problem):
    samples = toy_samples(given)
    with pytest.raises(BarlowTwinsError, match=f"{problem}; pass the dataset's true size as count"):
        decode_all(iter(samples), count=5, size=8, progress=None)
    with pytest.raises(BarlowTwinsError, match=f"{problem}; pass the dataset's true size as count"):
        decode_all(iter(samples), count=5, size=8, cache_dir=tmp_path, key="toy", progress=None)
    assert dirs(tmp_path) == []


def test_other_user_errors(tmp_path):
    with pytest.raises(BarlowTwinsError, match=r"'key001' is a ndarray, not a PIL image"):
        decode_all([(random_image(8, 8, 0), 0, "key000"), (np.zeros((8, 8, 3)), 0, "key001")], 2, 8, progress=None)
    decode_all(iter(toy_samples(4)), count=4, size=8, cache_dir=tmp_path, key="toy", progress=None)
    with pytest.raises(BarlowTwinsError, match=r"holds 4 images at 8 px, not 4 at 16; derive the key with cache_key"):
        decode_all(never_read(), count=4, size=16, cache_dir=tmp_path, key="toy", progress=None)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("BARLOWTWINS_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "barlowtwins"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "barlowtwins"
    monkeypatch.setenv("BARLOWTWINS_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_whole_images_of_several_shapes_are_stored_with_their_original_sizes_and_reopened(tmp_path):
    """The ``full`` store: each image whole at its aspect ratio, shorter side capped (longer side at 3x that;
    never enlarged), its original size kept; on disk, reopened memory-mapped without decoding, row for row."""
    sizes = [(30, 20), (12, 40), (16, 16), (50, 9)]
    samples = toy_samples(8, sizes=sizes)
    in_memory = decode_all(iter(samples), count=8, size=16, progress=None, square=False)
    on_disk = decode_all(iter(samples), count=8, size=16, cache_dir=tmp_path, key="whole", progress=None, square=False)
    again = decode_all(never_read(), count=8, size=16, cache_dir=tmp_path, key="whole", progress=None, square=False)
    assert isinstance(again.pixels, np.memmap) and in_memory.shape is None and in_memory.resized
    for i, (image, _, _) in enumerate(samples):
        width, height = image.size
        scale = min(1.0, 16 / min(width, height), 3 * 16 / max(width, height))  # 50 x 9: the longer side capped
        expected = np.asarray(image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC))
        for store in (in_memory, on_disk, again):
            np.testing.assert_array_equal(store.image(i), expected)
            assert store.original_size(i) == (height, width)
    with pytest.raises(ValueError, match="differ in shape"):
        in_memory.batch([0, 1])
    with pytest.raises(BarlowTwinsError, match="not 8 at 32"):  # the same key for another size is refused
        decode_all(never_read(), count=8, size=32, cache_dir=tmp_path, key="whole", progress=None, square=False)
