"""Self-supervised methods by name. A builder takes ``(backbone, model config, loss config)`` and returns an
``nn.Module`` whose ``forward(y_a, y_b)`` returns a dict of named terms (``"loss"`` among them), with:

* ``logged``: the term names written to metrics.jsonl and TensorBoard, in order;
* ``no_weight_decay()``: parameter names kept out of weight decay and LARS adaptation;
* ``after_step(step, total_steps)``: called after each optimiser step (a momentum target network updates here).
* optionally ``restart_target()``: make a momentum target a copy of the online network again (after ``--init``);
* optionally ``expose_embeddings``: when the run's monitor sets it, ``forward`` also returns ``h_a`` (backbone
  features of view A) and ``z_a``, ``z_b`` (embeddings), detached, for the online probe and the pictures of C.
"""

from __future__ import annotations

from torch import nn

from barlowtwins.config import AugmentConfig, LossConfig, ModelConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.methods import barlow_twins, byol, simclr
from barlowtwins.models.backbones import as_backbone
from barlowtwins.models.base import Backbone

METHODS = {"barlow_twins": barlow_twins.build, "simclr": simclr.build, "byol": byol.build}

# Settings only some methods read: any other method refuses a changed value instead of ignoring it.
READ_BY = {
    "loss.lambd": ("barlow_twins",),
    "loss.formulation": ("barlow_twins",),
    "loss.objective": ("barlow_twins",),
    "loss.scale": ("barlow_twins",),
    "loss.temperature": ("barlow_twins", "simclr"),  # Barlow Twins: Table 5's cross-entropy objective
    "model.predictor": ("barlow_twins", "byol"),
    "model.stop_gradient": ("barlow_twins",),
    "model.momentum": ("byol",),
}


def build_method(
    name: str,
    backbone: Backbone | nn.Module,
    model: ModelConfig,
    loss: LossConfig,
    image_size: int = AugmentConfig.image_size,
):
    """The method ``name`` on ``backbone`` (a plain module's width measured on ``image_size`` px images by
    :func:`~barlowtwins.models.backbones.as_backbone`); refuses settings the method would not read."""
    refuse_unread(name, model, loss)
    return METHODS[name](as_backbone(backbone, image_size), model, loss)


def refuse_unread(name: str, model: ModelConfig, loss: LossConfig) -> None:
    """Raise if ``name`` is not a method, or a setting differs from its default that ``name`` would not read."""
    if name not in METHODS:
        raise BarlowTwinsError(f"model.method must be one of {', '.join(METHODS)} (got '{name}')")
    sections = {"model": (model, ModelConfig()), "loss": (loss, LossConfig())}
    for key, readers in READ_BY.items():
        section, field = key.split(".")
        value, default = (getattr(config, field) for config in sections[section])
        if name not in readers and value != default:
            raise BarlowTwinsError(
                f"{key}={value!r} has no effect with --method {name} (read by {', '.join(readers)}); "
                f"remove it or set it to {default!r}"
            )
