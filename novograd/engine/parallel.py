"""How the model is spread over the ranks: a replica on each (DDP, `trainer.parallelism=ddp`, the default) or a shard
on each (FSDP2, `trainer.parallelism=fsdp`).

Under FSDP2 every block of the model (the classes its `block_types` names: a ResNet bottleneck, a Jasper block, a
Transformer layer) is one `fully_shard` unit and the root holds the rest (embeddings, tied output layers, heads),
as torchtitan shards its models. Parameters, gradients and optimizer state then live as DTensor shards; a unit's
parameters are gathered for its forward and backward only and freed after (`reshard_after_forward=True`, except
the root's, which the backward needs at once). Mixed precision follows `trainer.precision`: autocast stays on, so
the operations that autocast keeps in fp32 (norms, softmax, losses) stay there as under DDP, and gradients are
reduced in fp32. Parameters are gathered in bf16 or fp16 (half the traffic) where no BatchNorm is in the model; a
BatchNorm (ResNet, Jasper) takes its weights in fp32 where autocast leaves it alone, so those models gather fp32,
as DDP holds them.

What differs from DDP, by design:
- buffers (BatchNorm's running statistics) are not broadcast from rank 0 before every forward but before every
  evaluation and checkpoint (`sync_buffers`): every rank evaluates the model a checkpoint keeps, rank 0's, as
  DDP's checkpoints keep rank 0's, and a resumed run goes on with the buffers the uninterrupted one has;
- gradient accumulation keeps the micro-batches' gradients unsharded until the last one, then reduce-scatters once
  (`gradient_sync`): DDP's `no_sync`, at the memory of one unsharded gradient per rank during accumulation;
- checkpoints are written by every rank, its own shard (checkpoint.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

PARALLELISMS = ("ddp", "fsdp")


def shards(parallelism: str) -> bool:
    """Whether `trainer.parallelism` asks for FSDP2 shards (fsdp) rather than DDP replicas (ddp); a ValueError
    naming the choices for anything else."""
    if parallelism not in PARALLELISMS:
        raise ValueError(f"trainer.parallelism must be one of {', '.join(PARALLELISMS)} (ddp: a replica per GPU; "
                         f"fsdp: FSDP2 shards, docs/sharding.md), got {parallelism!r}.")
    return parallelism == "fsdp"


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 units of `model`, the root last (empty for a model that is not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in reversed(list(model.modules())) if isinstance(module, FSDPModule)]


def shard_model(model: nn.Module, autocast_dtype: torch.dtype | None, compile_blocks: bool = False) -> nn.Module:
    """`fully_shard` each block of `model` (`model.block_types`), then the root, gathering parameters in
    `autocast_dtype` (`Precision.dtype`; None: fp32) or fp32 as the module docstring explains; in place (and
    returned). `compile_blocks` (`trainer.compile`): each block's forward
    is compiled before it is sharded, as torchtitan does; the whole sharded model compiled at once fails in
    Inductor (torch 2.13, "Cannot convert expression to float")."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise RuntimeError("trainer.parallelism=fsdp needs a process group (init_distributed makes one).")
    has_batch_norm = any(isinstance(module, nn.modules.batchnorm._NormBase) for module in model.modules())
    param_dtype = None if has_batch_norm else autocast_dtype
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    block_types = tuple(getattr(model, "block_types", ()))
    for module in model.modules():
        if block_types and isinstance(module, block_types):
            if compile_blocks:
                module.compile()  # in place: the module stays itself, its forward compiled
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """The context of one micro-batch's backward: gradients reduced across ranks only when `enabled` (the last
    micro-batch of an optimizer step), accumulated locally otherwise. DDP's `no_sync`; FSDP2's
    `set_requires_gradient_sync`; nothing to do for a model on one process."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)  # recurses into every unit
        return contextlib.nullcontext()
    if not enabled and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every unit's parameters gathered once for the duration (evaluation), with no collective inside: each rank
    evaluates its own share of the set, in a number of forwards that may differ from the other ranks', and decoders
    call the root's methods other than `forward` (Transformer's `encode`, `decode_step`), which FSDP2's hooks do
    not see."""
    units = fsdp_modules(model)
    blocks = units[:-1]  # the root keeps its parameters after its forward anyway
    for unit in units:
        unit.unshard()  # type: ignore[operator]
    for block in blocks:
        block.set_reshard_after_forward(False, recurse=False)  # type: ignore[operator]
    try:
        yield
    finally:
        for block in blocks:
            block.set_reshard_after_forward(True, recurse=False)  # type: ignore[operator]
        for unit in units:
            unit.reshard()  # type: ignore[operator]


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers on every rank (what DDP does before every forward)."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """The sharded model's and optimizer's state, keyed by parameter name (torch.distributed.checkpoint's layout,
    which any number of ranks can load); for loading, it is the template DCP fills in place."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, dict]) -> None:
    """Put `state` (a `sharded_state` that DCP filled) into the model and the optimizer."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
