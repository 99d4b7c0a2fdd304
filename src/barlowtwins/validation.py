"""Which settings can work: ranges, combinations, and the parsing of spec strings, with one-line errors.

Checked once, when a configuration is made (:func:`barlowtwins.recipes.make_config`) or an evaluation starts, so
a bad value stops a run before any data is read. Like :mod:`barlowtwins.config`, imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

from barlowtwins.config import (
    CACHES,
    CROPS,
    FORMULATIONS,
    OBJECTIVES,
    OPTIMIZERS,
    PRECISIONS,
    VIEWS,
    PretrainConfig,
)
from barlowtwins.errors import BarlowTwinsError


def validate(config: PretrainConfig) -> None:
    """Reject values that cannot work, with the fix in the message."""
    t, o, a, m = config.train, config.optim, config.augment, config.model
    if t.batch_size < 2:
        raise BarlowTwinsError(
            f"train.batch_size must be at least 2 (got {t.batch_size}): "
            "the loss normalises along the batch (paper eq. 2)"
        )
    if t.epochs < 1:
        raise BarlowTwinsError(f"train.epochs must be at least 1 (got {t.epochs})")
    parse_duration(t.time_budget)
    if m.stem_stride != 1 and not m.small_stem:
        raise BarlowTwinsError(f"model.stem_stride={m.stem_stride} is the small stem's stride: add --small-stem")
    if t.precision not in PRECISIONS:
        raise BarlowTwinsError(f"train.precision must be one of {', '.join(PRECISIONS)} (got '{t.precision}')")
    d = config.data
    if d.views not in VIEWS or d.cache not in CACHES:
        raise BarlowTwinsError(
            f"data.views must be one of {', '.join(VIEWS)} and data.cache one of {', '.join(CACHES)} "
            f"(got '{d.views}', '{d.cache}')"
        )
    if d.crops not in CROPS:
        raise BarlowTwinsError(f"data.crops must be one of {', '.join(CROPS)} (got '{d.crops}')")
    if a.small_views and d.views != "batched":
        raise BarlowTwinsError("augment.small_views are made by the batched views: set data.views=batched")
    if o.optimizer not in OPTIMIZERS:
        raise BarlowTwinsError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)} (got '{o.optimizer}')")
    if config.loss.formulation not in FORMULATIONS:
        raise BarlowTwinsError(
            f"loss.formulation must be one of {', '.join(FORMULATIONS)} (got '{config.loss.formulation}')"
        )
    _validate_method(config)
    if not 0 <= o.final_lr_ratio <= 1:
        raise BarlowTwinsError(f"optim.final_lr_ratio must be in [0, 1] (got {o.final_lr_ratio})")
    if o.warmup_epochs < 0:
        raise BarlowTwinsError(f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    if a.image_size < 8:
        raise BarlowTwinsError(f"augment.image_size must be at least 8 pixels (got {a.image_size})")
    for name in ("crop_scale", "small_crop_scale"):
        low, high = getattr(a, name)
        if not 0 < low <= high <= 1:
            raise BarlowTwinsError(f"augment.{name} must satisfy 0 < low <= high <= 1 (got {getattr(a, name)})")
    _validate_progressive(t.progressive_start, t.progressive_ramp, a.image_size)
    probabilities = [a.flip_p, a.jitter_p, a.grayscale_p, *a.blur_p, *a.solarize_p]
    if any(not 0 <= p <= 1 for p in probabilities):
        raise BarlowTwinsError("augmentation probabilities must lie in [0, 1]")
    if not config.knn.k or any(k < 1 for k in config.knn.k):
        raise BarlowTwinsError(f"knn.k must be positive integers (got {config.knn.k})")
    w = config.monitor
    if min(w.knn_every_epochs, w.picture_every) < -1 or min(w.knn_bank_limit, w.knn_query_limit, w.picture_block) < 1:
        raise BarlowTwinsError(
            "monitor.knn_every_epochs and monitor.picture_every must be -1 (auto), 0 (off) or positive, "
            "and the monitor's limits and block at least 1"
        )
    parse_projector_spec(m.projector)
    for section in dataclasses.fields(config):
        check_ranges(getattr(config, section.name), section.name)
    check_memory(config, available_memory())


# Backbone output widths of the torchvision ResNets (the projector's input); other backbones count as 64, the least.
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
OPTIMIZER_STATE = {"lars": 1, "sgd": 1, "adamw": 2}  # fp32 numbers the optimiser keeps per parameter
STEM_CHANNELS = 64  # the ResNet stem's output channels
SMALLEST_BATCH = 2  # image pairs: the loss standardises along the batch, so no run takes fewer


def projector_bytes(feature_dim: int, widths: list[int], optimizer: str) -> int:
    """Training memory of a projector's linear layers (paper §2.2): weights, gradients and optimiser state, fp32."""
    inputs = [feature_dim, *widths[:-1]]
    parameters = sum(i * o + o for i, o in zip(inputs, widths, strict=True))
    return parameters * 4 * (2 + OPTIMIZER_STATE.get(optimizer, 2))


def activation_bytes_per_image(image_size: int, arch: str, small_stem: bool, stem_stride: int) -> int:
    """A lower bound of the activations one image keeps for the backward pass: the fp32 input and, for a ResNet,
    the stem convolution's and batch norm's outputs (the layers after them only add to it)."""
    pixels = image_size * image_size
    if arch not in FEATURE_DIMS:
        return 4 * 3 * pixels
    stride = stem_stride if small_stem else 2
    return 4 * (3 * pixels + 2 * STEM_CHANNELS * pixels // (stride * stride))


def check_memory(config: PretrainConfig, available: int | None) -> None:
    """Refuse a projector or image size whose memory estimate exceeds twice the ``available`` bytes (None:
    unknown, no check): such a run cannot start, and would fail deep in an allocation instead of here."""
    if available is None:
        return
    m, a = config.model, config.augment
    widths = parse_projector_spec(m.projector)
    needed = projector_bytes(FEATURE_DIMS.get(m.arch, 64), widths, config.optim.optimizer)
    if needed > 2 * available:
        raise BarlowTwinsError(
            f"projector {m.projector} needs ~{_size(needed)} for its weights, gradients and optimizer state; this "
            f"machine has {_size(available)} available: use a narrower projector (the paper's is 8192-8192-8192)"
        )
    per_image = activation_bytes_per_image(a.image_size, m.arch, m.small_stem, m.stem_stride)
    needed = per_image * 2 * SMALLEST_BATCH  # two views of each image
    if needed > 2 * available:
        raise BarlowTwinsError(
            f"image size {a.image_size} needs ~{_size(per_image)} of activations per view (~{_size(needed)} for "
            f"the smallest batch, 2 pairs); this machine has {_size(available)} available: use a smaller "
            "--image-size (the paper's is 224)"
        )


def available_memory() -> int | None:
    """Bytes a run can use: the host's available memory (Linux /proc/meminfo, else sysconf), or a CUDA device's
    total memory when more and torch is already loaded; None when neither is known."""
    host = None
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo if ":" in line)
        host = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    torch = sys.modules.get("torch")  # never imported here: this module stays free of torch
    device = 0
    if torch is not None and torch.cuda.is_available():
        device = torch.cuda.get_device_properties(0).total_memory
    return max(host or 0, device) or None


def _size(count: int) -> str:
    """Bytes in GB, TB or PB, e.g. ``120 GB``, ``1.5 TB``."""
    unit, scale = next((u, v) for u, v in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9)) if count >= v or u == "GB")
    return f"{count / scale:.2g} {unit}" if count < 10 * scale else f"{count / scale:.0f} {unit}"


def _validate_progressive(start_side: int, ramp: tuple[float, float], image_size: int) -> None:
    """Low resolution first: a first side within [8, image_size] and a ramp within the run."""
    start, finish = ramp
    if start_side and not (8 <= start_side <= image_size and 0 <= start <= finish <= 1):
        raise BarlowTwinsError(
            f"train.progressive_start must lie in [8, augment.image_size {image_size}] and train.progressive_ramp "
            f"satisfy 0 <= start <= end <= 1 (got {start_side}, {list(ramp)}); 0 turns it off"
        )


def _between(low: float, high: float, text: str):
    return lambda v: low <= v < high, text


# The obvious range of each numeric setting, by field name (the same name means the same thing in every section).
RANGES = {
    "limit": (lambda v: v >= 0, ">= 0 (0: all)"),
    "eval_limit": (lambda v: v >= 0, ">= 0 (0: all)"),
    "test_limit": (lambda v: v is None or v >= 0, ">= 0"),
    "workers": (lambda v: v >= -1, ">= -1 (-1: one per usable CPU)"),
    "shuffle_buffer": (lambda v: v >= 1, ">= 1"),
    "stem_stride": (lambda v: v >= 1, ">= 1"),
    "small_views": (lambda v: v >= 0, ">= 0"),
    "small_size": (lambda v: v >= 1, ">= 1"),
    "progressive_start": (lambda v: v >= 0, ">= 0 (0: off)"),
    "stored_size": (lambda v: v >= 0, ">= 0 (0: every crop a reduction of the stored image)"),
    "image_size": (lambda v: v is None or v >= 1, ">= 1"),
    "resize_ratio": (lambda v: v >= 0, ">= 0 (0: the default)"),
    "jitter": (lambda v: v >= 0, ">= 0"),
    "blur_sigma": (lambda v: v > 0, "> 0"),
    "std": (lambda v: v > 0, "> 0"),
    "lambd": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v >= 0, ">= 0"),
    "lr_weights": (lambda v: v >= 0, ">= 0"),
    "lr_biases": (lambda v: v >= 0, ">= 0"),
    "lr_backbone": (lambda v: v >= 0, ">= 0"),
    "lr_classifier": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": _between(0, 1, "in [0, 1)"),
    "lars_eta": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0 (0: once per epoch)"),
    "k": (lambda v: v >= 1, ">= 1"),
    "queries": (lambda v: v >= 1, ">= 1"),
    "thumbnail": (lambda v: v >= 16, ">= 16"),
    "projector_points": (lambda v: v >= 0, ">= 0 (0: no projector files)"),
    "sprite_size": (lambda v: v >= 8, ">= 8"),
    "temperature": (lambda v: v > 0, "> 0"),
    "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "milestones": (lambda v: v >= 1, ">= 1"),
    "drops": (lambda v: v >= 0, ">= 0"),
    "svm_costs": (lambda v: v > 0, "> 0"),
    "svm_folds": (lambda v: v >= 2, ">= 2"),
}


def check_ranges(settings: Any, section: str = "", flags: bool = False) -> None:
    """Reject a numeric field of the dataclass ``settings`` outside its range in :data:`RANGES` (tuples:
    every element), naming the setting (``section.field``, or ``--field`` for ``flags``) and the range."""
    for f in dataclasses.fields(settings):
        value, rule = getattr(settings, f.name), RANGES.get(f.name)
        if isinstance(value, bool):
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if v is None or isinstance(v, (int, float))]
        name = "--" + f.name.replace("_", "-") if flags else f"{section}.{f.name}" if section else f.name
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise BarlowTwinsError(f"{name} must be a finite number (got {value!r})")
        if rule is not None and not all(rule[0](v) for v in numbers):
            raise BarlowTwinsError(f"{name} must be {rule[1]} (got {value!r})")


def _validate_method(config: PretrainConfig) -> None:
    loss, m = config.loss, config.model
    if loss.objective not in OBJECTIVES:
        raise BarlowTwinsError(f"loss.objective must be one of {', '.join(OBJECTIVES)} (got '{loss.objective}')")
    if loss.objective == "cross_entropy" and loss.formulation == "gram":
        raise BarlowTwinsError("loss.objective=cross_entropy needs each C_ij: set loss.formulation=cross (or auto)")
    if loss.temperature <= 0:
        raise BarlowTwinsError(f"loss.temperature must be positive (got {loss.temperature})")
    if not 0 <= m.momentum <= 1:
        raise BarlowTwinsError(f"model.momentum must be in [0, 1] (got {m.momentum})")
    if m.predictor not in ("", "auto"):
        parse_projector_spec(m.predictor)
    if config.augment.small_views and (m.method != "barlow_twins" or m.predictor or m.stop_gradient):
        raise BarlowTwinsError(
            "augment.small_views are for --method barlow_twins without a predictor or stop-gradient; "
            "set augment.small_views=0"
        )


def parse_projector_spec(spec: str) -> list[int]:
    """``"8192-8192-8192"`` -> ``[8192, 8192, 8192]``: the output width of each linear layer (paper §2.2)."""
    try:
        widths = [int(part) for part in spec.split("-")]
    except ValueError:
        widths = []
    if not widths or any(w < 1 for w in widths):
        raise BarlowTwinsError(
            f"projector spec '{spec}' must be positive layer widths joined by '-', e.g. 8192-8192-8192"
        )
    return widths


def parse_duration(text: str) -> float | None:
    """``"20m"`` -> 1200.0 seconds (units s, m, h; a bare number is seconds); ``""`` -> None."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise BarlowTwinsError(f"time budget '{text}' must be a positive duration such as 90s, 20m or 1.5h")
    return seconds
