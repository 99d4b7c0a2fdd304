"""Export a run's backbone so others can load it without this package.

``export_backbone`` writes the backbone (classifier removed, torchvision's or timm's own key names) as a
torch state_dict (``.pth``) and as ``.safetensors``, with a JSON sidecar that says what it is: arch,
stem, feature width, the pretraining image size and normalisation, the source checkpoint and step, and
the package version. The sidecar is what :mod:`barlowtwins.hub` (``hubconf.py``) reads to rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_bytes

from barlowtwins.atomic import atomic_save, atomic_write_bytes, atomic_write_text
from barlowtwins.checkpoint import (
    backbone_state_dict,
    checkpoint_path,
    load_checkpoint,
    load_weights_into,
    saved_model_settings,
)
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.models.backbones import CUSTOM, TIMM_PREFIX, build_backbone
from barlowtwins.runtime import package_version


def export_paths(out: str | Path) -> dict[str, Path]:
    """``backbone.pth`` (or ``backbone.safetensors``) -> the three files written: pth, safetensors, json."""
    out = Path(out)
    return {suffix: out.with_suffix(f".{suffix}") for suffix in ("pth", "safetensors", "json")}


def load_with(arch: str, small_stem: bool, stem_stride: int, paths: dict[str, Path]) -> str:
    """The one line that loads the export without barlowtwins."""
    if arch.startswith(TIMM_PREFIX):
        from barlowtwins.models.timm_backbones import parse_timm_arch

        name, kwargs = parse_timm_arch(arch)
        extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        return (
            f"timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(paths['safetensors'])!r}), num_classes=0{extra})"
        )
    line = f"torchvision.models.{arch}().load_state_dict(sd, strict=False)"
    stem = f"apply_small_stem(model{', stride=' + str(stem_stride) if stem_stride != 1 else ''})"
    return line + (f" after barlowtwins.models.backbones.{stem}" if small_stem else "")


def export_backbone(checkpoint: str | Path, out: str | Path, safetensors: bool = True) -> dict[str, Any]:
    """Write ``out``'s ``.pth``, ``.safetensors`` (unless ``safetensors`` is False) and ``.json``.

    Returns the sidecar's contents. The safetensors header carries the same JSON under ``"barlowtwins"``.
    """
    if Path(out).is_dir():
        raise BarlowTwinsError(f"--out {out} is a directory; pass a file name such as {Path(out) / 'backbone.pth'}")
    state = load_checkpoint(checkpoint)
    weights = {k: v.contiguous() for k, v in backbone_state_dict(state["model"]).items()}
    config, paths = state["config"], export_paths(out)
    model = saved_model_settings(config)
    if model["arch"] != CUSTOM:  # the weights must fit the architecture the sidecar will name
        backbone = build_backbone(model["arch"], model["small_stem"], model["stem_stride"]).module
        load_weights_into(backbone, weights, f"{checkpoint} (its config names {model['arch']})")
    augment = config["augment"]
    info = {
        "arch": model["arch"],
        "small_stem": model["small_stem"],
        "stem_stride": model["stem_stride"],
        "feature_dim": int(state["model"]["projector.0.weight"].shape[1]),  # the projector's input width
        "image_size": augment["image_size"],
        "mean": list(augment["mean"]),
        "std": list(augment["std"]),
        "source": str(checkpoint_path(checkpoint)),
        "epoch": state["epoch"],
        "step": state["step"],
        "barlowtwins_version": state.get("version"),
        "exported_by": package_version(),
        "files": {k: paths[k].name for k in ("pth", "safetensors") if k == "pth" or safetensors},
        "load_with": load_with(model["arch"], model["small_stem"], model["stem_stride"], paths),
    }
    try:
        atomic_save(weights, paths["pth"])
        if safetensors:
            metadata = {"format": "pt", "barlowtwins": json.dumps(info)}
            atomic_write_bytes(safetensors_bytes(weights, metadata=metadata), paths["safetensors"])
        atomic_write_text(json.dumps(info, indent=2) + "\n", paths["json"])
    except (OSError, RuntimeError) as error:
        raise BarlowTwinsError(f"cannot write {out} ({error}); pass another --out") from None
    return info


def read_sidecar(weights: str | Path) -> dict[str, Any] | None:
    """The JSON beside exported weights, or None."""
    sidecar = Path(weights).with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None
