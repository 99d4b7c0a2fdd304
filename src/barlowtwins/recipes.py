"""Named recipes, command-line overrides and type checks: from YAML and ``--set`` to one frozen config.

Defaults live in :mod:`barlowtwins.config`; a recipe (``recipes/<name>.yaml``) holds only the values that
differ; overrides (``--set section.key=value`` and the named flags) come last. Unknown keys and values of
the wrong type are rejected at every level, so a typo cannot be silently ignored. Any level may name a
dataset's normalisation instead of spelling it out (``augment.normalize: cifar10``, :mod:`barlowtwins.dataset_stats`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from barlowtwins.config import RESUMABLE_CHANGES, OptimConfig, PretrainConfig, TrainConfig
from barlowtwins.dataset_stats import normalization
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.validation import validate

RECIPE_DIR = Path(__file__).parent / "recipes"
YAML_11_WORDS = {"yes", "no", "on", "off", "y", "n"}
# The authors' peak learning rates of weights per 256 images by global batch size, ResNet-50 on ImageNet
# (official tracker, issue 7); biases and BN keep the official ratio lr_biases / lr_weights = 0.0048 / 0.2.
IMAGENET_LR_BY_BATCH = {128: 0.7, 256: 0.4, 512: 0.3, 1024: 0.25, 2048: 0.2}
AUTO = "auto"


def auto_lr_weights(batch_size: int) -> float:
    """The authors' ``lr_weights`` for ``batch_size`` (:data:`IMAGENET_LR_BY_BATCH`): linear in log2(batch)
    between the listed sizes, clamped to the end values outside them. Like every ``lr_weights`` it is per 256
    images: the optimiser's peak lr is this x batch_size / 256 (0.2 x 8 = 1.6 at 2048, as the official code)."""
    sizes = sorted(IMAGENET_LR_BY_BATCH)
    if batch_size <= sizes[0] or batch_size >= sizes[-1]:
        return IMAGENET_LR_BY_BATCH[sizes[0] if batch_size <= sizes[0] else sizes[-1]]
    upper = next(i for i, size in enumerate(sizes) if size >= batch_size)
    low, high = sizes[upper - 1], sizes[upper]
    t = (math.log2(batch_size) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return float(f"{IMAGENET_LR_BY_BATCH[low] + t * (IMAGENET_LR_BY_BATCH[high] - IMAGENET_LR_BY_BATCH[low]):.12g}")


def _resolve_auto_lr(values: dict[str, Any]) -> dict[str, Any]:
    """``optim.lr_weights: auto`` -> the authors' value for ``train.batch_size``; ``optim.lr_biases`` follows
    with the official ratio unless it is set too."""
    optim = values.get("optim", {})
    if not isinstance(optim, dict) or str(optim.get("lr_weights", "")).lower() != AUTO:
        return values
    batch = values.get("train", {}).get("batch_size", TrainConfig.batch_size)
    lr = auto_lr_weights(_coerce(batch, int, "train.batch_size"))
    optim = {**optim, "lr_weights": lr}
    if "lr_biases" not in optim or str(optim["lr_biases"]).lower() == AUTO:
        optim["lr_biases"] = float(f"{lr * OptimConfig.lr_biases / OptimConfig.lr_weights:.12g}")  # no 0.006000001
    return {**values, "optim": optim}


def _resolve_normalize(values: dict[str, Any]) -> dict[str, Any]:
    """``augment.normalize: cifar10`` -> that dataset's ``augment.mean`` and ``augment.std`` (dataset_stats).
    Resolved within one layer (a recipe, one override), so a later layer's numbers or name still win."""
    augment = values.get("augment")
    if not isinstance(augment, dict) or "normalize" not in augment:
        return values
    rest = {k: v for k, v in augment.items() if k != "normalize"}
    both = sorted({"mean", "std"} & set(rest))
    if both:
        raise BarlowTwinsError(
            f"augment.normalize and augment.{both[0]} both given; keep one (normalize names a dataset's mean and std)"
        )
    mean, std = normalization(str(augment["normalize"]))
    return {**values, "augment": {**rest, "mean": list(mean), "std": list(std)}}


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
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "on", "off", "1", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
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
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise BarlowTwinsError(f"recipe {path} is not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(loaded, dict):
        raise BarlowTwinsError(f"recipe {path} must be a mapping of sections, got {type(loaded).__name__}")
    return _resolve_normalize(loaded)


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
    if raw.strip().lower() in YAML_11_WORDS:  # YAML reads "off" as false; boolean fields still accept the words
        return override(key, raw.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise BarlowTwinsError(
            f"override '{text}': the value is not valid YAML; quote it or write a list as [a, b]"
        ) from None
    return override(key, value)


def make_config(recipe: str | None = None, overrides: list[dict[str, Any]] | None = None) -> PretrainConfig:
    """Defaults <- recipe <- overrides (in order), validated into a frozen PretrainConfig.

    Overrides that replace the recipe's training data drop its evaluation data too (:func:`dropped_eval`)."""
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    dropped = _replaced_eval(values, overrides or [])
    for override in overrides or []:
        values = _merge(values, _resolve_normalize(override))
    if dropped:
        values = {**values, "data": {k: v for k, v in values["data"].items() if k != "eval"}}
    return config_from_dict(_resolve_auto_lr(values))


def dropped_eval(recipe: str | None, overrides: list[dict[str, Any]]) -> list[str]:
    """The recipe's ``data.eval`` that :func:`make_config` drops because ``overrides`` replace its ``data.train``
    without giving ``data.eval`` again: it belongs to the recipe's data (the demo's ``digits:test`` says nothing
    about another folder). Empty when nothing is dropped."""
    return _replaced_eval(load_recipe(recipe) if recipe else {}, overrides)


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _replaced_eval(recipe_values: dict[str, Any], overrides: list[dict[str, Any]]) -> list[str]:
    data = recipe_values.get("data")
    if not isinstance(data, dict) or not data.get("eval"):
        return []
    given = [o["data"] for o in overrides if isinstance(o.get("data"), dict)]
    trains = [g["train"] for g in given if "train" in g]
    if not trains or any("eval" in g for g in given) or _as_list(trains[-1]) == _as_list(data.get("train", [])):
        return []
    return _as_list(data["eval"])


SMALL_DATA_RECIPES = ("photos-cpu", "cifar10-cpu", "demo")  # named when a dataset is too small for the batch


def small_data_recipes() -> list[tuple[str, int, int]]:
    """``(name, batch size, image size)`` of the recipes made for small data (:data:`SMALL_DATA_RECIPES`)."""
    recipes = []
    for name in SMALL_DATA_RECIPES:
        config = make_config(name)
        recipes.append((name, config.train.batch_size, config.augment.image_size))
    return recipes


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


def changed_settings(
    saved: dict[str, Any], current: dict[str, Any], ignored: Collection[str] = RESUMABLE_CHANGES
) -> list[str]:
    """Keys whose values differ between two configs (as dicts), except ``ignored``; a field added since
    ``saved`` was written counts as its default there."""
    old, new = flatten(saved), flatten(current)
    defaults = flatten(PretrainConfig().to_dict())
    old = {**{k: defaults[k] for k in set(new) - set(old) if k in defaults}, **old}
    return sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))


def incompatible_changes(saved: dict[str, Any], current: PretrainConfig) -> list[str]:
    """Keys whose values differ between a saved run and the current config and matter for resuming."""
    return changed_settings(saved, current.to_dict())
