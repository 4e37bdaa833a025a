"""Layer norms of parameters sharded as DTensors (FSDP2's `fully_shard`): from the local shards, in one collective.

A layer-wise optimizer reads one norm per parameter tensor. On a sharded parameter each rank holds a slice, and
the norm of that slice is not the layer's (a silent error of up to sqrt(ranks)); DTensor's own `_foreach_norm`
gets it right but reduces each tensor's norm in a collective of its own. Here each rank sums the squares of its
local shards, and one all-reduce per process group (one per step under FSDP2, whatever the number of layers) turns
them into the layers' sums; the optimizer then updates the local shards only.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_sharded", "local", "shard_groups", "full_norms"]


def _dtensor_class():
    """DTensor, or None while torch.distributed.tensor is not imported, when no tensor can be one: no 0.4 s import
    at start-up, no import statement per call, and no cache wrapper for Dynamo to warn about."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_sharded(tensor: Tensor) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: Tensor) -> Tensor:
    """The rank's own part of `tensor` (itself for a plain tensor); in-place updates of it update the DTensor."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_groups(param: Tensor, grad: Tensor) -> tuple[dist.ProcessGroup, ...]:
    """The process groups over which `param`'s local sums of squares add up to the layer's: one per mesh dimension
    that shards it (FSDP2: one; HSDP: the shard dimension, replicas already hold the same sums)."""
    if not is_sharded(param):
        return ()
    from torch.distributed.tensor import Partial, Shard

    if not is_sharded(grad) or grad.placements != param.placements:
        raise RuntimeError(
            f"the gradient of a DTensor parameter must be a DTensor with the same placements ({param.placements}), "
            f"got {getattr(grad, 'placements', type(grad).__name__)}: step the optimizer after the backward pass "
            "has reduced the gradients (FSDP2 does this unless gradient synchronisation is switched off)")
    if any(isinstance(placement, Partial) for placement in param.placements):
        raise RuntimeError(f"NovoGrad cannot update a parameter with a Partial placement ({param.placements})")
    return tuple(param.device_mesh.get_group(dim) for dim, placement in enumerate(param.placements)
                 if isinstance(placement, Shard))


def full_norms(local_norms: list[Tensor], groups: list[tuple[dist.ProcessGroup, ...]]) -> list[Tensor]:
    """The layers' L2 norms from the norms of their local shards (`groups[i]` as `shard_groups` gives them).

    The squares of all sharded layers travel in one fp64 vector per process group: one all-reduce per step under
    FSDP2. Each norm comes back in its own dtype and on its own device.
    """
    by_groups: dict[tuple[dist.ProcessGroup, ...], list[int]] = {}
    for i, layer_groups in enumerate(groups):
        if layer_groups:
            by_groups.setdefault(layer_groups, []).append(i)
    norms = list(local_norms)
    for layer_groups, indices in by_groups.items():
        squares = torch.stack([local_norms[i] for i in indices]).to(torch.float64).square()  # a few kernels in all
        for group in layer_groups:
            dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=group)
        roots = squares.sqrt()
        by_dtype = {dtype: roots.to(dtype).unbind() for dtype in {local_norms[i].dtype for i in indices}}
        for position, i in enumerate(indices):
            norms[i] = by_dtype[local_norms[i].dtype][position]
    return norms
