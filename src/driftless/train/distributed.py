"""The few lines of torch.distributed the trainer and `train world` need (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from driftless.runtime import default_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun; choose the device.

    device: "cpu", "cuda", "cuda:N" or None (cuda when available). Under torchrun with CUDA
    each process takes the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(default_device(device))
    if device.type == "cuda":
        if world_size > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Average scalar tensors over ranks; returns Python floats."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if info.enabled:
        dist.all_reduce(stacked)
        stacked /= info.world_size
    return {k: float(v) for k, v in zip(keys, stacked.cpu())}


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if flag is true on any rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def max_over_ranks(value: float, info: DistInfo) -> float:
    """The largest of every rank's value (one collective), so that all ranks act on one number."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def control_group(info: DistInfo, timeout: timedelta):
    """A CPU (gloo) group of all ranks for small control messages, with its own timeout: ranks
    that wait there while rank 0 works alone (data generation, evaluation) may wait longer
    than the default group's collectives allow. None when not distributed. Every rank must
    call it, in the same order as its other group creations."""
    if not info.enabled:
        return None
    return dist.new_group(backend="gloo", timeout=timeout)


def broadcast_object(obj, info: DistInfo, group=None):
    """Rank 0's `obj` (picklable; the other ranks pass anything) on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def cleanup() -> None:
    """Destroy the default process group if one is initialised (the end of a torchrun process;
    NCCL warns of leaked resources otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
