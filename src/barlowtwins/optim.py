"""LARS, parameter groups and the warm-up + cosine learning-rate schedule (paper §2.2, official code)."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

import torch
from torch import nn

from barlowtwins.config import OPTIMIZERS, OptimConfig


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) exactly as the official Barlow Twins code.

    For every parameter of a group with ``lars_adaptation=True``:
        g <- grad + weight_decay * p
        g <- g * eta * ||p|| / ||g||      (only when both norms are positive)
        m <- momentum * m + g;   p <- p - lr * m
    Groups with ``lars_adaptation=False`` (biases and BN parameters, via :func:`param_groups`) take
    plain momentum SGD steps; their ``weight_decay`` is 0 there.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = OptimConfig.momentum,
        eta: float = OptimConfig.lars_eta,
        lars_adaptation: bool = True,
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars_adaptation=lars_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"] != 0:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(update)
                    ones = torch.ones_like(param_norm)
                    trust = torch.where(
                        param_norm > 0,
                        torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, ones),
                        ones,
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def param_groups(
    model: nn.Module, no_decay: Collection[str], lr_weights: float, lr_biases: float, weight_decay: float
) -> list[dict]:
    """Two groups: weights (weight decay, LARS adaptation) and the parameters named in ``no_decay`` (neither,
    own lr). The names come from the model (``no_weight_decay()``), so no architecture is special-cased here.

    Each group keeps its peak learning rate as ``peak_lr``; :func:`set_learning_rate` scales it.
    """
    weights, excluded = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (excluded if name in no_decay else weights).append(param)
    return [
        {"params": weights, "peak_lr": lr_weights, "lr": lr_weights, "weight_decay": weight_decay},
        {"params": excluded, "peak_lr": lr_biases, "lr": lr_biases, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    no_decay: Collection[str],
    name: str,
    batch_size: int,
    lr_weights: float,
    lr_biases: float,
    weight_decay: float,
    momentum: float = OptimConfig.momentum,
    lars_eta: float = OptimConfig.lars_eta,
) -> torch.optim.Optimizer:
    """LARS, SGD or AdamW over :func:`param_groups`, peak learning rates scaled by batch_size / 256."""
    scale = batch_size / 256
    groups = param_groups(model, no_decay, lr_weights * scale, lr_biases * scale, weight_decay)
    if name == "lars":
        groups[0]["lars_adaptation"] = True
        groups[1]["lars_adaptation"] = False
        return LARS(groups, lr=groups[0]["lr"], momentum=momentum, eta=lars_eta)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(momentum, 0.999))
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{name}'")


def lr_factor(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up from 0, then cosine to ``final_ratio``.

    Per step as the official code: ``step / warmup_steps`` during warm-up, then
    ``final + (1 - final) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1 over the remaining steps.
    """
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor
