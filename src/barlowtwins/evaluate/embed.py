"""Feature export: backbone features (and projector outputs) with labels and sample ids as ``.npy`` files.

For taking representations to other tools (UMAP, faiss, a notebook). Rows are in the order the loader
delivered them; ``ids.npy`` names each row's sample (WebDataset key, image path, or dataset position),
so rows can be joined with anything keyed by sample. The projector is the one trained with the backbone
(paper §2.2); it exists only in a ``barlowtwins`` training checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barlowtwins.atomic import atomic_write_text
from barlowtwins.checkpoint import load_projector
from barlowtwins.config import EvalInputs, KnnConfig
from barlowtwins.data import batches, open_source
from barlowtwins.evaluate.features import Features, extract
from barlowtwins.evaluate.harness import prepare
from barlowtwins.runtime import run_metadata

logger = logging.getLogger(__name__)


def write_embeddings(arrays: Features, out: str | Path, info: dict[str, Any]) -> dict[str, str]:
    """Write ``features.npy``, ``labels.npy``, ``ids.npy`` (+ ``projections.npy``) and ``embed.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("features", "projections", "labels"):
        array = getattr(arrays, name)
        if array is not None:
            np.save(out / f"{name}.npy", array.numpy())
            files[name] = str(out / f"{name}.npy")
    np.save(out / "ids.npy", np.asarray(arrays.ids, dtype=str))
    files["ids"] = str(out / "ids.npy")
    shapes = {name: list(np.load(path, mmap_mode="r").shape) for name, path in files.items()}
    atomic_write_text(json.dumps({**info, "files": files, "shapes": shapes}, indent=2) + "\n", out / "embed.json")
    return files


def run(
    inputs: EvalInputs, data: Sequence[str], out: str, projector: bool = False, batch_size: int = KnnConfig.batch_size
) -> dict[str, str]:
    """Embed ``data`` with the weights of ``inputs`` (no floor, no train/test split) -> ``.npy`` files in ``out``."""
    e = prepare(dataclasses.replace(inputs, random_init=False, out=str(Path(out) / "embed.json")), "embed", data=False)
    backbone, dim, info = e.subjects["pretrained"]
    head = load_projector(inputs.checkpoint, dim) if projector else None
    source = open_source(data, inputs.data_root, inputs.download, inputs.limit)
    loader = batches(source, e.images.transform(), batch_size, e.workers, e.device)
    arrays = extract(backbone, loader, e.device, head, progress="embed")
    description = {
        "what": "frozen backbone features" + (" and projector outputs" if head else "") + ", eval mode",
        "data": source.description,
        "weights": info,
        "transform": dataclasses.asdict(e.images),
        "meta": run_metadata(),
    }
    files = write_embeddings(arrays, out, description)
    logger.info("wrote %d rows to %s", len(arrays.ids), ", ".join(files.values()))
    return files
