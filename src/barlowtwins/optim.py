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

    ``clip_lr=True`` is solo-learn's LARS (``solo/utils/lars.py``, ``clip_lars_lr``; from Lightning Bolts):
        trust <- eta * ||p|| / (||grad|| + weight_decay * ||p|| + 1e-8)      (both norms positive)
        trust <- min(trust / lr, 1);   g <- (grad + weight_decay * p) * trust
    so the adapted step ``lr * trust`` never exceeds the scheduled lr (their CIFAR recipes set it).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = OptimConfig.momentum,
        eta: float = OptimConfig.lars_eta,
        lars_adaptation: bool = True,
        clip_lr: bool = OptimConfig.clip_lr,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            lars_adaptation=lars_adaptation,
            clip_lr=clip_lr,
        )
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
                if group["lars_adaptation"] and group.get("clip_lr", False):
                    update = _clipped_lars_update(p, update, group["lr"], group["weight_decay"], group["eta"])
                elif group["lars_adaptation"] or group["weight_decay"] != 0:
                    update = _lars_update(p, update, group["weight_decay"], group["eta"], group["lars_adaptation"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def _lars_update(p: torch.Tensor, grad: torch.Tensor, weight_decay: float, eta: float, adapt: bool) -> torch.Tensor:
    """The official code's update: weight decay, then the trust ratio eta * ||p|| / ||g|| when ``adapt``."""
    update = grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad
    if not adapt:
        return update
    param_norm = torch.linalg.vector_norm(p)
    update_norm = torch.linalg.vector_norm(update)
    ones = torch.ones_like(param_norm)
    trust = torch.where(
        param_norm > 0,
        torch.where(update_norm > 0, eta * param_norm / update_norm, ones),
        ones,
    )
    return update.mul(trust)


def _clipped_lars_update(
    p: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float, eta: float, eps: float = 1e-8
) -> torch.Tensor:
    """solo-learn's update with ``clip_lr`` (see :class:`LARS`); parameters or gradients of norm 0 pass
    unchanged, without weight decay, as there. At lr 0 (the first warm-up step) the step is 0 either way."""
    param_norm = torch.linalg.vector_norm(p)
    grad_norm = torch.linalg.vector_norm(grad)
    if param_norm == 0 or grad_norm == 0:
        return grad
    trust = eta * param_norm / (grad_norm + param_norm * weight_decay + eps)
    if lr > 0:
        trust = torch.clamp(trust / lr, max=1.0)
    return grad.add(p, alpha=weight_decay).mul(trust)


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
    clip_lr: bool = OptimConfig.clip_lr,
) -> torch.optim.Optimizer:
    """LARS, SGD or AdamW over :func:`param_groups`, peak learning rates scaled by batch_size / 256."""
    scale = batch_size / 256
    groups = param_groups(model, no_decay, lr_weights * scale, lr_biases * scale, weight_decay)
    if name == "lars":
        groups[0]["lars_adaptation"] = True
        groups[1]["lars_adaptation"] = False
        return LARS(groups, lr=groups[0]["lr"], momentum=momentum, eta=lars_eta, clip_lr=clip_lr)
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
