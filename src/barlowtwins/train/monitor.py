"""Watching a run while it trains (not in the paper; the libraries' tools): kNN on held-out data, an online
linear probe, pictures of C and of the embedding spectrum, and a collapse alarm.

Pure functions first (a block of C and the spectrum of z standardised as the loss does, the effective rank, the
alarm), then :class:`OnlineProbe`, :func:`knn_images` and :class:`Monitor`, which the loop calls once a step and
at its logged rows. Nothing here changes what is trained: kNN runs on a copy of the backbone in eval mode, the
pictures read the embeddings the training step computed anyway (the method exposes them detached), the probe
trains on detached features with its own optimiser.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from barlowtwins.atomic import atomic_write_bytes
from barlowtwins.config import AugmentConfig, KnnConfig, MonitorConfig
from barlowtwins.data import ImageSource, in_memory, open_source, resolve_workers
from barlowtwins.data.cache import DecodedImages
from barlowtwins.data.loaders import decoded
from barlowtwins.evaluate.features import extract
from barlowtwins.evaluate.knn import knn_accuracy
from barlowtwins.losses.barlow_twins import standardize_local
from barlowtwins.plots import correlation_figure, png_bytes, spectrum_figure
from barlowtwins.views import CropNormalize, eval_resize

logger = logging.getLogger(__name__)

RANKME_EPS = 1e-7  # Garrido et al. 2023's epsilon in p_k = sigma_k / ||sigma||_1 + eps
CONSTANT_TOLERANCE = 1e-4  # a dimension whose std along the batch is below this share of its mean is constant


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """C[:block, :block] of paper eq. 2: standardisation is per dimension, so the block needs those columns only."""
    za, zb = standardize_local(z_a[:, :block]), standardize_local(z_b[:, :block])
    return za.T @ zb / len(za)


def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values of the standardised embeddings, largest first (min(N, D) of them)."""
    return torch.linalg.svdvals(standardize_local(z))


def effective_rank(values: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular values,
    p_k = sigma_k / ||sigma||_1 + eps. D equal values give D, one non-zero value gives 1, all zero give 0."""
    total = values.double().abs().sum()
    if total == 0:
        return 0.0
    p = values.double().abs() / total + eps
    return math.exp(-(p * p.log()).sum().item())


def constant_fraction(z: torch.Tensor, tolerance: float = CONSTANT_TOLERANCE) -> float:
    """Share of the dimensions of ``z`` (N, D) that are constant along the batch: std <= tolerance x their scale."""
    z = z.float()
    std, mean = z.std(dim=0, unbiased=False), z.mean(dim=0).abs()
    return (std <= tolerance * (mean + 1e-6)).float().mean().item()


def collapse_alarm(
    rank: float,
    constant: float,
    batch: int,
    width: int,
    rank_fraction: float = MonitorConfig.alarm_rank_fraction,
    max_constant: float = MonitorConfig.alarm_constant,
) -> str | None:
    """A one-line reason when the embeddings look collapsed, else None.

    Dimensional collapse: effective rank below ``rank_fraction`` x min(batch, width), or below 2 (one direction).
    Complete collapse: more than ``max_constant`` of the dimensions constant (standardisation maps them to 0, so
    their C_ii is 0). A low mean diag(C) alone is no alarm: it is near 0 at initialisation, when the twins'
    embeddings are still unrelated.
    """
    reasons = []
    floor = max(2.0, rank_fraction * min(batch, width))
    if rank < floor:
        reasons.append(f"effective rank {rank:.2f} < {floor:.2f}")
    if constant > max_constant:
        reasons.append(f"{100 * constant:.0f}% of the embedding dimensions are constant")
    return "; ".join(reasons) or None


class OnlineProbe:
    """A linear classifier trained each step on detached backbone features with its own SGD (solo-learn's
    and lightly's online probe); reports its running training accuracy since the last report."""

    def __init__(self, dim: int, num_classes: int, lr: float, device: torch.device):
        self.linear = nn.Linear(dim, num_classes).to(device)
        nn.init.zeros_(self.linear.weight)  # no random draw: the run's random state stays untouched
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=0.9)
        self.counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct, seen, summed loss

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.to(features.device)
        keep = (labels >= 0) & (labels < self.linear.out_features)  # unlabelled (-1) or classes beyond the count
        if not keep.any():
            return
        with torch.autocast(features.device.type, enabled=False):
            logits = self.linear(features[keep].float())
            loss = F.cross_entropy(logits, labels[keep])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == labels[keep]).sum()
            self.counts += torch.stack([correct.double(), keep.sum().double(), loss.detach().double() * keep.sum()])

    def report(self) -> dict[str, float]:
        """``probe_acc`` (percent) and ``probe_loss`` over the steps since the last report; then resets."""
        correct, seen, loss = self.counts.tolist()
        self.counts.zero_()
        return {"probe_acc": 100.0 * correct / seen, "probe_loss": loss / seen} if seen else {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "linear": self.linear.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.counts.copy_(state["counts"])


def eval_batches(
    images: DecodedImages, size: int, mean, std, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Test-time views of decoded images stored at the resize side (``views.eval_resize``), finished by the
    evaluation transform's own :class:`~barlowtwins.views.CropNormalize`, in ``(images, labels, ids)`` batches."""
    view = CropNormalize(size, mean, std)
    for start in range(0, len(images), batch_size):
        rows = np.arange(start, min(start + batch_size, len(images)))
        yield view(images.batch(rows)), torch.from_numpy(images.labels[rows]), [images.ids[i] for i in rows]


def _first(source: ImageSource, entries: tuple[str, ...], root: str, download: bool, count: int) -> ImageSource:
    """The first ``count`` samples of an opened source (map-style), or re-opened with a limit (shards)."""
    if source.samples is not None:
        return in_memory(source.samples.subset(range(min(count, source.num_samples))), source.description)
    return open_source(entries, root, download, count)


def knn_images(
    source: ImageSource,
    train: tuple[str, ...],
    eval_data: tuple[str, ...],
    root: str,
    download: bool,
    bank_limit: int,
    query_limit: int,
    image_size: int,
    cache: str,
    cache_dir: str,
    workers: int,
) -> tuple[DecodedImages, DecodedImages]:
    """The monitor's kNN (bank, queries): the first ``bank_limit`` samples of the training ``source`` (opened from
    ``train``) and the first ``query_limit`` of ``eval_data``, decoded once at the test-time resize side
    (``views.eval_resize``) in the store ``cache`` picks ("off" counts as "auto": keeping them is the point)."""
    mode, side, workers = cache if cache != "off" else "auto", eval_resize(image_size), resolve_workers(workers)
    queries = open_source(eval_data, root, download, query_limit, what="--eval-data")
    queries = decoded(queries, side, mode, cache_dir, workers)
    bank = decoded(_first(source, train, root, download, bank_limit), side, mode, cache_dir, workers)
    return bank, queries


class Monitor:
    """What the loop calls: ``train_probe`` every step, ``due``/``watch`` for rows, ``state_dict`` to save."""

    scalars = ("knn_top1", "probe_acc", "probe_loss", "effective_rank")  # TensorBoard scalars among the fields

    def __init__(
        self,
        method: nn.Module,
        run,
        steps_per_epoch: int,
        device: torch.device,
        *,
        bank: DecodedImages | None = None,
        queries: DecodedImages | None = None,
        training_labels: np.ndarray | None = None,
        image_size: int = AugmentConfig.image_size,
        mean: tuple[float, float, float] = AugmentConfig.mean,
        std: tuple[float, float, float] = AugmentConfig.std,
        knn_k: int = KnnConfig.k[0],
        knn_temperature: float = KnnConfig.temperature,
        knn_batch_size: int = KnnConfig.batch_size,
        knn_every_epochs: float = MonitorConfig.knn_every_epochs,
        knn_bank_limit: int = MonitorConfig.knn_bank_limit,
        probe: bool = MonitorConfig.probe,
        probe_lr: float = MonitorConfig.probe_lr,
        picture_every: int = MonitorConfig.picture_every,
        picture_block: int = MonitorConfig.picture_block,
        alarm_rank_fraction: float = MonitorConfig.alarm_rank_fraction,
        alarm_constant: float = MonitorConfig.alarm_constant,
        state: dict[str, Any] | None = None,
    ):
        """kNN on ``bank`` and ``queries`` (from :func:`knn_images`, main process), the probe on the classes their
        labels and ``training_labels`` know, the pictures; says in one line what is on. Defaults: the config's."""
        self.run, self.method, self.steps_per_epoch, self.device = run, method, steps_per_epoch, device
        self.image_size, self.mean, self.std = image_size, mean, std
        self.knn_k, self.knn_temperature, self.knn_batch_size = knn_k, knn_temperature, knn_batch_size
        self.knn_every_epochs, self.probe_lr = knn_every_epochs, probe_lr
        self.picture_every, self.picture_block = picture_every, picture_block
        self.alarm_rank_fraction, self.alarm_constant = alarm_rank_fraction, alarm_constant
        self.bank = self.queries = self.probe = None
        if not run.main:
            return
        notes = []
        if bank is not None:
            self.bank, self.queries = bank, queries
            if (bank.labels < 0).all():
                notes.append("kNN off: the training data (the bank) has no labels")
                self.bank = None
            else:
                every = "at ~10 epoch ends" if knn_every_epochs < 0 else f"every {knn_every_epochs:g} epochs"
                notes.append(
                    f"kNN (k={knn_k}) {every} on {len(queries)} samples of data.eval, the bank "
                    f"the first {len(bank)} training samples (monitor.knn_bank_limit {knn_bank_limit})"
                )
        exposes = hasattr(method, "expose_embeddings")
        if probe and exposes:
            self.probe = self._make_probe(training_labels, notes)
            if self.probe is not None and state and state.get("probe"):
                self.probe.load_state_dict(state["probe"])
        if picture_every != 0 and exposes:
            every = "at epoch ends" if picture_every < 0 else f"every {picture_every} steps"
            notes.append(f"pictures of C and the spectrum {every} in {run.path / 'monitor'}")
        method.expose_embeddings = exposes and (self.probe is not None or picture_every != 0)
        logger.info("monitor: %s", "; ".join(notes) or "off")

    def _make_probe(self, training_labels: np.ndarray | None, notes: list[str]) -> OnlineProbe | None:
        labels = [images.labels for images in (self.bank, self.queries) if images is not None]
        if training_labels is not None:
            labels.append(np.asarray(training_labels))
        top = max((int(known.max()) for known in labels if len(known)), default=-1)
        if top < 0:
            notes.append("online probe off: no labels known (unlabelled data, or shards without --eval-data)")
            return None
        notes.append(f"online linear probe on {top + 1} classes")
        return OnlineProbe(self.method.feature_dim, top + 1, self.probe_lr, self.device)

    def train_probe(self, terms: dict[str, Any], labels: torch.Tensor) -> None:
        """One probe step on the step's detached view-A features; off (with a note) for an unlabelled batch."""
        if self.probe is None:
            return
        if (torch.as_tensor(labels) < 0).all():
            logger.info("monitor: online probe off: the training batches carry no labels")
            self.probe = None
            return
        self.probe.step(terms["h_a"], torch.as_tensor(labels))

    def _knn_due(self, step: int, total: int) -> bool:
        every, epoch = self.knn_every_epochs, self.steps_per_epoch
        if self.bank is None or every == 0:
            return False
        if every > 0:
            return step % max(1, round(every * epoch)) == 0 or step == total
        return step == total or (step % epoch == 0 and step * 10 // total != (step - epoch) * 10 // total)

    def _picture_due(self, step: int, total: int) -> bool:
        every = self.picture_every
        if not self.method.expose_embeddings or every == 0:
            return False
        return step == total or step % (every if every > 0 else self.steps_per_epoch) == 0

    def due(self, step: int, total: int) -> bool:
        """Whether ``step`` gets a kNN or pictures (then the loop writes a row even off its log cadence)."""
        return self.run.main and (self._knn_due(step, total) or self._picture_due(step, total))

    def watch(self, step: int, total: int, terms: dict[str, Any]) -> dict[str, Any]:
        """The monitor's fields of the row of ``step``: probe accuracy, and kNN / pictures when due."""
        if not self.run.main:
            return {}
        fields = self.probe.report() if self.probe is not None else {}
        if self._knn_due(step, total):
            fields.update(self.knn())
        if self._picture_due(step, total):
            fields.update(self.pictures(step, terms["z_a"], terms["z_b"]))
        return fields

    def knn(self) -> dict[str, Any]:
        """kNN top-1 (percent) of the current backbone (a copy, eval mode) on the cached bank and queries."""
        backbone = copy.deepcopy(self.method.backbone)  # extract() sets eval mode and the memory format
        view = (self.image_size, self.mean, self.std, self.knn_batch_size)
        bank, queries = (
            extract(backbone, eval_batches(images, *view), self.device) for images in (self.bank, self.queries)
        )
        k = self.knn_k
        accuracy = knn_accuracy(
            bank.features, bank.labels, queries.features, queries.labels, (k,), self.knn_temperature
        )
        return {"knn_top1": accuracy[k], "knn_k": k, "knn_bank": len(self.bank)}

    @torch.no_grad()
    def pictures(self, step: int, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, Any]:
        """C's block and the spectrum as PNGs (monitor/ and TensorBoard), the effective rank, the alarm."""
        values = singular_values(z_a).cpu()
        rank = effective_rank(values)
        diag_mean = (standardize_local(z_a) * standardize_local(z_b)).mean(dim=0).mean().item()  # mean diag(C), all D
        block = cross_correlation(z_a, z_b, self.picture_block).cpu().numpy()
        folder = self.run.path / "monitor"
        folder.mkdir(exist_ok=True)
        for name, figure in (
            ("c", correlation_figure(block, step)),
            ("spectrum", spectrum_figure(values.numpy(), rank, step)),
        ):
            png = png_bytes(figure, dpi=80)  # drawn once for both files and TensorBoard
            atomic_write_bytes(png, folder / f"{name}-step{step:06d}.png")
            atomic_write_bytes(png, folder / f"{name}.png")  # the latest, never half-written
            self.run.add_png(f"monitor/{name}", png, step)
        constant = constant_fraction(z_a)
        batch, width = z_a.shape
        alarm = collapse_alarm(rank, constant, batch, width, self.alarm_rank_fraction, self.alarm_constant)
        if alarm:
            logger.warning("collapse at step %d: %s", step, alarm)
        return {"effective_rank": rank, "c_diag_mean": diag_mean, "constant_dims": constant, "alarm": alarm}

    def state_dict(self) -> dict[str, Any] | None:
        return {"probe": self.probe.state_dict()} if self.probe is not None else None
