"""Numeric precision of training: fp32, bf16 (autocast) or fp16 (autocast + dynamic loss scaling)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, NamedTuple

import torch

from novograd.engine.nonfinite import nonfinite_flag, step_unless

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class StepResult(NamedTuple):
    grad_norm: torch.Tensor | None  # before clipping, when the step clipped
    skipped: torch.Tensor  # 1.0 on the device when the step was not applied (non-finite), else 0.0
    skipped_known: bool | None = None  # the same, where the host read it (None: only the device knows)


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
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], clip_norm: float | None,
        loss_sum: torch.Tensor,
    ) -> StepResult:
        """Unscale, clip to `clip_norm` (on the true gradients), step unless the step is non-finite, and update the
        scale. `loss_sum` is this rank's loss of the step (novograd/engine/nonfinite.py: what makes a step
        non-finite, and how it is skipped).

        An optimizer that clips in its step (NovoGrad: `step(max_grad_norm=...)`, from the layer norms it computes
        anyway) is handed the clip norm, together with the loss scale through GradScaler's fused-optimizer
        protocol: the gradients are neither unscaled nor clipped in place, which saves passes over them. It clips
        over its own parameters, which are `params` when it optimises the whole model. Any other optimizer gets
        `clip_grad_norm_` on the unscaled gradients.
        """
        in_step_clip = clip_norm is not None and getattr(optimizer, "clips_grad_norm_in_step", False)
        step_kwargs = {"max_grad_norm": clip_norm} if in_step_clip else {}
        grad_norm, skipped_known = None, None
        if self.scaler.is_enabled():
            # GradScaler finds inf/NaN in the gradients and skips the step itself; it backs the scale off exactly
            # then, which tells a skipped step on the device (`_scale`: GradScaler's scale tensor, set by scale()).
            scale_before = self.scaler._scale.clone()  # type: ignore[union-attr]
            if clip_norm is not None and not in_step_clip:
                self.scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(list(params), clip_norm)
            self.scaler.step(optimizer, **step_kwargs)
            self.scaler.update()
            skipped = (self.scaler._scale < scale_before).float()  # type: ignore[operator]
        elif getattr(optimizer, "skips_nonfinite_in_step", False):
            # NovoGrad judges the gradients from the layer norms it computes anyway; the loss is this guard's.
            loss_flag = nonfinite_flag(loss_sum)
            optimizer.step(nonfinite=loss_flag, **step_kwargs)
            skipped_known = bool(optimizer.skipped)  # type: ignore[attr-defined]
            skipped = torch.full_like(loss_flag, float(skipped_known))  # a fill on the device, no copy to it
        else:
            params = list(params)
            if clip_norm is not None and not in_step_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
                step_norm = grad_norm
            else:
                step_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            skipped = nonfinite_flag(loss_sum, step_norm)
            skipped_known = step_unless(optimizer, skipped, **step_kwargs)
        if in_step_clip:
            grad_norm = optimizer.grad_norm  # type: ignore[attr-defined]
        return StepResult(grad_norm, skipped, skipped_known)

    @property
    def loss_scale(self) -> torch.Tensor | None:
        """fp16's current loss scale (a device tensor), else None."""
        return self.scaler._scale if self.scaler.is_enabled() else None


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere and newer: fp32 training at tensor-core speed."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
