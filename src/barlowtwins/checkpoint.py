"""Checkpoints: ``weights_only`` loading, foreign state_dicts and the projector (export: :mod:`barlowtwins.export`).

A checkpoint is a plain dict of tensors and Python scalars, so ``torch.load(..., weights_only=True)``
reads it without unpickling code. Runs write it with :func:`save_rotating`, which keeps the one it replaces
beside it (``checkpoint.pt`` and ``checkpoint.prev.pt``); :func:`resume_state` reads the newest one that is
whole (zip checksums, format, finite tensors), says which file it skipped and why, and falls back on the other.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from barlowtwins.atomic import rotate_save, rotation_temporary
from barlowtwins.config import ModelConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import Backbone, build_backbone
from barlowtwins.models.heads import build_projector

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "barlowtwins-checkpoint/1"
TRAINING = "a training checkpoint made by 'barlowtwins pretrain'"  # what a file of FORMAT is, in messages
REQUIRED = ("model", "optimizer", "step", "config")  # the entries every run's checkpoint has, to resume from
WEIGHTS = ("model", "config")  # the entries exporting and evaluating read


def checkpoint_path(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise BarlowTwinsError(f"no checkpoint at {path}; pass a run directory made by 'barlowtwins pretrain'")
    return path


def load_file(path: str | Path) -> Any:
    """A ``.safetensors`` file, or ``torch.load`` with ``weights_only``: a pickle that names code (a class, a
    function) is refused unrun. On the CPU."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not _torch_file(Path(path)):  # random bytes, text, a file cut short: not a pickle of objects
            raise BarlowTwinsError(f"cannot load {path} ({_unreadable(Path(path))}); replace it") from None
        raise BarlowTwinsError(
            f"cannot load {path} (UnpicklingError: it holds Python objects beside tensors"
            + (f", e.g. {found.group(1)}" if found else "")
            + ", which could run code when loaded); save a plain state_dict: torch.save(model.state_dict(), path)"
        ) from None
    except Exception as error:
        if Path(path).is_file() and not str(path).endswith(".safetensors") and not zipfile.is_zipfile(path):
            raise BarlowTwinsError(f"cannot load {path} ({_unreadable(Path(path))}); replace it") from None
        raise BarlowTwinsError(f"cannot load {path} ({_error_text(error)})") from None


def _error_text(error: BaseException) -> str:
    """``Type: first sentence`` of an exception, on one line (torch's miniz errors run to a paragraph)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text.split('. ')[0][:200]}" if text else type(error).__name__


def _torch_file(path: Path) -> bool:
    """Whether ``path`` starts as ``torch.save`` writes: a zip archive, or (before torch 1.6) a protocol-2 pickle."""
    with open(path, "rb") as handle:
        return zipfile.is_zipfile(handle) or (handle.seek(0) == 0 and handle.read(2) == b"\x80\x02")


def _unreadable(path: Path) -> str:
    """Why a file that is not a zip archive (torch's format) cannot be a checkpoint."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty, 0 bytes"
    return f"it is truncated or corrupt: {size} bytes without the zip directory torch.save ends a file with"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A full training checkpoint (model, optimizer, progress, config) from a run dir or file; for a run dir the
    newest whole one of ``checkpoint.pt`` and ``checkpoint.prev.pt`` (:func:`resume_state`, saying which)."""
    if Path(path).is_dir():
        state, note = resume_state(Path(path) / CHECKPOINT_NAME, FORMAT, TRAINING, required=WEIGHTS)
        if note:
            logger.warning(note)
    else:
        state, why = read_checkpoint(checkpoint_path(path), FORMAT, TRAINING, WEIGHTS)
        if state is None:
            raise BarlowTwinsError(f"{path} {why}; pass the run directory")
    if state is None:
        checkpoint_path(path)  # raises: no checkpoint there
    return state


def previous_path(path: str | Path) -> Path:
    """The previous checkpoint kept beside ``path``: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_rotating(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path``, keeping the checkpoint it replaces as :func:`previous_path` (atomic)."""
    rotate_save(state, path, previous_path(path))


def read_checkpoint(
    path: Path, fmt: str, kind: str, required: tuple[str, ...] = REQUIRED
) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` if ``path`` is a whole checkpoint of format ``fmt``; else ``(None, why)``, ``why`` a
    phrase after the file name ("is truncated ..."). Checks the zip checksums, the format, the ``required``
    entries and that every floating-point tensor of the model and optimiser is finite."""
    try:
        if not zipfile.is_zipfile(path):
            return None, f"cannot be read: {_unreadable(path)}"
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            return None, f"is corrupt: the checksum of its entry {damaged} does not match"
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except Exception as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            return None, f"holds Python objects beside tensors (e.g. {found.group(1)}), refused unloaded"
        return None, f"cannot be loaded ({_error_text(error)})"
    if not isinstance(state, dict) or state.get("format") != fmt:
        return None, f"is not {kind} (a plain state_dict holds weights only)"
    missing = [key for key in required if key not in state]
    if missing or not isinstance(state["model"], dict) or not isinstance(state.get("optimizer", {}), dict):
        return None, f"is not {kind}: it lacks {', '.join(missing) or 'the model and optimizer state_dicts'}"
    bad = _first_non_finite(state)
    return (None, f"holds non-finite values (in {bad})") if bad else (state, None)


def _first_non_finite(state: dict[str, Any]) -> str | None:
    """The name of the first model or optimiser tensor with a NaN or infinity, or None."""
    named = list(state["model"].items())
    for number, slots in state.get("optimizer", {}).get("state", {}).items():
        named += [(f"optimizer state {number} {key}", value) for key, value in slots.items()]
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def finish_rotation(path: Path, fmt: str, kind: str) -> str | None:
    """Complete a :func:`save_rotating` killed between its two renames: ``path`` gone, the new checkpoint whole
    in its temporary. Call it holding the run's lock, before removing temporaries; returns what it did."""
    temporary = rotation_temporary(path)
    if path.exists() or not temporary.is_file():
        return None
    state, _ = read_checkpoint(temporary, fmt, kind)
    if state is None:
        return None  # a write killed midway: the temporary is removed with the others
    os.replace(temporary, path)
    return f"completed the interrupted save of {path} (step {state['step']})"


def resume_state(
    path: Path, fmt: str, kind: str, set_aside: bool = False, required: tuple[str, ...] = REQUIRED
) -> tuple[dict[str, Any] | None, str | None]:
    """The newest whole checkpoint of ``path`` and :func:`previous_path`: ``(state, note)``, ``note`` a line
    saying which file was skipped and why; ``(None, None)`` when there is neither. ``set_aside`` (the main
    process) renames a skipped unreadable ``path`` to ``NAME.bad``, so the next save keeps the good previous one.
    Neither readable: a BarlowTwinsError naming each file and why, and which to move away."""
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    problems: list[str] = [] if path.is_file() or not candidates else [f"{path.name} is missing"]
    for candidate in candidates:
        state, why = read_checkpoint(candidate, fmt, kind, required)
        if state is None:
            problems.append(f"{candidate.name} {why}")
            continue
        if not problems:
            return state, None
        note = f"{path.parent}: {problems[0]}; resuming from {candidate.name} (step {state['step']})"
        if set_aside and candidate != path and path.is_file():
            path.replace(path.with_name(path.name + ".bad"))
            note += f", the unreadable file kept as {path.name}.bad"
        return state, note
    if not candidates:
        return None, None
    away = " and ".join(str(c) for c in candidates)
    raise BarlowTwinsError(
        f"no readable checkpoint in {path.parent} ({'; '.join(problems)}); move {away} away (e.g. mv "
        f"{candidates[0]} {candidates[0]}.bad) to start the run over, or pass another --out"
    )


def backbone_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a BarlowTwins state_dict, with torchvision's key names."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def fitting_weights(backbone: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``state_dict`` without a ``module.`` prefix and without a classifier ``backbone`` lacks (torchvision's
    ``fc``, a timm model's head), and what keeps it from fitting ``backbone`` ("" when it fits)."""
    expected = backbone.state_dict()
    heads = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    heads = tuple(f"{h}." for h in ([heads] if isinstance(heads, str) else heads)) + ("fc.",)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if k in expected or not k.startswith(heads)}
    listed = {
        "missing": sorted(set(expected) - set(state_dict)),
        "unexpected": sorted(set(state_dict) - set(expected)),
        "wrong shape": sorted(
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state_dict and state_dict[k].shape != v.shape
        ),
    }
    parts = [
        f"{label}: " + ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        for label, keys in listed.items()
        if keys
    ]
    return state_dict, "; ".join(parts)


def load_weights_into(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load backbone weights, tolerating only a missing/extra classifier; otherwise name what mismatches."""
    state_dict, problems = fitting_weights(backbone, state_dict)
    if problems:
        raise BarlowTwinsError(
            f"weights in {source} do not fit the architecture ({problems}); check --arch and --small-stem"
        )
    backbone.load_state_dict(state_dict)


def saved_model_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``config["model"]``, with the default of each model setting added since it was written."""
    return {"stem_stride": ModelConfig.stem_stride, **config["model"]}


def load_backbone(
    path: str | Path | None,
    arch: str | None = None,
    small_stem: bool | None = None,
    backbone: Backbone | None = None,
    stem_stride: int | None = None,
) -> tuple[nn.Module, int, dict[str, Any]]:
    """A backbone from a run directory / checkpoint, or from a plain state_dict file (``arch`` needed).

    ``path=None`` gives the randomly initialised backbone. Returns (backbone, feature_dim, info); for a
    barlowtwins checkpoint ``info["images"]`` holds the pretraining image size and normalisation and
    ``info["seed"]`` the seed its weights were initialised from. ``backbone`` (a ``custom_backbone``)
    receives the weights instead of a module built by name. ``stem_stride`` (the small stem's) is read from
    the checkpoint or sidecar when not given; checkpoints from before it existed used 1.
    """
    state = None
    if path is not None:
        state = load_file(checkpoint_path(path)) if Path(path).is_dir() else load_file(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        model_config = saved_model_settings(state["config"])
        refuse_contradiction(path, "arch", arch, model_config["arch"])
        refuse_contradiction(path, "small_stem", small_stem, model_config["small_stem"])
        backbone, dim, _ = backbone or build_backbone(
            model_config["arch"], model_config["small_stem"], model_config["stem_stride"]
        )
        load_weights_into(backbone, backbone_state_dict(state["model"]), str(path))
        augment = state["config"]["augment"]
        images = {"image_size": augment["image_size"], "mean": augment["mean"], "std": augment["std"]}
        info = {"weights": str(path), "epoch": state["epoch"], "seed": state["config"]["train"]["seed"]}
        return backbone, dim, {**info, **model_config, "images": images}
    sidecar = Path(path).with_suffix(".json") if path is not None else None
    saved = json.loads(sidecar.read_text()) if sidecar is not None and sidecar.is_file() else {}
    if saved:
        refuse_contradiction(path, "arch", arch, saved.get("arch"))
        refuse_contradiction(path, "small_stem", small_stem, saved.get("small_stem"))
        arch = arch or saved.get("arch")
        small_stem = saved.get("small_stem", False) if small_stem is None else small_stem
        stem_stride = saved.get("stem_stride") if stem_stride is None else stem_stride
    if arch is None and backbone is None:
        raise BarlowTwinsError(f"{path} is a plain state_dict; say which architecture it is with --arch")
    stem_stride = stem_stride or ModelConfig.stem_stride  # not given, or an export from before it existed
    backbone, dim, _ = backbone or build_backbone(arch, bool(small_stem), stem_stride)
    info = {"weights": str(path) if path else "random init", "arch": arch, "small_stem": bool(small_stem)}
    info["stem_stride"] = stem_stride
    if "image_size" in saved:  # an export's sidecar: the pretraining image settings
        info["images"] = {k: saved[k] for k in ("image_size", "mean", "std")}
    if state is not None:
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise BarlowTwinsError(f"{path} holds no state_dict ({type(state).__name__})")
        load_weights_into(backbone, state, str(path))
    return backbone, dim, info


def refuse_contradiction(path, name: str, given, saved, fix: str | None = None) -> None:
    """A setting passed for weights that record another value of it is an error naming both; ``fix`` says what
    to do instead (default: drop the flag, the weights' own value is used)."""
    if given is not None and saved is not None and given != saved:
        flag = "--" + ("no-" if given is False else "") + name.replace("_", "-")
        fix = fix or f"drop {flag} (the weights' own value is used) or pass other weights"
        raise BarlowTwinsError(f"{name} {given!r} contradicts {path}, whose weights are {name} {saved!r}; {fix}")


def refuse_other_image_size(path: str | Path, image_size: int | None) -> None:
    """``--image-size`` for weights pretrained at another size is an error naming both. kNN, linear (appendix
    B.1: 224 px crops of 224 px-pretrained weights) and semi-supervised evaluation see the pretraining size;
    ``transfer`` and ``embed`` (other data, other sizes by design) do not call this. The size is read from the
    run directory's config.yaml or an export's JSON sidecar, without loading weights; weights that record none
    pass."""
    saved = _recorded_image_size(Path(path))
    if image_size is not None and saved is not None and image_size != saved:
        raise BarlowTwinsError(
            f"--image-size {image_size} contradicts {path}, pretrained on {saved} px views; drop --image-size "
            "(kNN, linear and semi evaluate at the pretraining size), or use 'barlowtwins transfer' or 'embed' "
            "for another size"
        )


def _recorded_image_size(path: Path) -> int | None:
    """The pretraining image size a run directory, its checkpoint or an export records (None: none)."""
    run = path if path.is_dir() else path.parent if path.name.startswith("checkpoint") else None
    if run is not None and (run / "config.yaml").is_file():
        saved = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("augment")
    else:
        sidecar = path.with_suffix(".json")
        saved = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    size = saved.get("image_size") if isinstance(saved, dict) else None
    return size if isinstance(size, int) else None


def load_projector(path: str | Path, feature_dim: int) -> nn.Module:
    """The projector of a ``barlowtwins`` run directory or checkpoint, in eval mode."""
    state = load_file(checkpoint_path(path)) if Path(path).is_dir() else load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BarlowTwinsError(
            f"{path} holds no projector (a plain state_dict has the backbone only); "
            "pass a run directory or checkpoint made by 'barlowtwins pretrain', or drop --projector"
        )
    model_config = state["config"]["model"]
    projector = build_projector(feature_dim, model_config["projector"], model_config.get("projector_bn", True))
    weights = {k.removeprefix("projector."): v for k, v in state["model"].items() if k.startswith("projector.")}
    projector.load_state_dict(weights)
    return projector.eval()
