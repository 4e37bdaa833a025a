"""Moving batches (tensors nested in dicts, lists and tuples) to the training device."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` with every tensor on `device` (asynchronously from pinned memory); 4-D floating tensors (images)
    in channels-last layout when `channels_last`, matching a channels-last convnet."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(value, device, channels_last) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch
