"""torch.distributed helpers that are no-ops in a single process.

Collectives used inside the loss are the autograd-aware ones of ``torch.distributed.nn``: their
backward pass sums gradients across processes, so after DDP averages parameter gradients the result
equals the single-process gradient of the global batch (a plain ``all_reduce`` is invisible to
autograd and loses a 1/world_size factor, the bug of the official code noted in anchors.md).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from barlowtwins.errors import BarlowTwinsError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_environment(device_type: str) -> int:
    """Join the process group torchrun describes in the environment; returns the local rank.

    NCCL on GPUs, gloo on CPUs. Without torchrun this does nothing and returns 0.
    """
    if not launched_by_torchrun() or is_distributed():
        return int(os.environ.get("LOCAL_RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return local_rank


def join(device: torch.device, batch_size: int) -> tuple[torch.device, int]:
    """Join torchrun's process group (if any) for training on ``device`` with a global ``batch_size``: this
    process's device (its own GPU) and local rank; a one-line error when the batch does not split evenly."""
    local_rank = init_from_environment(device.type)
    if device.type == "cuda" and is_distributed():
        device = torch.device("cuda", local_rank)
    if batch_size % world_size():
        raise BarlowTwinsError(f"batch size {batch_size} must be divisible by the {world_size()} processes")
    return device, local_rank


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, differentiable (backward sums the incoming gradients over processes)."""
    if not is_distributed():
        return tensor
    return dist_fn.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 over processes, in rank order, differentiable."""
    if not is_distributed():
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with global-batch statistics for CPU process groups, where ``nn.SyncBatchNorm`` refuses to run.

    In training under torch.distributed the per-channel sums are added over processes with the
    autograd-aware :func:`all_reduce_sum`, so forward and backward are those of one process holding the
    concatenated batch (as ``nn.SyncBatchNorm`` on GPUs, and the official code's global BN, §2.2).
    Otherwise it is plain batch norm. Parameters and buffers are BatchNorm's, so checkpoints load either way.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.new_tensor([x.numel() // x.shape[1]])
        sums = all_reduce_sum(torch.cat([x.sum(dim=dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centered = x - mean.view(shape)
        var = all_reduce_sum(centered.square().sum(dim=dims)) / count  # two passes: no E[x^2] - E[x]^2 loss
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every batch norm of ``module`` with global-batch statistics: ``nn.SyncBatchNorm`` on GPUs (the
    standard path), :class:`GlobalBatchNorm` on CPUs. Parameters and buffers are shared, not copied."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, device_type))
    return converted


def broadcast_object(obj: object) -> object:
    """Rank 0's value of a picklable object on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
