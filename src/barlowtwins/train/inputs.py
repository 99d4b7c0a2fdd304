"""The views of a run as ``barlowtwins views`` shows and times them, drawn through the training path itself.

:func:`barlowtwins.views.batches.view_batches` makes every training batch;
this module draws the first pairs of a run as pictures and a tensor, or times them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from barlowtwins.config import PretrainConfig
from barlowtwins.data import ImageSource, open_source, sample_index, select_samples
from barlowtwins.train.preflight import check_batch_size
from barlowtwins.views.batches import view_batches

__all__ = ["draw_views", "time_views", "write_views"]


def draw_views(
    config: PretrainConfig, count: int, device: torch.device | None = None
) -> tuple[torch.Tensor, list[str], ImageSource]:
    """The first ``count`` view pairs ``pretrain`` would train on with ``config`` (same code, same seeds), as
    uint8 (count, 2, 3, S, S), view A then view B, before normalisation; their sample ids, and the source."""
    source = _checked_source(config)
    mean = torch.tensor(config.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.augment.std).view(1, 3, 1, 1)
    pairs, ids = [], []
    for views, _, batch_ids in view_batches(config, device, source):
        pair = torch.stack([(v[: count - len(ids)].float().cpu() * std + mean) for v in views[:2]], dim=1)
        pairs.append(pair.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8))
        ids += batch_ids[: count - len(ids)]
        if len(ids) == count:
            return torch.cat(pairs), ids, source
    raise AssertionError("view_batches is endless")


def time_views(config: PretrainConfig, count: int, device: torch.device | None = None) -> tuple[float, float]:
    """Seconds until the first batch can be drawn (opening the data, building the store), then pairs/s of
    ``count`` view pairs drawn as training draws them (data + views alone, no model)."""
    import time

    started = time.perf_counter()
    batches = view_batches(config, device, _checked_source(config))
    ready = time.perf_counter()
    drawn = 0
    while drawn < count:
        views, _, _ = next(batches)
        drawn += len(views[0])
    if views[0].device.type == "cuda":
        torch.cuda.synchronize()
    return ready - started, drawn / (time.perf_counter() - ready)


def _checked_source(config: PretrainConfig) -> ImageSource:
    d = config.data
    source = open_source(d.train, d.root, d.download, d.limit)
    check_batch_size(config.train.batch_size, source.num_samples, flag="--set train.batch_size=")
    return source


def write_views(config: PretrainConfig, count: int, out: str | Path, shown: int = 16) -> Path:
    """``out/views.pt`` (the pairs of :func:`draw_views`) and ``out/views.png`` (the first ``shown`` of them, each
    beside its source image); returns ``out``."""
    from barlowtwins.plots import views_figure

    pairs, ids, source = draw_views(config, count)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(pairs, out / "views.pt.tmp")
    (out / "views.pt.tmp").replace(out / "views.pt")
    everyone, _ = sample_index(source)
    position = {name: i for i, name in enumerate(everyone)}
    picked = select_samples(source, [position[i] for i in ids[:shown]], "shown")
    by_id = {picked.samples.ids[i]: picked.samples[i][0] for i in range(picked.num_samples)}
    figure = views_figure([by_id[i] for i in ids[:shown]], pairs[:shown], ids[:shown], config.augment.image_size)
    figure.savefig(out / "views.png", dpi=100)
    return out
