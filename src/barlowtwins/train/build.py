"""What a run trains with, built from its config (paper §2.2): the method and its optimiser, the data and its
batches, ``--init``'s weights, the monitor, and the precision ``auto`` measures.
:func:`~barlowtwins.train.loop.pretrain` calls these, then runs the loop.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from barlowtwins import distributed, methods
from barlowtwins.config import PretrainConfig
from barlowtwins.data import ImageSource, open_source
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.init_weights import initialise
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import Backbone, initial_backbone
from barlowtwins.optim import build_optimizer
from barlowtwins.runtime import autocast_dtype, fastest_dtype, precision_name, probe_samples, select_device
from barlowtwins.train.monitor import Monitor, knn_images
from barlowtwins.train.preflight import check_batch_size, check_evaluation_data
from barlowtwins.train.resolution import resize_views
from barlowtwins.train.run_dir import RunDir, holds_checkpoint
from barlowtwins.views.batches import view_batches

logger = logging.getLogger(__name__)


def build_method(config: PretrainConfig, backbone: Backbone | nn.Module | None = None) -> nn.Module:
    """The method's networks and loss, the backbone initialised from ``train.seed`` (see ``initial_backbone``)
    unless a module built in Python is given (``custom_backbone``, or any module: ``as_backbone``)."""
    model = config.model
    if model.method not in METHODS:  # before building a backbone
        raise BarlowTwinsError(f"model.method must be one of {', '.join(METHODS)} (got '{model.method}')")
    if backbone is None:
        backbone = initial_backbone(model.arch, model.small_stem, config.train.seed, model.stem_stride)
    return methods.build_method(model.method, backbone, model, config.loss, config.augment.image_size)


def run_optimizer(config: PretrainConfig, method: nn.Module) -> torch.optim.Optimizer:
    """The optimiser a run of ``config`` trains ``method`` with (``optim`` settings, ``train.batch_size``)."""
    optim = config.optim
    return build_optimizer(
        method,
        method.no_weight_decay(),
        optim.optimizer,
        config.train.batch_size,
        optim.lr_weights,
        optim.lr_biases,
        optim.weight_decay,
        optim.momentum,
        optim.lars_eta,
        optim.clip_lr,
    )


@dataclass
class Setup:
    method: nn.Module  # unwrapped, for state_dict and after_step
    trainer: nn.Module  # the method, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    source: ImageSource
    device: torch.device
    memory_format: torch.memory_format
    steps_per_epoch: int
    init: dict[str, Any] | None = None  # what --init took, for meta.json (None: not applied)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, on only for fp16 autocast (fp32 and bf16 need none)."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(precision, device) == torch.float16)


def build_setup(config: PretrainConfig, backbone: Backbone | nn.Module | None = None) -> Setup:
    training, data = config.train, config.data
    device, local_rank = distributed.join(select_device(training.device), training.batch_size)
    source = open_source(data.train, data.root, data.download, data.limit)
    check_batch_size(training.batch_size, source.num_samples)
    check_evaluation_data(config, source)  # what the kNN at the end needs fails now, before the run directory
    method = build_method(config, backbone)
    init = _init(config, method) if config.model.init and not holds_checkpoint(Path(training.out)) else None
    if distributed.is_distributed():
        method = distributed.convert_sync_batchnorm(method, device.type)
    memory_format = torch.channels_last if training.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = run_optimizer(config, method)
    trainer = method
    if distributed.is_distributed():
        trainer = nn.parallel.DistributedDataParallel(
            method, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if training.compile:
        trainer = torch.compile(trainer)
    steps_per_epoch = source.num_samples // training.batch_size
    return Setup(method, trainer, optimizer, source, device, memory_format, steps_per_epoch, init)


def _init(config: PretrainConfig, method: nn.Module) -> dict[str, Any]:
    """``--init`` on a fresh run, on every process alike, before DDP (a resumed run never re-reads it)."""
    model, images = config.model, config.augment
    settings = (model.arch, model.small_stem, model.stem_stride, images.mean, images.std)
    return initialise(method, model.init, *settings, log=distributed.is_main_process())


def build_monitor(config: PretrainConfig, setup: Setup, run: RunDir, state: dict[str, Any] | None) -> Monitor:
    """The run's :class:`Monitor` from the ``monitor``, ``knn``, ``augment`` and ``data`` settings; the main
    process decodes the kNN bank and queries (data.limit / data.eval_limit within the monitor's own limits)."""
    watch, data, images = config.monitor, config.data, config.augment
    bank = queries = None
    if run.main and watch.knn_every_epochs != 0 and data.eval:
        bank_limit = min(data.limit or watch.knn_bank_limit, watch.knn_bank_limit)
        query_limit = min(data.eval_limit or watch.knn_query_limit, watch.knn_query_limit)
        bank, queries = knn_images(
            setup.source,
            data.train,
            data.eval,
            data.root,
            data.download,
            bank_limit,
            query_limit,
            images.image_size,
            data.cache,
            data.cache_dir,
            data.workers,
        )
    samples = setup.source.samples
    return Monitor(
        setup.method,
        run,
        setup.steps_per_epoch,
        setup.device,
        bank=bank,
        queries=queries,
        training_labels=samples.labels if samples is not None else None,
        image_size=images.image_size,
        mean=images.mean,
        std=images.std,
        knn_k=config.knn.k[0],
        knn_temperature=config.knn.temperature,
        knn_batch_size=config.knn.batch_size,
        knn_every_epochs=watch.knn_every_epochs,
        knn_bank_limit=watch.knn_bank_limit,
        probe=watch.probe,
        probe_lr=watch.probe_lr,
        picture_every=watch.picture_every,
        picture_block=watch.picture_block,
        alarm_rank_fraction=watch.alarm_rank_fraction,
        alarm_constant=watch.alarm_constant,
        state=state,
    )


def training_batches(
    config: PretrainConfig, setup: Setup, step: int, side: Callable[[], int] | None = None
) -> Iterator:
    """This process's training batches from ``step`` on (:func:`barlowtwins.views.batches.view_batches`), views
    A and B made at ``side()`` where the data path allows (None: at ``augment.image_size``)."""
    return view_batches(config, setup.device, setup.source, step, side)


def on_device(views, setup: Setup) -> list[torch.Tensor]:
    return [view.to(setup.device, non_blocking=True, memory_format=setup.memory_format) for view in views]


def choose_precision(
    config: PretrainConfig, setup: Setup, views: list[torch.Tensor], main: bool, resumed: str | None
) -> torch.dtype | None:
    """The autocast dtype; ``auto`` on a CPU measures fp32 against bf16 on a copy of the model (same on all ranks),
    except when resuming: a run keeps the precision it started with (``resumed``), so it resumes bit for bit.
    The measured views are at ``augment.image_size`` (the side of the run's last steps, whatever side the first
    batch was made at under low resolution first)."""
    if config.train.precision != "auto" or setup.device.type != "cpu":
        return autocast_dtype(config.train.precision, setup.device)
    if resumed is not None:
        return autocast_dtype(resumed, setup.device)
    views = resize_views(views, config.augment.image_size)  # a no-op for views made at full size
    probe = copy.deepcopy(setup.method).eval()  # eval: no batch-norm statistics change, no collectives
    # a quarter batch and the scout's few: the ratio is what counts (small views: as many per small view)
    quarter, scout = (
        [view[: k * (len(view) // len(views[0]))] for view in views] for k in probe_samples(len(views[0]))
    )

    def forward_backward(dtype: torch.dtype | None, few: bool) -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            loss = probe(*(scout if few else quarter))["loss"]
        loss.backward()

    dtype, seconds = fastest_dtype(forward_backward)
    dtype = distributed.broadcast_object(dtype)
    if main:
        shown = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
        logger.info("precision auto: measured forward + backward (%s); using %s", shown, precision_name(dtype))
    return dtype
