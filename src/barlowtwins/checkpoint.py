"""Checkpoints: ``weights_only`` loading, foreign state_dicts and the projector (export: :mod:`barlowtwins.export`).

A checkpoint is a plain dict of tensors and Python scalars, so ``torch.load(..., weights_only=True)``
reads it without unpickling code. It is written with :func:`barlowtwins.atomic.atomic_save`: a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from barlowtwins.config import ModelConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import Backbone, build_backbone
from barlowtwins.models.heads import build_projector

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "barlowtwins-checkpoint/1"


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
        raise BarlowTwinsError(
            f"cannot load {path} (UnpicklingError: it holds Python objects beside tensors"
            + (f", e.g. {found.group(1)}" if found else "")
            + ", which could run code when loaded); save a plain state_dict: torch.save(model.state_dict(), path)"
        ) from None
    except Exception as error:
        raise BarlowTwinsError(f"cannot load {path} ({type(error).__name__}: {' '.join(str(error).split())})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A full training checkpoint (model, optimizer, progress, config) from a run dir or file."""
    path = checkpoint_path(path)
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BarlowTwinsError(
            f"{path} is not a training checkpoint made by 'barlowtwins pretrain' (a plain state_dict holds "
            "weights only); pass the run directory"
        )
    return state


def backbone_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a BarlowTwins state_dict, with torchvision's key names."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def load_weights_into(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load backbone weights, tolerating only a missing/extra classifier; otherwise name what mismatches."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise BarlowTwinsError(
            f"weights in {source} do not fit the architecture ({'; '.join(parts)}); check --arch and --small-stem"
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
        _refuse_contradiction(path, "arch", arch, model_config["arch"])
        _refuse_contradiction(path, "small_stem", small_stem, model_config["small_stem"])
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
        _refuse_contradiction(path, "arch", arch, saved.get("arch"))
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


def _refuse_contradiction(path, name: str, given, saved) -> None:
    """A setting passed for weights that record another value of it is an error naming both."""
    if given is not None and saved is not None and given != saved:
        raise BarlowTwinsError(
            f"{name} {given!r} contradicts {path}, whose weights are {name} {saved!r}; leave {name} unset "
            "(--" + name.replace("_", "-") + ") or pass other weights"
        )


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
