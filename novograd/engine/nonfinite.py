"""Non-finite steps: found before the optimizer applies them, never applied, never saved.

Every optimizer step is checked on the device: the loss and the global gradient norm must be finite on every rank,
which a MAX all-reduce of the flag makes all ranks agree on. The norm is one a step computes anyway where there is
one: NovoGrad's layer norms (`NovoGrad.step(nonfinite=...)` judges them ahead of its update), gradient clipping's
global norm, GradScaler's `found_inf` in fp16; only other optimizers without clipping pay a `get_total_norm` pass.
A flagged step is not applied: the weights, the optimizer state and the model's buffers (BatchNorm statistics,
which the forward pass already moved) stay as they were; its batch is consumed and the
learning-rate schedule advances, as under fp16's dynamic loss scaling, whose skipped steps are the same thing.
torch's fused optimizers (SGD/Adam/AdamW with `fused=True`) take GradScaler's `found_inf` protocol and skip on the
device, so the flag is read on the host only every `trainer.log_every_steps` and before evaluations and
checkpoints; NovoGrad and any other optimizer read it on the host before updating (one read per step, the one
GradScaler makes for them in fp16), and then a step that was applied costs no further work.

Then `trainer.nonfinite` decides (`NonFinitePolicy`):
- `skip` (default): go on, up to `trainer.max_consecutive_skips` skipped steps in a row, then end as diverged;
- `stop`: end as diverged at the first non-finite step;
- `rewind`: reload the last checkpoint and move past every batch up to the offending one (their updates are
  dropped, as skipped steps: PaLM's remedy for loss spikes), at most `trainer.max_rewinds` times, then diverge.
In fp16 GradScaler keeps skipping steps with inf/NaN gradients as it always has (counted as skipped steps); the
run diverges when the loss scale falls below `trainer.min_loss_scale`, as fairseq's `min_loss_scale`.

A model whose weights or optimizer state are non-finite anyway (a finite but huge update overflowed) is never
evaluated or saved: the trainer checks them before each evaluation and checkpoint (`any_nonfinite`) and ends the
run as diverged, or rewinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from novograd.engine.distributed import all_reduce_max
from novograd.optim.sharded import local

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn

POLICIES = ("skip", "stop", "rewind")


class Diverged(Exception):
    """The run cannot go on: `step` is the first non-finite step of the streak that ended it."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"step {step}: {reason}")
        self.step = step
        self.reason = reason


class Rewind(Exception):
    """Reload the last checkpoint and move past the batches up to `step` (policy `rewind`)."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"step {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class NonFinitePolicy:
    """`trainer.nonfinite` and its limits."""

    policy: str = "skip"
    max_consecutive_skips: int = 5
    max_rewinds: int = 3
    min_loss_scale: float = 1e-4

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"trainer.nonfinite must be one of {', '.join(POLICIES)}, got {self.policy!r}.")
        if self.max_consecutive_skips < 1 or self.max_rewinds < 0:
            raise ValueError("trainer.max_consecutive_skips must be >= 1 and trainer.max_rewinds >= 0.")


def nonfinite_flag(loss_sum: torch.Tensor, grad_norm: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 (fp32, on the device) when this rank's loss or the gradient norm (if given) is not finite on any rank,
    else 0.0."""
    ok = torch.isfinite(loss_sum)
    if grad_norm is not None:  # a norm of sharded gradients is a replicated DTensor: its local value is the whole
        grad_norm = local(grad_norm)
        ok = ok.to(grad_norm.device) & torch.isfinite(grad_norm)
    return all_reduce_max((~ok).float())


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` skips by GradScaler's `found_inf` on the device: torch's fused optimizers. (NovoGrad
    takes the protocol too, but reads the flag on the host.)"""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and type(optimizer).__module__.startswith(
        "torch.optim")


def step_unless(optimizer: torch.optim.Optimizer, found: torch.Tensor, **step_kwargs: Any) -> bool | None:
    """`optimizer.step(**step_kwargs)` unless `found` (a device flag) is set. Returns whether the step was skipped
    when the host had to read the flag, None when the device decided."""
    if skips_on_device(optimizer):
        optimizer.found_inf = found  # type: ignore[attr-defined]
        try:
            optimizer.step(**step_kwargs)
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
        return None
    skipped = bool(found.item())
    if not skipped:
        optimizer.step(**step_kwargs)
    return skipped


class BufferSnapshot:
    """The model's buffers before a step, put back where the step is skipped (the forward pass moves BatchNorm's
    running statistics before anyone knows the step is bad). On the device, in a few kernels per dtype."""

    def __init__(self, model: nn.Module) -> None:
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in model.buffers():
            groups.setdefault(buffer.dtype, []).append(buffer)
        self.groups = list(groups.values())
        self.saved = [[buffer.clone() for buffer in buffers] for buffers in self.groups]

    def take(self) -> None:
        for buffers, saved in zip(self.groups, self.saved):
            torch._foreach_copy_(saved, buffers)

    def restore_where(self, found: torch.Tensor, known: bool | None = None) -> None:
        """Buffers back to the snapshot where `found` is set (NaN-proof: a select, not arithmetic); `known`: the host
        read the flag already."""
        if known is False:
            return
        for buffers, saved in zip(self.groups, self.saved):
            current = torch.cat([b.reshape(-1) for b in buffers])
            kept = torch.where(found.bool(), torch.cat([s.reshape(-1) for s in saved]), current)
            torch._foreach_copy_(buffers, [piece.view_as(b) for piece, b in
                                           zip(kept.split([b.numel() for b in buffers]), buffers)])


class SkipCounter:
    """Skipped steps, counted where the decision was made: on the host when it read the flag, else on the device,
    read by the host now and then (`read`)."""

    def __init__(self, device: torch.device) -> None:
        # [skipped since the last read, skipped in a row now, first step of that streak, first skipped step since
        # the last read]; a step number of 0 means none (steps count from 1).
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)
        self._in_a_streak = False  # whether counts[1:3] may hold a streak (always assumed when the device decides)

    def add(self, found: torch.Tensor, step: int, known: bool | None = None) -> None:
        """Count step number `step` (from 1) as skipped where `found` is set; `known`: the host read it already
        (then a step that was applied costs no device work)."""
        if known is False:
            if self._in_a_streak:
                self.counts[1:3] = 0
                self._in_a_streak = False
            return
        self._in_a_streak = True
        counts, flag = self.counts, found.to(torch.float64)
        here = flag * step
        counts[2] = torch.where(counts[1] > 0, counts[2], here) * flag
        counts[3] = torch.where(counts[3] > 0, counts[3], here)
        counts[1] = (counts[1] + 1) * flag
        counts[0] += flag

    def read(self) -> SkipCounts:
        """The counts (one host read); starts the next period."""
        skipped, consecutive, streak_start, first = (round(value) for value in self.counts.tolist())
        self.counts[0::3] = 0  # the period's counts; the streak goes on
        return SkipCounts(skipped, consecutive, streak_start, first)


@dataclass(frozen=True)
class SkipCounts:
    skipped: int  # steps skipped since the previous read
    consecutive: int  # steps skipped in a row, up to the last step
    streak_start: int  # the first step of those
    first: int  # the first step skipped since the previous read (0: none)


def any_nonfinite(tensors: Iterable[torch.Tensor], device: torch.device) -> bool:
    """Whether any floating tensor of `tensors` holds an inf or a NaN on any rank (one host read; exact, unlike a
    norm, which overflows for large finite values). Each rank checks its own shard of a sharded tensor."""
    flags = [~torch.isfinite(local(t).detach()).all() for t in tensors if t.is_floating_point()]
    flag = torch.stack([f.to(device) for f in flags]).any().float() if flags else torch.zeros((), device=device)
    return bool(all_reduce_max(flag).item())

