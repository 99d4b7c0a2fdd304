"""BYOL (Grill et al. 2020) in the same harness: an online network (backbone, projector of ``model.projector``,
predictor) regresses a momentum target network (backbone, projector) of the other view (paper Fig. 2's baseline).

The predictor is BYOL's MLP (Linear -> BN -> ReLU -> Linear); with ``model.predictor`` empty or ``auto`` it is
sized from the projector: hidden = the projector's first width, output = its output width (BYOL: projector
4096-256, predictor 4096-256). The target is a copy of the online backbone and projector at step 0, excluded
from the optimiser (``requires_grad=False``), updated in ``after_step`` with the cosine momentum schedule, and
saved in the checkpoint with the rest (its parameters are in ``state_dict``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.losses.byol import regression_loss, target_momentum, update_target
from barlowtwins.models.backbones import as_backbone
from barlowtwins.models.base import Backbone, one_d_parameter_names
from barlowtwins.models.heads import build_predictor, build_projector


class BYOL(nn.Module):
    """``forward(y_a, y_b)``: the symmetric loss ``l(p_a, z'_b) + l(p_b, z'_a)`` with ``l = 2 - 2 cos``."""

    terms = ("loss",)
    diagnostics = ("momentum",)  # the target's tau at the last update
    logged = terms + diagnostics
    shown = ("loss",)

    def __init__(
        self, backbone: Backbone | nn.Module, projector: nn.Module, predictor: nn.Module, base_momentum: float
    ):
        super().__init__()
        backbone = as_backbone(backbone)  # any module: see BarlowTwins
        self.backbone = backbone.module
        self.feature_dim = backbone.dim
        self.projector = projector
        self.predictor = predictor
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = base_momentum
        self.register_buffer("momentum", torch.tensor(base_momentum))
        self._backbone_no_decay = backbone.no_decay

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor) -> dict[str, torch.Tensor]:
        p_a = self.predictor(self.projector(self.backbone(y_a)))
        p_b = self.predictor(self.projector(self.backbone(y_b)))
        with torch.no_grad():
            t_a = self.target_projector(self.target_backbone(y_a))
            t_b = self.target_projector(self.target_backbone(y_b))
        loss = regression_loss(p_a, t_b) + regression_loss(p_b, t_a)
        return {"loss": loss, "momentum": self.momentum.clone()}

    def no_weight_decay(self) -> set[str]:
        heads = {"projector": self.projector, "predictor": self.predictor}
        excluded = {f"{head}.{name}" for head, m in heads.items() for name in one_d_parameter_names(m)}
        return {f"backbone.{name}" for name in self._backbone_no_decay} | excluded

    def restart_target(self) -> None:
        """The target as at step 0, a copy of the online backbone and projector (after ``--init`` loaded them)."""
        self.target_backbone.load_state_dict(self.backbone.state_dict())
        self.target_projector.load_state_dict(self.projector.state_dict())

    def after_step(self, step: int, total_steps: int) -> None:
        """Move the target towards the online network with tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2."""
        momentum = target_momentum(step, total_steps, self.base_momentum)
        update_target(self.backbone, self.target_backbone, momentum)
        update_target(self.projector, self.target_projector, momentum)
        self.momentum.fill_(momentum)


def build(backbone: Backbone, model: ModelConfig, loss: LossConfig) -> BYOL:
    """BYOL with the projector of ``model.projector``, a predictor sized as ``model.predictor`` (or ``auto``)."""
    projector = build_projector(backbone.dim, model.projector, model.projector_bn)
    out_dim = int(model.projector.split("-")[-1])
    predictor = build_predictor(out_dim, model.predictor or "auto", model.projector)
    return BYOL(backbone, projector, predictor, model.momentum)
