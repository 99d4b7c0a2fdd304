"""Barlow Twins (paper §2, Algorithm 1): one backbone and projector for both views, and the loss of eq. 1."""

from __future__ import annotations

import torch
from torch import nn

from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.losses.barlow_twins import BarlowTwinsLoss
from barlowtwins.models.backbones import Backbone, one_d_parameter_names
from barlowtwins.models.heads import build_projector


class BarlowTwins(nn.Module):
    """Backbone + projector shared by the two views; ``forward(y_a, y_b)`` returns the loss and its terms.

    The views go through the network separately, as in the official code, so batch-norm statistics are
    per view. The loss runs in fp32 even under autocast (see :mod:`barlowtwins.losses.barlow_twins`).
    """

    terms = ("loss", "invariance", "redundancy")  # redundancy already carries the factor lambda
    diagnostics = ("on_diag_mean", "off_diag_rms", "off_diag_abs_mean")  # mean C_ii -> 1, off-diagonal -> 0
    logged = terms + diagnostics
    shown = ("loss", "on_diag_mean")  # on the progress bar
    expose_embeddings = False  # set by the run's monitor: forward also returns h_a, z_a, z_b (detached)

    def __init__(self, backbone: Backbone, projector: nn.Module, loss: BarlowTwinsLoss):
        super().__init__()
        self.backbone = backbone.module
        self.feature_dim = backbone.dim
        self.projector = projector
        self.loss = loss
        self._backbone_no_decay = backbone.no_decay

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor) -> dict[str, torch.Tensor | None]:
        h_a = self.backbone(y_a)
        z_a = self.projector(h_a)
        z_b = self.projector(self.backbone(y_b))
        terms = self.loss.terms(z_a, z_b)
        out = {name: getattr(terms, name) for name in self.logged}
        if self.expose_embeddings:  # for the online probe and the pictures of C; no gradient flows through them
            out.update(h_a=h_a.detach(), z_a=z_a.detach(), z_b=z_b.detach())
        return out

    def no_weight_decay(self) -> set[str]:
        """The backbone's excluded names and the projector's 1-D parameters (biases, BN), as the official code."""
        projector = {f"projector.{name}" for name in one_d_parameter_names(self.projector)}
        return {f"backbone.{name}" for name in self._backbone_no_decay} | projector

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing: both branches share their weights (BYOL updates its momentum target here)."""


def build(backbone: Backbone, model: ModelConfig, loss: LossConfig) -> BarlowTwins:
    """The paper's twin network: ``backbone``, the projector of ``model.projector``, the loss with ``loss.lambd``."""
    projector = build_projector(backbone.dim, model.projector, model.projector_bn)
    return BarlowTwins(backbone, projector, BarlowTwinsLoss(loss.lambd, loss.formulation))
