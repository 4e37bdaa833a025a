"""Gradient accumulation: k micro-batches on W ranks give the update of one batch of k x W micro-batches.

The workload's loss is a sum over terms (examples or tokens). Each micro-batch backpropagates
`loss_sum * world_size / global_count`, where `global_count` is the batch plan's count of the whole optimizer
step (all micro-batches on all ranks, known before any data is loaded); DDP then averages over ranks (the division
by `world_size` cancels the factor), so the accumulated gradient is exactly the gradient of the global mean loss,
whatever the split (FSDP2 averages its reduce-scatter the same way). Gradients are synchronised once per optimizer
step, in the last micro-batch's backward (`parallel.gradient_sync`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from novograd.engine.parallel import gradient_sync

if TYPE_CHECKING:
    from novograd.engine.precision import Precision


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """How many micro-batches each rank runs per optimizer step; a ValueError naming the numbers if not whole."""
    if batch_size <= 0 or micro_batch_size <= 0:
        raise ValueError(
            f"trainer.batch_size ({batch_size}) and trainer.micro_batch_size ({micro_batch_size}) must be positive."
        )
    per_pass = micro_batch_size * world_size
    if batch_size % per_pass:
        hint = (
            f"set trainer.micro_batch_size to a divisor of {batch_size // world_size}"
            if batch_size % world_size == 0
            else f"run a number of processes that divides {batch_size}"
        )
        raise ValueError(
            f"trainer.batch_size={batch_size} (global, per optimizer step) is not a whole multiple of "
            f"trainer.micro_batch_size={micro_batch_size} x world size {world_size} = {per_pass}: {hint}."
        )
    return batch_size // per_pass


def accumulate_gradients(
    model: nn.Module,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    micro_batches: Iterator[Any],
    num_micro_batches: int,
    global_count: float,
    world_size: int,
    precision: Precision,
) -> torch.Tensor:
    """Forward and backward `num_micro_batches` micro-batches drawn one at a time from `micro_batches` (a step is
    never held in memory at once); returns this rank's summed loss (detached).

    `model` is the DDP-wrapped, FSDP2-sharded (or bare) module; its gradients hold the global-batch mean gradient on return.
    `loss(model, batch)` is the workload's summed loss (`Workload.loss`): accumulation needs nothing else of the
    workload, so this module stays below `novograd.workload` (whose batch plans use `accumulation_steps`).
    """
    scale = world_size / global_count
    loss_total = torch.zeros((), device=_first_param_device(model))
    last = num_micro_batches - 1
    for index in range(num_micro_batches):
        batch = next(micro_batches)
        with gradient_sync(model, enabled=index == last):
            with precision.autocast():
                loss_sum = loss(model, batch)
            precision.backward(loss_sum.float() * scale)
        loss_total += loss_sum.detach().float()
    return loss_total


def _first_param_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
