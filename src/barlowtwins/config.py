"""Run configuration: frozen dataclasses holding every default exactly once.

Configuration flows one way: dataclass defaults (the paper's ImageNet recipe) <- a named recipe
(``recipes/<name>.yaml``, only the values that differ) <- command-line overrides -> one frozen
``PretrainConfig`` -> ``pretrain(config)``. Components never see this object; they get plain arguments.
Unknown keys are rejected at every level, so a typo cannot be silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from barlowtwins.errors import BarlowTwinsError

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # --data: ImageFolder dir, shard pattern(s)/paths, or a built-in name
    eval: tuple[str, ...] = ()  # --eval-data: labelled test set; kNN at the end of pretraining uses it
    root: str = "data"  # where torchvision's CIFAR/STL sets are (or get downloaded to)
    download: bool = False  # torchvision sets are downloaded only when the user asks
    limit: int = 0  # use only the first N training samples (0: all); for smoke tests and tiny runs
    eval_limit: int = 0  # use only the first N samples of --eval-data (0: all)
    workers: int = -1  # DataLoader worker processes; -1: one per CPU core, at most 8
    shuffle_buffer: int = 2000  # WebDataset only: samples held for shuffling within a worker


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # torchvision classification model; its classifier is removed (paper §2.2)
    small_stem: bool = False  # 3x3 stride-1 first conv, no max-pool: for 32-96 px images (CIFAR, STL)
    projector: str = "8192-8192-8192"  # output widths of the projector's linear layers (paper §2.2)
    projector_bn: bool = True  # BN after hidden projector layers; False is Table 5's "No BN in MLP"


@dataclass(frozen=True)
class AugmentConfig:
    """The two asymmetric views of paper §2.2 (BYOL's parameters). Pairs are (view A, view B)."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet normalisation
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossConfig:
    lambd: float = 0.0051  # off-diagonal weight; official code (the paper rounds to 5e-3, §2.2)
    formulation: str = "auto"  # "cross" (DxD matrix), "gram" (batch space, for wide projectors), "auto"


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"  # "lars" (paper), "sgd" or "adamw" (often better for small data)
    lr_weights: float = 0.2  # peak lr of weights per 256 images (official code, paper §2.2)
    lr_biases: float = 0.0048  # peak lr of biases and BN parameters per 256 images (official code)
    weight_decay: float = 1.5e-6  # paper §2.2; never applied to biases and BN parameters
    momentum: float = 0.9  # LARS and SGD; AdamW uses beta1 = momentum
    lars_eta: float = 0.001  # LARS trust coefficient (official code)
    warmup_epochs: float = 10.0  # linear warm-up from 0 (paper §2.2)
    final_lr_ratio: float = 0.01  # cosine decays to peak x this: paper 0.2 -> 0.002; official code 0.001


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/barlowtwins"  # run directory: config, metrics, checkpoints, results
    epochs: int = 1000  # paper §2.2
    batch_size: int = 2048  # global batch, over all processes (paper §2.2)
    precision: str = "auto"  # "auto" (bf16 on recent GPUs, fp16 on older ones, fp32 on CPU), "bf16", "fp16", "fp32"
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    channels_last: bool = True  # faster convolutions on GPUs and on CPUs alike
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 0  # steps between extra mid-epoch checkpoints (0: at the end of each epoch only)
    knn_k: tuple[int, ...] = (200, 20)  # kNN after pretraining; the first k is the headline (lightly: 200)
    knn_temperature: float = 0.1  # lightly's value


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of Python scalars and lists (YAML/JSON friendly)."""
        return _to_plain(dataclasses.asdict(self))


# Fields that may differ when resuming a run: they change how the run is executed, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "train.epochs",
        "train.out",
        "train.device",
        "train.log_every",
        "train.checkpoint_every",
        "train.knn_k",
        "train.knn_temperature",
        "data.eval",
        "data.eval_limit",
        "data.workers",
        "data.root",
        "data.download",
        "data.train",  # the same data may live at another path on another machine
    }
)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise a one-line error."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BarlowTwinsError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise BarlowTwinsError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {key}: {annotation}")  # none exist; keep it that way
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise BarlowTwinsError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BarlowTwinsError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise BarlowTwinsError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise BarlowTwinsError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BarlowTwinsError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise BarlowTwinsError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation for {key}: {annotation}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f" in '{prefix[:-1]}'" if prefix else ""
        raise BarlowTwinsError(
            f"unknown config key(s){where}: {', '.join(prefix + u for u in unknown)}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise BarlowTwinsError(f"{prefix}{name}: expected a mapping of keys, got {value!r}")
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, prefix + name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe by name (``cifar10``) or a path to a YAML file, as a nested dict."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise BarlowTwinsError(
            f"no recipe '{name_or_path}'; use one of {', '.join(recipe_names())} or a path to a YAML file"
        )
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise BarlowTwinsError(f"recipe {path} must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def override(key: str, value: Any) -> dict[str, Any]:
    """``("optim.lr_weights", 0.3)`` -> ``{"optim": {"lr_weights": 0.3}}``."""
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def parse_override(text: str) -> dict[str, Any]:
    """``optim.lr_weights=0.3`` -> ``{"optim": {"lr_weights": 0.3}}`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BarlowTwinsError(f"override '{text}' must look like section.key=value, e.g. optim.lr_weights=0.3")
    return override(key, yaml.safe_load(raw) if raw.strip() else "")


def make_config(recipe: str | None = None, overrides: list[dict[str, Any]] | None = None) -> PretrainConfig:
    """Defaults <- recipe <- overrides (in order), validated into a frozen PretrainConfig."""
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    for override in overrides or []:
        values = _merge(values, override)
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> PretrainConfig:
    config = _build(PretrainConfig, values, "")
    validate(config)
    return config


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def incompatible_changes(saved: dict[str, Any], current: PretrainConfig) -> list[str]:
    """Keys whose values differ between a saved run and the current config and matter for resuming."""
    old, new = flatten(saved), flatten(current.to_dict())
    return sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))


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
    if t.precision not in {"auto", "bf16", "fp16", "fp32"}:
        raise BarlowTwinsError(f"train.precision must be auto, bf16, fp16 or fp32 (got '{t.precision}')")
    if o.optimizer not in {"lars", "sgd", "adamw"}:
        raise BarlowTwinsError(f"optim.optimizer must be lars, sgd or adamw (got '{o.optimizer}')")
    if config.loss.formulation not in {"auto", "cross", "gram"}:
        raise BarlowTwinsError(f"loss.formulation must be auto, cross or gram (got '{config.loss.formulation}')")
    if not 0 <= o.final_lr_ratio <= 1:
        raise BarlowTwinsError(f"optim.final_lr_ratio must be in [0, 1] (got {o.final_lr_ratio})")
    if o.warmup_epochs < 0:
        raise BarlowTwinsError(f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    if a.image_size < 8:
        raise BarlowTwinsError(f"augment.image_size must be at least 8 pixels (got {a.image_size})")
    if not 0 < a.crop_scale[0] <= a.crop_scale[1] <= 1:
        raise BarlowTwinsError(f"augment.crop_scale must satisfy 0 < low <= high <= 1 (got {a.crop_scale})")
    probabilities = [a.flip_p, a.jitter_p, a.grayscale_p, *a.blur_p, *a.solarize_p]
    if any(not 0 <= p <= 1 for p in probabilities):
        raise BarlowTwinsError("augmentation probabilities must lie in [0, 1]")
    if not t.knn_k or any(k < 1 for k in t.knn_k):
        raise BarlowTwinsError(f"train.knn_k must be positive integers (got {t.knn_k})")
    from barlowtwins.model import parse_projector_spec  # local import: model imports torch, config must not

    parse_projector_spec(m.projector)
