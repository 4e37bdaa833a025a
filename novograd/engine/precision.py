"""Numeric precision of training: fp32, bf16 (autocast) or fp16 (autocast + dynamic loss scaling)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast region, loss scaling and the (optionally clipped) optimizer step for one precision mode.

    fp16 uses `torch.amp.GradScaler` (as the paper's runs used dynamic loss scaling); in the other modes the scaler
    is disabled and passes everything through, so the training loop has one code path.
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in _AUTOCAST_DTYPES:
            raise ValueError(f"trainer.precision must be one of {sorted(_AUTOCAST_DTYPES)}, got {mode!r}.")
        self.mode = mode
        self.device_type = device.type
        self.dtype = _AUTOCAST_DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], clip_norm: float | None
    ) -> torch.Tensor | None:
        """Unscale, clip to `clip_norm` (on the true gradients), step and update the scale; returns the norm.

        An optimizer that clips in its step (NovoGrad: `step(max_grad_norm=...)`, from the layer norms it computes
        anyway) is handed the clip norm, together with the loss scale through GradScaler's fused-optimizer
        protocol: the gradients are neither unscaled nor clipped in place, which saves passes over them. It clips
        over its own parameters, which are `params` when it optimises the whole model. Any other optimizer gets
        `clip_grad_norm_` on the unscaled gradients.
        """
        grad_norm = None
        if clip_norm is None:
            self.scaler.step(optimizer)
        elif getattr(optimizer, "clips_grad_norm_in_step", False):
            self.scaler.step(optimizer, max_grad_norm=clip_norm)
            grad_norm = optimizer.grad_norm
        else:
            self.scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(list(params), clip_norm)
            self.scaler.step(optimizer)
        self.scaler.update()
        return grad_norm


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere and newer: fp32 training at tensor-core speed."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
