"""See what a backbone learned: query photos beside their nearest photos, and TensorBoard's projector files.

Neighbours by cosine similarity of the frozen backbone features, as the kNN monitor finds them
(:mod:`barlowtwins.evaluate.knn`), through the one harness (the weights beside their random-init floor, the
test-time preprocessing) and the one feature extractor. A query never retrieves its own file. Where both
have labels, a neighbour is a hit when its label (class name where the data has them) is the query's, and
each backbone's hit rate is the share of hits. Not a protocol of the paper.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from barlowtwins.config import EvalInputs, NeighboursConfig
from barlowtwins.data import ImageSource, batches, open_source, sample_index, select_samples
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.features import extract
from barlowtwins.evaluate.harness import Evaluation, output_path, prepare
from barlowtwins.evaluate.neighbours_picture import PanelPicture, draw_neighbours, save_png, thumbnails
from barlowtwins.evaluate.projector import check_sprite, write_projector
from barlowtwins.validation import check_ranges

logger = logging.getLogger(__name__)

SCORED_LIMIT = 10000  # bank samples whose own k neighbours give the hit rate over the bank (a seeded draw if more)


@torch.no_grad()
def nearest(
    queries: torch.Tensor, bank: torch.Tensor, k: int, exclude: torch.Tensor | None = None, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` bank rows of highest cosine similarity to each query row, best first: (indices, similarities),
    each (num_queries, k). ``exclude[i]`` is a bank row query i must not retrieve (itself; -1: none)."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    indices, similarities = [], []
    for start in range(0, len(queries), chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T
        if exclude is not None:
            rows = exclude[start : start + chunk_size].long()
            keep = (rows >= 0).nonzero().squeeze(1)
            similarity[keep, rows[keep]] = -float("inf")
        top_similarity, top_index = similarity.topk(k, dim=1)
        indices.append(top_index)
        similarities.append(top_similarity)
    return torch.cat(indices), torch.cat(similarities)


def same_label(
    query_labels: Sequence[str | None], bank_labels: Sequence[str | None], indices: torch.Tensor
) -> list[list[bool | None]]:
    """Per query and neighbour: the labels agree (True), differ (False), or either is missing (None)."""
    return [
        [None if q is None or bank_labels[j] is None else bank_labels[j] == q for j in row.tolist()]
        for q, row in zip(query_labels, indices, strict=True)
    ]


def hit_rate(hits: Sequence[Sequence[bool | None]]) -> float | None:
    """The share of labelled neighbours with their query's label (None when none is labelled)."""
    known = [h for row in hits for h in row if h is not None]
    return sum(known) / len(known) if known else None


def read_class_names(path: str | Path) -> dict[str, str]:
    """``CLASS NAME`` lines (CLASS a folder name or label number, e.g. ``n01440764 tench``) as a dict."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise BarlowTwinsError(f"--class-names {path}: {error.strerror}") from None
    pairs = [line.split(maxsplit=1) for line in lines if line.strip() and not line.startswith("#")]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise BarlowTwinsError(f"--class-names {path} needs lines 'CLASS NAME', e.g. 'n01440764 tench'")
    return {key: name.strip() for key, name in pairs}


def label_names(source: ImageSource, renamed: Mapping[str, str] | None = None) -> list[str | None]:
    """Each sample's label as its class name (ImageFolder's folder name) or number, then as ``renamed`` calls
    it; None where unlabelled."""
    _, labels = sample_index(source)
    classes = source.samples.classes if source.samples is not None else None
    names = [None if label < 0 else classes[label] if classes else str(label) for label in labels.tolist()]
    return [(renamed or {}).get(name, name) if name is not None else None for name in names]


def named_queries(ids: Sequence[str], names: Sequence[str]) -> list[int]:
    """Positions in ``ids`` of the samples ``names`` name: an id, a path to it, or its last path parts."""
    positions = []
    for name in names:
        tail, absolute = "/" + os.path.normpath(name).replace("\\", "/").lstrip("/"), os.path.abspath(name)
        found = [i for i, key in enumerate(ids) if key in (name, absolute) or key.endswith(tail)]
        found = found or [i for i, key in enumerate(ids) if os.path.abspath(key) == absolute]  # relative --data
        if not found:
            example = f", e.g. {ids[0]}" if ids else ""
            raise BarlowTwinsError(f"--query {name} is not in --data ({len(ids)} samples{example})")
        if len(found) > 1:
            raise BarlowTwinsError(
                f"--query {name} names {len(found)} samples of --data ({ids[found[0]]}, {ids[found[1]]}, ...); "
                "give more of its path"
            )
        positions.append(found[0])
    return positions


def drawn_queries(count: int, available: int, seed: int) -> list[int]:
    """``count`` distinct positions of ``available`` samples, drawn with ``seed``."""
    if count > available:
        raise BarlowTwinsError(f"--queries {count} is more than the {available} samples of --data")
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count].tolist()


@dataclass
class Sets:
    """The opened data: the bank, the queries (positions in --data), and the bank row each query must skip."""

    bank: ImageSource
    data: ImageSource
    positions: list[int]
    query_ids: list[str]
    query_labels: list[str | None]
    bank_ids: list[str]
    bank_labels: list[str | None]
    exclude: torch.Tensor
    same: bool  # the queries are bank samples (no --bank, or --bank naming --data)


def open_sets(
    inputs: EvalInputs,
    data: Sequence[str],
    bank: Sequence[str] | None,
    named: Sequence[str],
    settings: NeighboursConfig,
    renamed: Mapping[str, str] | None = None,
) -> Sets:
    """Open --data and --bank, pick the queries (named, else drawn), check --k against what a query can retrieve;
    labels by class name (``renamed``: readable names of the classes)."""
    i = inputs
    source = open_source(data, i.data_root, i.download, i.limit)
    same = not bank or list(bank) == list(data)
    bank_source = source if same else open_source(bank, i.data_root, i.download, i.limit, what="--bank")
    ids, bank_ids = sample_index(source)[0], sample_index(bank_source)[0]
    positions = named_queries(ids, named) if named else drawn_queries(settings.queries, len(ids), i.seed)
    row = {key: r for r, key in enumerate(bank_ids)}
    exclude = torch.tensor([row.get(ids[p], -1) for p in positions], dtype=torch.long)
    reachable = len(bank_ids) - int((exclude >= 0).any())
    if settings.k > reachable:
        itself = " (a query never retrieves itself)" if (exclude >= 0).any() else ""
        raise BarlowTwinsError(
            f"--k {settings.k} is more than the {reachable} bank samples a query can retrieve{itself}; "
            "lower --k or pass a larger --bank"
        )
    labels = label_names(source, renamed)
    bank_labels = labels if same else label_names(bank_source, renamed)
    query_labels = [labels[p] for p in positions]
    query_ids = [ids[p] for p in positions]
    return Sets(bank_source, source, positions, query_ids, query_labels, list(bank_ids), bank_labels, exclude, same)


class Panel(NamedTuple):
    """One backbone's neighbours of the queries, with its bank features (rows in sample order)."""

    name: str
    features: torch.Tensor
    indices: torch.Tensor  # (queries, k) bank rows, nearest first
    similarities: torch.Tensor  # (queries, k) cosine similarities
    hits: list[list[bool | None]]
    hit_rate: float | None  # over the queries' neighbours
    bank_hit_rate: float | None  # over every bank sample's own k neighbours (up to SCORED_LIMIT of them)


Features = Callable[[nn.Module, ImageSource, str], torch.Tensor]


def extractor(e: Evaluation, batch_size: int) -> Features:
    """``features(backbone, source, progress)``: the one extractor, rows put in ``sample_index`` order (shard
    batches from several workers arrive interleaved)."""
    transform = e.images.transform()

    def features(backbone: nn.Module, source: ImageSource, progress: str) -> torch.Tensor:
        loader = batches(source, transform, batch_size, e.workers, e.device)
        got = extract(backbone, loader, e.device, progress=progress)
        row = {key: r for r, key in enumerate(got.ids)}
        return got.features[[row[key] for key in sample_index(source)[0]]]

    return features


def bank_hit_rate(bank: torch.Tensor, labels: Sequence[str | None], k: int, seed: int) -> float | None:
    """The hit rate of every bank sample's own k nearest others (a seeded draw of SCORED_LIMIT of them if more)."""
    k = min(k, len(bank) - 1)
    if k < 1 or all(label is None for label in labels):
        return None
    rows = torch.arange(len(bank))
    if len(bank) > SCORED_LIMIT:
        rows = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:SCORED_LIMIT]
    indices, _ = nearest(bank[rows], bank, k, exclude=rows)
    return hit_rate(same_label([labels[r] for r in rows.tolist()], labels, indices))


def neighbours_of(name: str, backbone: nn.Module, sets: Sets, k: int, seed: int, features: Features) -> Panel:
    """The k nearest bank samples of each query for one backbone, with its hit rates."""
    bank = features(backbone, sets.bank, f"{name}: bank")
    if sets.same:
        queries = bank[sets.positions]
    else:
        chosen = sorted(set(sets.positions))
        rows = features(backbone, select_samples(sets.data, chosen, "the queries"), f"{name}: queries")
        queries = rows[[chosen.index(p) for p in sets.positions]]
    indices, similarities = nearest(queries, bank, k, sets.exclude)
    hits = same_label(sets.query_labels, sets.bank_labels, indices)
    return Panel(
        name, bank, indices, similarities, hits, hit_rate(hits), bank_hit_rate(bank, sets.bank_labels, k, seed)
    )


TITLES = {"pretrained": "pretrained", "random_init": "random init (the floor)", "baseline": "baseline"}


def _titles(panel: Panel, bank_size: int) -> tuple[str, str]:
    """Its name and hit rate over the shown neighbours; its hit rate over the bank."""
    name = TITLES.get(panel.name, panel.name)
    if panel.hit_rate is None:
        return name, "no labels: grey frames"
    q, k = panel.indices.shape
    scored = f"{bank_size} photos" if bank_size <= SCORED_LIMIT else f"{SCORED_LIMIT} drawn photos"
    over_bank = "" if panel.bank_hit_rate is None else f"over the bank: {panel.bank_hit_rate:.0%} ({scored})"
    return f"{name}: hit rate {panel.hit_rate:.0%} ({q} x {k} shown)", over_bank


def draw(sets: Sets, panels: Sequence[Panel], side: int) -> Image.Image:
    """The picture of every panel's neighbours of the queries (thumbnails of the original photos)."""
    wanted = sorted({j for panel in panels for j in panel.indices.flatten().tolist()})
    pictures = dict(zip(wanted, thumbnails(sets.bank, wanted, side), strict=True))
    drawn = [
        PanelPicture(
            _titles(panel, len(sets.bank_ids)),
            [[pictures[j] for j in row] for row in panel.indices.tolist()],
            panel.similarities.tolist(),
            [[sets.bank_labels[j] for j in row] for row in panel.indices.tolist()],
            panel.hits,
        )
        for panel in panels
    ]
    k = panels[0].indices.shape[1]
    labelled = any(h is not None for panel in panels for row in panel.hits for h in row)
    frames = "; frames: green the query's label, red another" if labelled else ""
    header = f"{k} nearest photos of each query (blue) in {sets.bank.description}, cosine similarity under each{frames}"
    query_lines = [(label or "", Path(key).name) for label, key in zip(sets.query_labels, sets.query_ids, strict=True)]
    return draw_neighbours(header, thumbnails(sets.data, sets.positions, side), query_lines, drawn, side)


def projector_rows(bank_size: int, points: int, seed: int) -> list[int]:
    """The bank rows the projector shows: all, or a seeded draw of ``points`` in sample order."""
    if bank_size <= points:
        return list(range(bank_size))
    return sorted(torch.randperm(bank_size, generator=torch.Generator().manual_seed(seed))[:points].tolist())


def write_points(directory: Path, sets: Sets, panels: Sequence[Panel], settings: NeighboursConfig, seed: int) -> Path:
    """TensorBoard projector files for (up to ``projector_points`` of) the bank, one embedding per backbone."""
    rows = projector_rows(len(sets.bank_ids), settings.projector_points, seed)
    pictures = np.stack(thumbnails(sets.bank, rows, settings.sprite_size))
    embeddings = {panel.name: panel.features[rows] for panel in panels}
    labels, files = [sets.bank_labels[r] for r in rows], [sets.bank_ids[r] for r in rows]
    return write_projector(directory, embeddings, labels, files, pictures)


def _results(sets: Sets, panel: Panel) -> dict:
    """A panel as JSON: its hit rates, and each query's neighbours (id, label, similarity)."""
    queries = []
    for q, (indices, similarities) in enumerate(zip(panel.indices.tolist(), panel.similarities.tolist(), strict=True)):
        found = [
            {"id": sets.bank_ids[j], "label": sets.bank_labels[j], "similarity": round(s, 4)}
            for j, s in zip(indices, similarities, strict=True)
        ]
        queries.append({"id": sets.query_ids[q], "label": sets.query_labels[q], "neighbours": found})
    return {"hit_rate": panel.hit_rate, "bank_hit_rate": panel.bank_hit_rate, "queries": queries}


def run(
    inputs: EvalInputs,
    settings: NeighboursConfig,
    data: Sequence[str],
    queries: Sequence[str] = (),
    bank: Sequence[str] | None = None,
    out: str = "",
    class_names: str = "",
) -> Path:
    """``neighbours.png``, TensorBoard projector files and ``neighbours.json`` in ``out`` (default: ``eval/neighbours/``
    in the run directory, or ``<weights>-neighbours/`` beside them). Returns the picture's path."""
    check_ranges(inputs)
    check_ranges(settings, "neighbours")
    renamed = read_class_names(class_names) if class_names else None
    sets = open_sets(inputs, data, bank, queries, settings, renamed)
    points = min(settings.projector_points, len(sets.bank_ids))
    if points:
        check_sprite(points, settings.sprite_size)
    directory = Path(out) if out else output_path(dataclasses.replace(inputs, out=""), "neighbours").with_suffix("")
    e = prepare(dataclasses.replace(inputs, out=str(directory / "neighbours.json")), "neighbours", data=False)
    features = extractor(e, settings.batch_size)
    panels = [neighbours_of(n, s.backbone, sets, settings.k, inputs.seed, features) for n, s in e.subjects.items()]
    picture = save_png(draw(sets, panels, settings.thumbnail), directory / "neighbours.png")
    files = {"picture": str(picture)}
    if points:
        files["projector"] = str(write_points(directory, sets, panels, settings, inputs.seed))
    for panel in (p for p in panels if p.hit_rate is not None):
        over_bank = "" if panel.bank_hit_rate is None else f"; over the bank {panel.bank_hit_rate:.1%}"
        e.log(f"{panel.name}: hit rate (neighbours with the query's label) {panel.hit_rate:.1%}{over_bank}")
    e.log(f"wrote {picture}" + (f"; tensorboard --logdir {directory} shows the projector" if points else ""))
    results = {panel.name: _results(sets, panel) for panel in panels}
    extra = {"data": sets.data.description, "bank": sets.bank.description, "class_names": renamed, "files": files}
    e.write("nearest neighbours by cosine similarity of frozen backbone features", settings, results, **extra)
    return picture
