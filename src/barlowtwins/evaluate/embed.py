"""Feature export: backbone features (and projector outputs) with labels and sample ids as ``.npy`` files.

For taking representations to other tools (UMAP, faiss, a notebook). Rows are in the order the loader
delivered them; ``ids.npy`` names each row's sample (WebDataset key, image path, or dataset position),
so rows can be joined with anything keyed by sample. The projector is the one trained with the backbone
(paper §2.2); it exists only in a ``barlowtwins`` training checkpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from barlowtwins.checkpoint import FORMAT, atomic_write_text, checkpoint_path, load_file
from barlowtwins.data import ImageSource, evaluation_loader_with_ids
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.model import build_projector


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


@torch.no_grad()
def features_with_ids(
    backbone: nn.Module,
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    workers: int,
    device: torch.device,
    projector: nn.Module | None = None,
) -> dict[str, Any]:
    """One pass in eval mode: ``{"features", "labels", "ids"}`` and ``"projections"`` with a projector."""
    backbone = backbone.to(device, memory_format=torch.channels_last).eval()  # faster convolutions
    if projector is not None:
        projector = projector.to(device).eval()
    features, projections, labels, ids = [], [], [], []
    loader = evaluation_loader_with_ids(source, transform, batch_size, workers, device)
    for images, targets, keys in tqdm(loader, desc="embed", disable=not sys.stderr.isatty(), leave=False):
        h = backbone(images.to(device, memory_format=torch.channels_last))
        features.append(h.float().cpu())
        if projector is not None:
            projections.append(projector(h).float().cpu())
        labels.append(torch.as_tensor(targets))
        ids.extend(keys)
    out = {"features": torch.cat(features), "labels": torch.cat(labels), "ids": ids}
    if projector is not None:
        out["projections"] = torch.cat(projections)
    return out


def write_embeddings(arrays: dict[str, Any], out: str | Path, info: dict[str, Any]) -> dict[str, str]:
    """Write ``features.npy``, ``labels.npy``, ``ids.npy`` (+ ``projections.npy``) and ``embed.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("features", "projections", "labels"):
        if name in arrays:
            np.save(out / f"{name}.npy", arrays[name].numpy())
            files[name] = str(out / f"{name}.npy")
    np.save(out / "ids.npy", np.asarray(arrays["ids"], dtype=str))
    files["ids"] = str(out / "ids.npy")
    shapes = {name: list(np.load(path, mmap_mode="r").shape) for name, path in files.items()}
    atomic_write_text(json.dumps({**info, "files": files, "shapes": shapes}, indent=2) + "\n", out / "embed.json")
    return files
