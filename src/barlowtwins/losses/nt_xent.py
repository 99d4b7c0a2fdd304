"""NT-Xent / InfoNCE over the 2N views of a batch (SimCLR, Chen et al. 2020a, eq. 1).

For the 2N L2-normalised projections z_1..z_2N (view A of sample k at k, view B at N + k) with
s_ij = z_i . z_j / tau:

    l(i, j) = -log( exp(s_ij) / sum_{m != i} exp(s_im) ),    L = (1 / 2N) sum_k [l(k, N+k) + l(N+k, k)]

i.e. a 2N-way cross-entropy whose positive is the other view of the same image. Negatives come from this
process's batch only (under torch.distributed each process contrasts its own share of the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from barlowtwins.config import LossConfig


def nt_xent_terms(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = LossConfig.temperature
) -> dict[str, torch.Tensor]:
    """``loss`` and two diagnostics: the mean cosine of positive pairs and of negative pairs (no gradient)."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must both have shape (batch, dim); got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        dtype = torch.promote_types(z_a.dtype, torch.float32)
        z = F.normalize(torch.cat([z_a, z_b]).to(dtype), dim=1)
        n = z_a.shape[0]
        cosine = z @ z.T
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = (cosine / temperature).masked_fill(self_mask, float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        loss = F.cross_entropy(logits, positives)
        with torch.no_grad():
            positive_cos = cosine[torch.arange(2 * n, device=z.device), positives].mean()
            negative_mask = ~self_mask
            negative_mask[torch.arange(2 * n, device=z.device), positives] = False
            negative_cos = cosine[negative_mask].mean()
    return {"loss": loss, "positive_cos": positive_cos, "negative_cos": negative_cos}
