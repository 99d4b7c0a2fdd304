"""BYOL's loss and momentum schedule (Grill et al. 2020, eq. 2 and §3.2).

The normalised mean squared error between the online prediction p and the target projection z',
``||p/||p|| - z'/||z'|| ||^2 = 2 - 2 cos(p, z')``, averaged over the batch; the symmetric loss adds the
same with the views swapped. The target carries no gradient (stop-gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from barlowtwins.config import ModelConfig


def regression_loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 - 2 cos(p, z'), z' detached; in fp32 also under autocast."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        dtype = torch.promote_types(p.dtype, torch.float32)
        cosine = F.cosine_similarity(p.to(dtype), z_target.detach().to(dtype), dim=1)
        return (2 - 2 * cosine).mean()


def target_momentum(step: int, total_steps: int, base: float = ModelConfig.momentum) -> float:
    """tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2: tau_base at step 0, 1 at the last step (§3.2)."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def update_target(online: torch.nn.Module, target: torch.nn.Module, momentum: float) -> None:
    """xi <- tau xi + (1 - tau) theta for every parameter; buffers (BN statistics) are the target's own."""
    for theta, xi in zip(online.parameters(), target.parameters(), strict=True):
        xi.mul_(momentum).add_(theta.detach(), alpha=1 - momentum)
