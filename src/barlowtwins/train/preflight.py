"""Checks before the first training step: what would otherwise fail at the first batch, or only after training
(the kNN evaluation at the end), fails here, before the run directory is written, as one line naming the fix.
"""

from __future__ import annotations

import numpy as np

from barlowtwins.config import PretrainConfig
from barlowtwins.data import ImageSource, open_source
from barlowtwins.data.shards import shard_index
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import CUSTOM
from barlowtwins.recipes import small_data_recipes


def check_batch_size(batch_size: int, num_samples: int, flag: str = "--batch-size ") -> None:
    """A batch larger than the data gives no step; the error names a batch that fits (set with ``flag``, the
    command's way to set it) and the small-data recipes."""
    if num_samples >= batch_size:
        return
    fits = 2 ** int(np.log2(max(num_samples, 2)))  # the largest power of two within the data
    recipes = " or ".join(
        f"--recipe {name} (batch {batch}, {size} px views)" for name, batch, size in small_data_recipes()
    )
    raise BarlowTwinsError(
        f"batch size {batch_size} is larger than the dataset ({num_samples} samples); pass {flag}{fits} "
        f"(or less), and for a dataset this small a recipe made for small data: {recipes}"
    )


def _known_labels(source: ImageSource) -> np.ndarray | None:
    """Labels readable without decoding: all of a map-style set's, the first local shard's (None: remote)."""
    if source.samples is not None:
        return source.samples.labels
    first = source.shards[0]
    return None if "://" in first else np.asarray([label for _, label in shard_index(first)], dtype=np.int64)


def check_evaluation_data(config: PretrainConfig, source: ImageSource) -> None:
    """What the kNN at the end of pretraining needs (``data.eval`` against the training data as the labelled
    bank): readable evaluation data, labels in both, and the same classes."""
    d = config.data
    if not d.eval:
        return
    test = open_source(d.eval, d.root, d.download, d.eval_limit, what="--eval-data")
    if test.samples is not None and test.num_samples:
        test.samples.open(0)  # the first image opens (a wrong format fails now, not after training)
    if config.model.arch == CUSTOM:
        return  # no kNN at the end: a custom backbone cannot be rebuilt by name
    bank, queries = _known_labels(source), _known_labels(test)
    if bank is not None and not (bank >= 0).any():
        raise BarlowTwinsError(
            f"--eval-data needs labelled training data: the kNN after pretraining uses the training data "
            f"({source.description}) as its labelled bank, and it has no labels; drop --eval-data (then "
            "'barlowtwins knn --train-data LABELLED --test-data ...' on the run), or give --data class sub-folders"
        )
    if queries is not None and not (queries >= 0).any():
        raise BarlowTwinsError(
            f"--eval-data ({test.description}) has no labels, so kNN cannot score it; "
            "pass labelled test data (one sub-folder per class, or shards with .cls) or drop --eval-data"
        )
    _check_classes(source, test, bank, queries)


def _check_classes(source: ImageSource, test: ImageSource, bank, queries) -> None:
    """Labels are class indices: the test data's must name the training data's classes."""
    train_classes = source.samples.classes if source.samples is not None else None
    test_classes = test.samples.classes if test.samples is not None else None
    if train_classes and test_classes and train_classes != test_classes:
        raise BarlowTwinsError(
            f"--eval-data's classes differ from --data's ({len(test_classes)}: {_shown(test_classes)} against "
            f"{len(train_classes)}: {_shown(train_classes)}); kNN matches labels by class index, so give both "
            "the same class sub-folders"
        )
    if source.samples is not None and test.samples is not None and queries.max() > bank.max():
        raise BarlowTwinsError(
            f"--eval-data has {queries.max() + 1} classes, the training data only {bank.max() + 1}; "
            "kNN can only predict classes of its bank: pass test data of the same classes"
        )


def _shown(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
