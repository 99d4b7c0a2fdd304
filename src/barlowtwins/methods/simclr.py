"""SimCLR (Chen et al. 2020a) in the same harness: the shared backbone and projector of Barlow Twins (same
spec, same views), and the NT-Xent loss over the 2N views instead of eq. 1 (paper Fig. 2's baseline)."""

from __future__ import annotations

import torch
from torch import nn

from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.losses.nt_xent import nt_xent_terms
from barlowtwins.models.backbones import as_backbone
from barlowtwins.models.base import Backbone, one_d_parameter_names
from barlowtwins.models.heads import build_projector


class SimCLR(nn.Module):
    """Backbone + projector shared by the two views; ``forward`` returns NT-Xent and the mean cosines."""

    terms = ("loss",)
    diagnostics = ("positive_cos", "negative_cos")  # positives -> 1; negatives stay low
    logged = terms + diagnostics
    shown = ("loss", "positive_cos")

    def __init__(
        self, backbone: Backbone | nn.Module, projector: nn.Module, temperature: float = LossConfig.temperature
    ):
        super().__init__()
        backbone = as_backbone(backbone)  # any module: see BarlowTwins
        self.backbone = backbone.module
        self.feature_dim = backbone.dim
        self.projector = projector
        self.temperature = temperature
        self._backbone_no_decay = backbone.no_decay

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor) -> dict[str, torch.Tensor]:
        z_a = self.projector(self.backbone(y_a))
        z_b = self.projector(self.backbone(y_b))
        return nt_xent_terms(z_a, z_b, self.temperature)

    def no_weight_decay(self) -> set[str]:
        projector = {f"projector.{name}" for name in one_d_parameter_names(self.projector)}
        return {f"backbone.{name}" for name in self._backbone_no_decay} | projector

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing: one network."""


def build(backbone: Backbone, model: ModelConfig, loss: LossConfig) -> SimCLR:
    """SimCLR with the projector of ``model.projector`` and NT-Xent at ``loss.temperature``."""
    return SimCLR(backbone, build_projector(backbone.dim, model.projector, model.projector_bn), loss.temperature)
