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


def broadcast_object(obj: object) -> object:
    """Rank 0's value of a picklable object on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
