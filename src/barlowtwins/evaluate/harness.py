"""The one evaluation harness every protocol goes through, kNN included.

It loads the weights to evaluate and, beside them, the same architecture at its random initialisation
(for our runs the run's own initial weights) and optionally ``--baseline-weights``, so each number comes
with its floor; it resolves the test-time image settings (flags, else the checkpoint's pretraining
values, else by stem), opens the data, and writes a JSON report with every setting, the data, the
numbers and the run metadata, with a ``.log`` of what was logged beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from barlowtwins.atomic import atomic_write_text
from barlowtwins.checkpoint import load_backbone
from barlowtwins.config import IMAGENET_MEAN, IMAGENET_STD, EvalInputs
from barlowtwins.data import ImageSource, open_source, resolve_workers
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.runtime import run_metadata, select_device
from barlowtwins.validation import check_ranges
from barlowtwins.views import eval_transform

logger = logging.getLogger(__name__)


class Subject(NamedTuple):
    """One backbone to evaluate, its feature width, and what it is (weights file, architecture, seed)."""

    backbone: nn.Module
    dim: int
    info: dict[str, Any]


@dataclass(frozen=True)
class ImageSettings:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_ratio: float

    def transform(self):
        """B.1's test-time view: resize to ``image_size * resize_ratio``, centre crop, normalise."""
        return eval_transform(self.image_size, self.mean, self.std, self.resize_ratio)


def image_settings(inputs: EvalInputs, info: dict[str, Any]) -> ImageSettings:
    """Flags, else the checkpoint's pretraining values (``info["images"]``), else 32 px (small stem) or 224."""
    saved = info.get("images", {})
    return ImageSettings(
        inputs.image_size or saved.get("image_size") or (32 if info["small_stem"] else 224),
        tuple(inputs.mean or saved.get("mean") or IMAGENET_MEAN),
        tuple(inputs.std or saved.get("std") or IMAGENET_STD),
        inputs.resize_ratio,
    )


def load_subjects(inputs: EvalInputs) -> dict[str, Subject]:
    """``{"pretrained", "random_init"?, "baseline"?}``: the weights, their floor, and an optional baseline."""
    backbone, dim, info = load_backbone(inputs.checkpoint, inputs.arch or None, inputs.small_stem)
    subjects = {"pretrained": Subject(backbone, dim, info)}
    architecture = {"arch": info["arch"], "small_stem": info["small_stem"], "stem_stride": info["stem_stride"]}
    if inputs.random_init:
        seed = info.get("seed", inputs.seed)  # a barlowtwins run's own initial weights (models.initial_backbone)
        torch.manual_seed(seed)
        floor, floor_dim, floor_info = load_backbone(None, **architecture)
        subjects["random_init"] = Subject(floor, floor_dim, {**floor_info, "seed": seed})
    if inputs.baseline_weights:
        subjects["baseline"] = Subject(*load_backbone(inputs.baseline_weights, **architecture))
    return subjects


def output_path(inputs: EvalInputs, name: str) -> Path:
    """``--out``, else ``eval/<name>.json`` in the run directory, else ``<weights>-<name>.json`` beside them."""
    if inputs.out:
        return Path(inputs.out)
    checkpoint = Path(inputs.checkpoint)
    if checkpoint.is_dir():
        return checkpoint / "eval" / f"{name}.json"
    return checkpoint.parent / f"{checkpoint.stem}-{name}.json"


@dataclass
class Evaluation:
    """Everything a protocol needs, prepared from :class:`EvalInputs` by :func:`prepare`."""

    inputs: EvalInputs
    subjects: dict[str, Subject]
    images: ImageSettings
    train: ImageSource | None
    test: ImageSource | None
    device: torch.device
    workers: int
    out: Path
    started: float

    def log(self, line: str) -> None:
        """Log a line (INFO) and append it to the log beside the JSON result."""
        logger.info(line)
        with open(self.out.with_suffix(".log"), "a") as handle:
            handle.write(line + "\n")

    def write(self, protocol: str, settings: Any, results: dict[str, Any], **extra: Any) -> Path:
        """The JSON report: protocol, settings, image settings, data, weights, results, time and metadata."""
        settings = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
        report = {
            "protocol": protocol,
            **extra,
            "hyperparameters": {**settings, "seed": self.inputs.seed, **dataclasses.asdict(self.images)},
            "train_data": self.train.description if self.train else None,
            "test_data": self.test.description if self.test else None,
            "weights": {name: subject.info for name, subject in self.subjects.items()},
            "results": results,
            "seconds": round(time.perf_counter() - self.started, 1),
            "meta": run_metadata(),
        }
        atomic_write_text(json.dumps(report, indent=2) + "\n", self.out)
        logger.info("wrote %s", self.out)
        return self.out


def prepare(inputs: EvalInputs, name: str | Callable[[ImageSettings], str], data: bool = True) -> Evaluation:
    """Load the subjects, resolve the image settings, open the train/test data, start the log.

    ``name`` (of the default result file) may depend on the image settings: a function of them."""
    started = time.perf_counter()
    check_ranges(inputs)
    subjects = load_subjects(inputs)
    images = image_settings(inputs, subjects["pretrained"].info)
    train = test = None
    if data:
        i = inputs
        train = open_source(i.train_data, i.data_root, i.download, i.limit, what="--train-data")
        test_limit = i.limit if i.test_limit is None else i.test_limit
        test = open_source(i.test_data, i.data_root, i.download, test_limit, what="--test-data")
    name = name if isinstance(name, str) else name(images)
    out = output_path(inputs, name)
    if out.is_dir():
        raise BarlowTwinsError(f"--out {out} is a directory; pass a file name such as {out / (name + '.json')}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".log").write_text("")
    except OSError as error:
        raise BarlowTwinsError(f"cannot write results to {out.parent} ({error.strerror}); pass another --out") from None
    device, workers = select_device(inputs.device), resolve_workers(inputs.workers)
    return Evaluation(inputs, subjects, images, train, test, device, workers, out, started)


def summary(results: dict[str, dict], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{name}: " + ", ".join(f"{k} {r[k]:.2f}" for k in keys if k in r) for name, r in results.items())
