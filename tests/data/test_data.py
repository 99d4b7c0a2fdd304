"""Data readers: folders, WebDataset shards (pattern or paths), digits, sampler, and their errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from barlowtwins import BarlowTwinsError, TwoViews
from barlowtwins.data import batches, digits, open_source, training_batches
from barlowtwins.data.loaders import ShardedEpochSampler
from barlowtwins.data.shards import read_samples, shard_index
from barlowtwins.errors import BarlowTwinsError as Error

CPU = torch.device("cpu")


def png_bytes(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(directory: Path, per_shard: list[int], with_labels: bool = True) -> list[str]:
    paths, index = [], 0
    for shard, count in enumerate(per_shard):
        path = directory / f"toy-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for _ in range(count):
                sample = {"__key__": f"s{index:05d}", "png": png_bytes(index % 256)}
                if with_labels:
                    sample["cls"] = str(index % 3).encode()
                sink.write(sample)
                index += 1
        paths.append(str(path))
    return paths


def test_image_folder_tree_gives_class_labels(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name / "nested").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (6, 6), (label * 100, i, 0)).save(tmp_path / name / "nested" / f"{i}.jpg")
    source = open_source([str(tmp_path)])
    assert source.num_samples == 6
    assert sorted(source.samples[i][1] for i in range(6)) == [0, 0, 0, 1, 1, 1]
    assert source.samples.classes == ["cat", "dog"]
    image, _, sample_id = source.samples[0]
    assert sample_id.endswith("cat/nested/0.jpg")
    assert image.mode == "RGB" and image.size == (6, 6)


def test_flat_folder_of_images_is_unlabelled(tmp_path):
    for i in range(4):
        Image.new("L", (5, 5), i).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source([str(tmp_path)])
    assert source.num_samples == 4 and {source.samples[i][1] for i in range(4)} == {-1}
    assert source.samples[0][0].mode == "RGB"


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    source = open_source([str(tmp_path)])
    with pytest.raises(BarlowTwinsError, match=r"cannot read image .*broken\.jpg"):
        source.samples[0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [("/no/such/dir", "no such file or directory"), ("/no/such/shards-{0..3}.tar", "shard not found")],
)
def test_missing_paths_are_clear_errors(entry, message):
    with pytest.raises(BarlowTwinsError, match=message):
        open_source([entry])


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BarlowTwinsError, match="contains no images"):
        open_source([str(tmp_path)])


def test_torchvision_set_missing_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(BarlowTwinsError, match="--download"):
        open_source(["cifar10"], root=str(tmp_path))


def test_shards_by_brace_pattern_or_by_expanded_paths_are_the_same(tmp_path):
    paths = write_shards(tmp_path, [5, 7, 4])
    pattern = str(tmp_path / "toy-{000000..000002}.tar")
    by_pattern, by_paths = open_source([pattern]), open_source(paths)
    assert by_pattern.shards == by_paths.shards == paths
    assert by_pattern.num_samples == by_paths.num_samples == 16
    assert [len(shard_index(p)) for p in paths] == [5, 7, 4]


def test_evaluation_loader_reads_every_shard_sample_once_with_labels(tmp_path):
    source = open_source(write_shards(tmp_path, [5, 7, 4]))
    loader = batches(source, lambda im: torch.tensor(np.asarray(im)[0, 0, 0]), 4, workers=2, device=CPU)
    rows = [row for images, targets, ids in loader for row in zip(images.tolist(), targets.tolist(), ids)]
    values, labels, ids = zip(*rows)
    assert sorted(values) == list(range(16))
    assert all(label == value % 3 for value, label in zip(values, labels))
    assert all(key == f"s{value:05d}" for value, key in zip(values, ids))  # each row keeps its sample's key


def test_evaluation_loader_with_more_workers_than_shards(tmp_path):
    source = open_source(write_shards(tmp_path, [5]))
    loader = batches(source, lambda im: 0, 2, workers=3, device=CPU)
    assert sum(len(targets) for _, targets, _ in loader) == 5


def test_unlabelled_shards_get_minus_one(tmp_path):
    source = open_source(write_shards(tmp_path, [3], with_labels=False))
    loader = batches(source, lambda im: 0, 8, workers=0, device=CPU)
    assert [y for _, targets, _ in loader for y in targets.tolist()] == [-1, -1, -1]


def test_limit_on_shards_keeps_the_first_samples_in_memory(tmp_path):
    paths = write_shards(tmp_path, [5, 7])
    source = open_source(paths, limit=6)  # crosses into the second shard
    assert source.samples is not None and source.num_samples == 6
    assert [int(np.asarray(source.samples[i][0])[0, 0, 0]) for i in range(6)] == list(range(6))
    assert source.samples.ids == [f"s{i:05d}" for i in range(6)] and source.samples.labels.tolist() == [0, 1, 2] * 2
    assert [sample.key for sample in read_samples(paths, limit=3)] == ["s00000", "s00001", "s00002"]
    assert [sample.key for sample in read_samples(paths, keys={"s00007", "s00001"})] == ["s00001", "s00007"]


def test_training_batches_from_shards_have_full_batches(tmp_path):
    source = open_source(write_shards(tmp_path, [9, 9]))
    two_views = TwoViews(lambda im: torch.zeros(3, 4, 4), lambda im: torch.ones(3, 4, 4))
    stream = training_batches(source, two_views, batch_size=4, workers=2, seed=0, device=CPU)
    for _ in range(10):  # more than one pass over the 18 samples
        (view_a, view_b), labels, _ = next(stream)
        assert view_a.shape == view_b.shape == (4, 3, 4, 4) and labels.shape == (4,)
        assert view_a.sum() == 0 and view_b.min() == 1


def test_training_batches_cover_an_epoch_without_repeats():
    source = open_source(["digits"], limit=64)
    stream = training_batches(source, lambda im: torch.zeros(1), batch_size=16, workers=0, seed=3, device=CPU)
    first_epoch = [next(stream) for _ in range(4)]
    assert all(images.shape == (16, 1) for images, _, _ in first_epoch)
    assert len({i for _, _, ids in first_epoch for i in ids}) == 64  # every sample once


def test_sampler_splits_processes_disjointly_and_resumes_exactly():
    per_rank = []
    for rank in range(3):
        sampler = ShardedEpochSampler(100, batch_size=8, seed=1)
        sampler.rank, sampler.world = rank, 3
        sampler.set_epoch(4)
        per_rank.append([index for index, _ in sampler])
    assert all(len(indices) == 32 for indices in per_rank)  # 100 // 3 = 33 -> 4 full batches of 8
    assert len(set().union(*map(set, per_rank))) == 96
    resumed = ShardedEpochSampler(100, batch_size=8, seed=1)
    resumed.rank, resumed.world = 0, 3
    resumed.set_epoch(4, skip_batches=2)
    assert [index for index, _ in resumed] == per_rank[0][16:]
    other_epoch = ShardedEpochSampler(100, batch_size=8, seed=1)
    other_epoch.set_epoch(5)
    assert [index for index, _ in other_epoch] != per_rank[0]


def test_augmentations_depend_on_seed_epoch_and_index_only():
    source = open_source(["digits"], limit=32)

    def random_numbers(image):
        return torch.rand(3)

    def epoch_batches(workers, epoch):
        stream = training_batches(
            source, random_numbers, batch_size=8, workers=workers, seed=0, device=CPU, start_epoch=epoch
        )
        return torch.cat([next(stream)[0] for _ in range(4)])

    in_process, in_workers = epoch_batches(0, 0), epoch_batches(2, 0)
    torch.testing.assert_close(in_process, in_workers)  # the worker count does not change the views
    assert not torch.allclose(in_process, epoch_batches(0, 1))  # a new epoch draws new views


def test_digits_split_is_stratified_disjoint_and_fixed():
    train, test = digits("train"), digits("test")
    assert len(train) == 1500 and len(test) == 297
    assert np.bincount(test.labels).min() >= 28  # every class about 297 / 10
    train_rows = {img.tobytes() for img in train.images.array}
    overlap = sum(img.tobytes() in train_rows for img in test.images.array)
    assert overlap <= 3  # load_digits holds a few duplicate images; the split itself is disjoint by index
    assert np.array_equal(digits("test").labels, test.labels)
    image, label, _ = train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label <= 9


def test_two_entries_that_are_not_shards_are_rejected():
    with pytest.raises(Error, match="one folder or dataset name"):
        open_source(["digits", "digits:test"])
