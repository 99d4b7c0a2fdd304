"""Barlow Twins (paper §2, Algorithm 1): one backbone and projector for both views, and the loss of eq. 1.

Table 6's asymmetries are options: a predictor on branch A (``model.predictor``) and/or no gradient
through branch B (``model.stop_gradient``)."""

from __future__ import annotations

import torch
from torch import nn

from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.losses.barlow_twins import BarlowTwinsLoss
from barlowtwins.models.backbones import as_backbone
from barlowtwins.models.base import Backbone, one_d_parameter_names
from barlowtwins.models.heads import build_predictor, build_projector, predictor_spec
from barlowtwins.validation import parse_projector_spec


class BarlowTwins(nn.Module):
    """Backbone + projector shared by the two views; ``forward(y_a, y_b)`` returns the loss and its terms.

    The views go through the network separately, as in the official code, so batch-norm statistics are
    per view. The loss runs in fp32 even under autocast (see :mod:`barlowtwins.losses.barlow_twins`).

    ``scale`` (``loss.scale``, solo-learn's ``scale_loss``) multiplies the gradient of the returned ``loss``
    but not its value: the logged loss stays eq. 1's, comparable between runs of any scale (solo-learn logs
    the scaled one: multiply ours by the scale to compare). Under LARS the scale reaches the adapted weights
    only through weight decay; biases and BN parameters step in proportion to it.

    ``backbone`` may be any module (:func:`~barlowtwins.models.backbones.as_backbone`: a torchvision model
    loses its ``fc``, the width is measured); ``projector`` a module or a spec string such as ``"8192-8192-8192"``;
    ``loss`` defaults to eq. 1 with the paper's λ.
    """

    terms = ("loss", "invariance", "redundancy")  # redundancy already carries the factor lambda
    diagnostics = ("on_diag_mean", "off_diag_rms", "off_diag_abs_mean")  # mean C_ii -> 1, off-diagonal -> 0
    logged = terms + diagnostics
    shown = ("loss", "on_diag_mean")  # on the progress bar
    expose_embeddings = False  # set by the run's monitor: forward also returns h_a, z_a, z_b (detached)

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        projector: nn.Module | str = ModelConfig.projector,
        loss: BarlowTwinsLoss | None = None,
        predictor: nn.Module | None = None,
        stop_gradient: bool = False,
        scale: float = LossConfig.scale,
    ):
        super().__init__()
        backbone = as_backbone(backbone)
        self.scale = scale
        self.backbone = backbone.module
        self.feature_dim = backbone.dim
        self.projector = build_projector(backbone.dim, projector) if isinstance(projector, str) else projector
        self.loss = loss if loss is not None else BarlowTwinsLoss()
        self._backbone_no_decay = backbone.no_decay
        self.predictor = predictor  # branch A only (Table 6 (b), (c))
        self.stop_gradient = stop_gradient  # branch B (Table 6 (a), (c))

    def forward(
        self, y_a: torch.Tensor, y_b: torch.Tensor, y_small: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """``y_small``: small views (``augment.small_views`` per image, stacked view by view); the loss and its
        terms are then the mean over the pairs (A, B), (A, small j), (B, small j), the diagnostics (A, B)'s."""
        h_a = self.backbone(y_a)
        z_a = self.projector(h_a)
        if self.predictor is not None:
            z_a = self.predictor(z_a)
        if self.stop_gradient:
            with torch.no_grad():
                z_b = self.projector(self.backbone(y_b))
        else:
            z_b = self.projector(self.backbone(y_b))
        terms = self.loss.terms(z_a, z_b)
        out = {name: getattr(terms, name) for name in self.logged}
        if y_small is not None:
            z_small = self.projector(self.backbone(y_small)).split(len(z_a))
            pairs = [terms, *(self.loss.terms(z, z_s) for z in (z_a, z_b) for z_s in z_small)]
            out.update({name: torch.stack([getattr(p, name) for p in pairs]).mean() for name in self.terms})
        if self.scale != 1:  # value of the loss, gradient of scale x loss
            out["loss"] = self.scale * out["loss"] + (1 - self.scale) * out["loss"].detach()
        if self.expose_embeddings:  # for the online probe and the pictures of C; no gradient flows through them
            out.update(h_a=h_a.detach(), z_a=z_a.detach(), z_b=z_b.detach())
        return out

    def no_weight_decay(self) -> set[str]:
        """The backbone's excluded names and the projector's 1-D parameters (biases, BN), as the official code."""
        heads = {"projector": self.projector, "predictor": self.predictor}
        excluded = {f"{head}.{name}" for head, m in heads.items() if m is not None for name in one_d_parameter_names(m)}
        return {f"backbone.{name}" for name in self._backbone_no_decay} | excluded

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing: both branches share their weights (BYOL updates its momentum target here)."""


def build(backbone: Backbone, model: ModelConfig, loss: LossConfig) -> BarlowTwins:
    """The paper's twin network: ``backbone``, the projector of ``model.projector``, the loss of ``loss``
    (λ, formulation, Table 5 objective), and Table 6's predictor / stop-gradient when asked."""
    projector = build_projector(backbone.dim, model.projector, model.projector_bn)
    out_dim = parse_projector_spec(model.projector)[-1]
    predictor = build_predictor(out_dim, model.predictor, model.projector) if model.predictor else None
    if predictor is not None and parse_projector_spec(predictor_spec(model.predictor, model.projector))[-1] != out_dim:
        raise BarlowTwinsError(
            f"model.predictor '{model.predictor}' must end at the projector's output width {out_dim} "
            "(the loss compares it with branch B)"
        )
    objective = BarlowTwinsLoss(loss.lambd, loss.formulation, objective=loss.objective, temperature=loss.temperature)
    return BarlowTwins(backbone, projector, objective, predictor, model.stop_gradient, loss.scale)
