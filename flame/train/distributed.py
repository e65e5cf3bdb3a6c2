"""torch.distributed set-up from torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK), and every
collective the trainer and the losses use. Their tensors live on the process's device: NCCL takes only CUDA
tensors."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return DistContext(device=device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(value: torch.Tensor, ctx: DistContext, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """A copy of ``value`` on ``ctx.device``, reduced over all ranks."""
    value = value.to(ctx.device, copy=True)
    if ctx.enabled:
        dist.all_reduce(value, op=op)
    return value


def all_reduce_int(value: int, ctx: DistContext, op=dist.ReduceOp.SUM) -> int:
    if not ctx.enabled:
        return value
    tensor = torch.tensor(value, dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=op)
    return int(tensor)


def all_gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order; gradients flow back to each owner."""
    if not ctx.enabled:
        return x
    with warnings.catch_warnings():  # its suggested replacement is a private module
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(x.contiguous())
    if x.requires_grad:
        for part in parts:
            # Its backward sends the incoming gradients into buffers made by empty_like, which
            # keeps a non-contiguous gradient's strides (einsum's are), and the collective then
            # fills them as if contiguous: a scrambled gradient. Hand it contiguous ones.
            part.register_hook(torch.Tensor.contiguous)
    return torch.cat(parts, dim=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def data_parallel(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` wrapped in DDP when there are several processes (on a GPU: that process's GPU alone)."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
