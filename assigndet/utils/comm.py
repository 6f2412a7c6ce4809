"""Helpers for torch.distributed that also work in a single process (world size 1).

Every function here is safe to call when torch.distributed is unavailable or not initialised.
Object collectives go through a gloo group, so they work on CPU and alongside NCCL alike.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Set by `assigndet.engine.launch` to the group of processes on this machine.
_LOCAL_PROCESS_GROUP = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """Rank of this process among the processes of its machine."""
    if not is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 0
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 1
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes; a no-op in a single process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _gloo_group():
    """A gloo group over all ranks for Python-object collectives (NCCL cannot move CPU objects)."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data: Any, group=None) -> list[Any]:
    """Gather any picklable object from every rank; returns the list ordered by rank."""
    if get_world_size() == 1:
        return [data]
    group = _gloo_group() if group is None else group
    output: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group=None) -> list[Any]:
    """Gather any picklable object on rank ``dst``; other ranks get an empty list."""
    if get_world_size() == 1:
        return [data]
    group = _gloo_group() if group is None else group
    if dist.get_rank(group=group) == dst:
        output: list[Any] = [None] * dist.get_world_size(group)
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and shared by all ranks."""
    seed = int(np.random.randint(2**31))
    return all_gather(seed)[0]


def reduce_dict(
    input_dict: dict[str, torch.Tensor], average: bool = True
) -> dict[str, torch.Tensor]:
    """Sum (or average) scalar tensors over ranks; every rank gets the result."""
    world_size = get_world_size()
    if world_size == 1:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)
        values = torch.stack([input_dict[k].detach().float() for k in names])
        dist.all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; no gradient flows through the reduction)."""
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced)
    return reduced / world_size


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` (e.g. BatchNorm running statistics) from rank ``src`` to
    all ranks, in place. Training keeps per-rank buffers (DDP with ``broadcast_buffers=False``);
    evaluation calls this so that every rank runs the model that rank 0 checkpoints."""
    if get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
