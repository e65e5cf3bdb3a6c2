"""torch.distributed set-up from the environment variables torchrun and Ray Train set (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT) and the device the process was told to train on, and every collective the
trainer and the losses use. Their tensors live on the process's device: NCCL takes only CUDA tensors."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch.nn.parallel import DistributedDataParallel

from flame.errors import FlameError


# The process group's backend for the device a process trains on.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False
    # A gloo group for the host's own small collectives (``all_reduce_int``) when the main group is
    # NCCL: a count read back from a GPU would wait for every kernel queued before it. None: the main group.
    host_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun or Ray Train describe (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
    with ``device`` as this process's device (``flame.device.local_device`` resolves it): its type picks the
    backend, gloo for the CPU, NCCL for a GPU. Without WORLD_SIZE > 1, a single process. A group that exists
    already (Ray Train makes its own) is used as it is."""
    device = torch.device(device)
    if device.type not in BACKENDS:
        raise FlameError(f"cannot train on {device}: a process group needs a cpu or cuda device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistContext(device=device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS[device.type], device_id=device if device.type == "cuda" else None)
        owns = True
    elif device.type == "cpu" and dist.get_backend() == "nccl":
        raise FlameError("the process group was made with NCCL, which cannot reduce CPU tensors, but this process "
                         "trains on the CPU (train.device); set train.device to cuda or auto")
    host_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns, host_group)


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
    """``value`` reduced over all ranks, through the host group when there is one (no GPU sync)."""
    if not ctx.enabled:
        return value
    device = torch.device("cpu") if ctx.host_group is not None else ctx.device
    tensor = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=op, group=ctx.host_group)
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
