"""``pretrain --init WEIGHTS``: a fresh run starts from existing weights instead of its random initialisation.

A source is a run directory or its checkpoint, an exported backbone (``.pth`` / ``.safetensors``, with its
``.json`` sidecar), a plain torchvision or timm state_dict, or the authors' released files: ``resnet50.pth``
(the ResNet-50 backbone, torchvision's names) and ``checkpoint.pth`` (``{"epoch", "model", "optimizer"}`` of the
DDP-wrapped module: ``module.backbone.*``, ``module.projector.*`` in our layer order (§2.2), ``module.bn.*``).
They are read by the loaders evaluation uses (:mod:`barlowtwins.checkpoint`). The backbone must fit whole;
the projector and predictor are taken layer by layer where every name and shape matches, the other layers
keep the run's seeded initialisation ("fresh").
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from barlowtwins.checkpoint import (
    FORMAT,
    backbone_state_dict,
    checkpoint_path,
    fitting_weights,
    load_file,
    refuse_contradiction,
    saved_model_settings,
)
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.export import read_sidecar
from barlowtwins.models.backbones import CUSTOM, fitting_arch

logger = logging.getLogger(__name__)

HEADS = ("projector", "predictor")  # taken layer by layer where names and shapes match
# Parts of a source that no part of ours means the same as, and why, for the log line
NOT_USED_WHY = {"bn": "the loss standardises each batch itself, as the authors' bn does in training (§2.2)"}


@dataclass(frozen=True)
class Source:
    """Weights read for ``--init``, named as the method's state_dict names them (``backbone.*``, ...)."""

    file: Path  # the file read (a run directory's checkpoint.pt)
    sha256: str
    state: dict[str, torch.Tensor]
    recorded: dict[str, Any]  # what the source records of itself: arch, small_stem, stem_stride, mean, std


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_source(path: str) -> Source:
    """The weights of ``path`` in the method's names, and what the file records about them."""
    given = Path(path)
    if not given.exists():
        raise BarlowTwinsError(
            f"--init {path}: no such file or directory; pass a run directory, an exported .pth / .safetensors "
            "or a state_dict file"
        )
    try:
        file = checkpoint_path(given) if given.is_dir() else given
        state = load_file(file)
    except BarlowTwinsError as error:
        raise BarlowTwinsError(f"--init: {error}") from None
    digest = sha256_file(file)
    if isinstance(state, dict) and state.get("format") == FORMAT:  # a run of ours: our names already
        augment = state["config"]["augment"]
        recorded = {**saved_model_settings(state["config"]), "mean": augment["mean"], "std": augment["std"]}
        return Source(file, digest, state["model"], recorded)
    return Source(file, digest, _model_names(state, file), read_sidecar(file) or {})


def _model_names(state: Any, file: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict (bare, or under ``state_dict`` / ``model``; ``module.`` prefixes dropped) in the
    method's names: a whole model's keys (``backbone.*``, ``projector.*``) as they are, a backbone's prefixed."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BarlowTwinsError(
            f"--init {file} holds no state_dict (a dict of tensors, bare or under 'state_dict' or 'model'); "
            "save one with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # the authors' checkpoint.pth, a method's state_dict
        return state
    return {f"backbone.{k}": v for k, v in state.items()}


def _flags(arch: str, small_stem: bool) -> str:
    return f"--arch {arch} --{'' if small_stem else 'no-'}small-stem"


def refuse_other_architecture(path: str, recorded: dict[str, Any], arch: str, small_stem: bool) -> None:
    """Weights recording another arch or stem than the run's are refused, naming both and what to pass."""
    if CUSTOM in (arch, recorded.get("arch")):
        return  # a module given from Python: only the fit of its tensors is checked
    for name, given in (("arch", arch), ("small_stem", small_stem)):
        saved = recorded.get(name)
        fix = f"pass {_flags(recorded.get('arch', arch), bool(recorded.get('small_stem')))} or other --init weights"
        refuse_contradiction(f"--init {path}", name, given, saved, fix)


def take_backbone(backbone: nn.Module, source: Source, path: str, arch: str, small_stem: bool) -> list[str]:
    """Load the source's backbone into ``backbone``: whole and of equal shapes, or refused in one line naming the
    run's architecture and, when the weights fit another torchvision ResNet, that one. Returns the keys taken."""
    weights, problems = fitting_weights(backbone, backbone_state_dict(source.state))
    ours = backbone.state_dict()
    run = _flags(arch, small_stem) if arch != CUSTOM else "backbone"
    if not set(weights) & set(ours):
        names = [k.removeprefix("backbone.") for k in source.state]
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise BarlowTwinsError(
            f"--init {path}: none of its {len(source.state)} tensors ({shown}) is a weight of this run's {run}; "
            "pass a run directory, an exported backbone, or a torchvision or timm state_dict"
        )
    if problems:
        if (guess := fitting_arch(weights)) is not None:  # e.g. resnet18 weights in a resnet34: a subset, yet whole
            fix = f"they are {guess[0]} weights{' with a small stem' if guess[1] else ''}: pass {_flags(*guess)}"
        elif set(weights) < set(ours) and "wrong shape" not in problems:
            fix = "the backbone must be whole: pass weights of all of it"
        else:
            fix = "pass the --arch and --small-stem they were trained with"
        raise BarlowTwinsError(f"--init {path} does not fit this run's {run} ({problems}); {fix}")
    backbone.load_state_dict(weights)
    return sorted(weights)


def take_heads(method: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], dict[str, str]]:
    """Load the projector's and predictor's layers whose every tensor the source has with the same shape;
    returns the keys taken and, for each fresh key, why (the first mismatch of its layer)."""
    ours = {k: v for k, v in method.state_dict().items() if k.split(".")[0] in HEADS}
    layers: dict[str, list[str]] = {}
    for key in ours:
        layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    taken, fresh = {}, {}
    for keys in layers.values():
        why = next((text for text in (_mismatch(k, ours[k], state.get(k)) for k in keys) if text), "")
        if why:
            fresh.update(dict.fromkeys(keys, why))
        else:
            taken.update({k: state[k] for k in keys})
    method.load_state_dict(taken, strict=False)
    return sorted(taken), fresh


def _mismatch(key: str, ours: torch.Tensor, theirs: torch.Tensor | None) -> str:
    """Why ``theirs`` cannot replace ``ours`` ("" when it can)."""
    if theirs is None:
        return "not in the source"
    if theirs.shape != ours.shape:
        shape = "x".join(map(str, theirs.shape)) or "scalar"
        return f"{key} is {shape} there, {'x'.join(map(str, ours.shape)) or 'scalar'} here"
    return ""


def initialise(
    method: nn.Module,
    path: str,
    arch: str,
    small_stem: bool,
    stem_stride: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    log: bool = True,
) -> dict[str, Any]:
    """Apply ``--init path`` to a freshly built ``method`` of ``arch`` / ``small_stem``: the backbone whole, the
    heads where their layers match, a momentum target restarted from them. Returns the record kept in the run's
    meta.json (source, sha256, taken, fresh, not used, summary); ``log``: say it in one line."""
    source = read_source(path)
    refuse_other_architecture(path, source.recorded, arch, small_stem)
    backbone = take_backbone(method.backbone, source, path, arch, small_stem)
    heads, fresh = take_heads(method, source.state)
    restart = getattr(method, "restart_target", None)
    if callable(restart):
        restart()  # BYOL: the target starts as a copy of the online network (Grill et al. 2020, §3.1)
    used = {f"backbone.{k}" for k in backbone} | set(heads) | set(fresh)  # fresh keys: said with their reason
    present = [part for part in HEADS if getattr(method, part, None) is not None]
    recorded = ("arch", "small_stem", "stem_stride", "mean", "std")
    record = {
        "source": path,
        "file": str(source.file),
        "sha256": source.sha256,
        "recorded": {k: source.recorded[k] for k in recorded if k in source.recorded},
        "taken": {"backbone": len(backbone), **{p: sum(k.startswith(f"{p}.") for k in heads) for p in present}},
        "fresh": fresh,
        "not_used": dict(Counter(k.removeprefix("backbone.").split(".")[0] for k in source.state if k not in used)),
    }
    record["summary"] = summary(record)
    if log:
        logger.info(record["summary"])
        _warn_other_settings(path, source.recorded, small_stem, stem_stride, mean, std)
    return record


def summary(record: dict[str, Any]) -> str:
    """The one line said at the start: the file and its hash, then what was taken, fresh and not used."""
    taken = record["taken"]
    parts = [f"backbone {taken['backbone']}/{taken['backbone']} tensors taken"]
    for part in HEADS:
        fresh = [why for key, why in record["fresh"].items() if key.startswith(f"{part}.")]
        if part in taken:
            count = f"{part} {taken[part]}/{taken[part] + len(fresh)} taken"
            parts.append(count + (f", {len(fresh)} fresh ({fresh[0]})" if fresh else ""))
    if record["not_used"]:
        why = {group: f" ({NOT_USED_WHY[group]})" if group in NOT_USED_WHY else "" for group in record["not_used"]}
        parts.append("not used: " + ", ".join(f"{g} {n}{why[g]}" for g, n in record["not_used"].items()))
    read = f"{Path(record['file']).name}, " if Path(record["source"]).is_dir() else ""
    return f"--init {record['source']} ({read}sha256 {record['sha256'][:12]}): " + "; ".join(parts)


def _warn_other_settings(
    path: str,
    recorded: dict[str, Any],
    small_stem: bool,
    stem_stride: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    """Settings the tensors' shapes do not show, recorded otherwise by the source: said, not refused (a domain
    may call for another stride or normalisation)."""
    saved_stride = recorded.get("stem_stride")
    if small_stem and saved_stride is not None and saved_stride != stem_stride:
        logger.warning(
            "--init %s was trained with stem stride %s, this run uses %s (--set model.stem_stride=%s keeps its own)",
            path,
            saved_stride,
            stem_stride,
            saved_stride,
        )
    saved = [list(map(float, recorded[k])) for k in ("mean", "std") if k in recorded]
    if len(saved) == 2 and saved != [list(map(float, mean)), list(map(float, std))]:
        logger.warning(
            "--init %s was trained on inputs normalised with mean %s std %s, this run uses mean %s std %s",
            path,
            saved[0],
            saved[1],
            list(mean),
            list(std),
        )
