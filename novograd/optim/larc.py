"""LARC: layer-wise adaptive rate control around any torch optimizer, as in the authors' OpenSeq2Seq runs.

Per parameter tensor with weight `w` and gradient `g`, the gradient is multiplied by a local factor before the
wrapped optimizer's step:

- clip mode (`clip=True`, the authors' Jasper runs):  `min(1, eta * ||w|| / (lr * (||g|| + eps)))`, so the
  effective learning rate of the tensor is `min(lr, eta * ||w|| / (||g|| + eps))`;
- scale mode (`clip=False`): `eta * ||w|| / (||g|| + eps)`, so the effective learning rate is that factor *times*
  the group lr (the lr stays a global multiplier, and schedules still apply);
- in both, a factor below 1e-7 is raised to 1e-7 (see below).

In both modes the factor is floored at `min_update = 1e-7`, as in OpenSeq2Seq (`tf.maximum(..., min_update)`
before the clip's `tf.minimum(..., 1.0)`), so clip mode is `min(max(eta * ||w|| / (lr * (||g|| + eps)), 1e-7), 1)`:
a tensor whose ratio underflows still moves. apex has no floor.

Scale mode multiplies, it does not replace the lr: OpenSeq2Seq's `larc_mode="scale"` (optimizers.py,
`post_process_gradients`) and apex's `LARC(clip=False)` both multiply the gradient by the factor and then let the
optimizer apply its lr. Tensors with `||w|| == 0` or `||g|| == 0` are left unscaled, as apex does; OpenSeq2Seq
would give them the floor 1e-7, which would all but freeze zero-initialised tensors.

Weight decay: OpenSeq2Seq added the L2 regulariser to the loss, so for SGD and Adam the gradient LARC measured
and scaled already held `wd * w`. To keep that meaning with torch's SGD and Adam, whose `weight_decay` is an L2
term the optimizer adds to the gradient, LARC folds it in first (`g <- g + wd * w`, then measure and scale) and
runs the inner step with `weight_decay=0` (`fold_weight_decay`). Decoupled decay (AdamW) and NovoGrad's decay,
which the authors' NovoGrad applied inside the optimizer after LARC, are left to the inner optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim import Optimizer

# Relative: the same file is the module novograd_optim.larc of the standalone package (packages/novograd-optim).
from .novograd import _moment_dtype
from .sharded import full_norms, local, shard_groups

# OpenSeq2Seq's `min_update`: the smallest LARC factor, in both modes.
MIN_FACTOR = 1e-7


def uses_l2_weight_decay(optimizer: Optimizer) -> bool:
    """Whether `optimizer`'s `weight_decay` is an L2 term added to the gradient (torch SGD, and Adam without
    decoupled decay), i.e. a term that the authors' setup had inside the gradient LARC scaled."""
    if isinstance(optimizer, torch.optim.SGD):
        return True
    return isinstance(optimizer, torch.optim.Adam) and not optimizer.defaults.get("decoupled_weight_decay", False)


class LARC(Optimizer):
    """Wraps `optimizer` and rescales each gradient tensor by its LARC factor before `optimizer.step()`.

    LARC shares the wrapped optimizer's `param_groups`, `state` and `defaults` (they are the same objects), so
    learning-rate schedulers, `torch.amp.GradScaler` and `state_dict()` / `load_state_dict()` all act on the
    wrapped optimizer through it. It keeps no state of its own.

    Args:
        optimizer: the optimizer to wrap (any `torch.optim.Optimizer`).
        trust_coefficient: eta in the formulas of the module docstring (the authors used 0.001).
        clip: clip mode (True) or scale mode (False); see the module docstring.
        eps: added to `||g||` in the factor's denominator.
        fold_weight_decay: add the group's `weight_decay * w` to the gradient before measuring and scaling it,
            and step the inner optimizer with `weight_decay=0`. `None` (default) folds exactly when the inner
            optimizer's decay is an L2 gradient term (`uses_l2_weight_decay`).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        trust_coefficient: float = 0.001,
        clip: bool = True,
        eps: float = 1e-8,
        *,
        fold_weight_decay: bool | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"LARC wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, LARC):
            raise ValueError("the optimizer is already wrapped in LARC; wrap it once")
        if not trust_coefficient > 0.0:
            raise ValueError(f"Invalid trust_coefficient: {trust_coefficient} (must be > 0)")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be >= 0)")
        # Optimizer.__init__ would build param groups of its own; LARC must share the inner optimizer's, so it only
        # runs Optimizer.__setstate__, which creates the hook registries and patches step() for profiling/hooks.
        super().__setstate__(
            {
                "optimizer": optimizer,
                "trust_coefficient": trust_coefficient,
                "clip": clip,
                "eps": eps,
                "fold_weight_decay": (
                    uses_l2_weight_decay(optimizer) if fold_weight_decay is None else fold_weight_decay
                ),
            }
        )

    # The inner optimizer's attributes, not copies: load_state_dict() rebinds the inner param_groups list, and
    # a copy taken here would go stale.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def __getstate__(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "trust_coefficient": self.trust_coefficient,
            "clip": self.clip,
            "eps": self.eps,
            "fold_weight_decay": self.fold_weight_decay,
        }

    def __repr__(self) -> str:
        return (
            f"LARC(trust_coefficient={self.trust_coefficient}, clip={self.clip}, eps={self.eps}, "
            f"fold_weight_decay={self.fold_weight_decay}, optimizer={self.optimizer!r})"
        )

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Evaluate `closure` (if any), rescale the gradients, then step the wrapped optimizer.

        The closure runs here rather than in the inner step: an inner re-evaluation would overwrite the
        rescaled gradients.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._rescale_group(group)
        with self._inner_weight_decay_off():
            self.optimizer.step()
        return loss

    def _rescale_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"LARC does not support sparse gradients (parameter of shape {tuple(p.shape)})")
        weight_decay = group.get("weight_decay", 0.0)
        # DTensor parameters (FSDP2) are rescaled on their local shards, from the layers' norms: the shards'
        # norms of all layers of a device and dtype reduced across the mesh in one collective.
        layer_groups = [shard_groups(p, p.grad) for p in params]
        grouped = self._group_tensors_by_device_and_dtype([[local(p) for p in params],
                                                           [local(p.grad) for p in params]], with_indices=True)
        for (same_device_params, grads), indices in grouped.values():
            if self.fold_weight_decay and weight_decay != 0.0:
                torch._foreach_add_(grads, same_device_params, alpha=weight_decay)
            # Norms in fp32 (fp64 for fp64 parameters) whatever the parameter dtype; one vectorised pass, no host
            # syncs.
            dtype = _moment_dtype(grads[0].dtype)
            norms = full_norms([*torch._foreach_norm(same_device_params, 2, dtype=dtype),
                                *torch._foreach_norm(grads, 2, dtype=dtype)],
                               [layer_groups[i] for i in indices] * 2)
            param_norms = torch.stack(norms[:len(grads)])
            grad_norms = torch.stack(norms[len(grads):])
            factors = self.trust_coefficient * param_norms / (grad_norms + self.eps)
            if self.clip:
                factors = torch.clamp(factors / group["lr"], min=MIN_FACTOR, max=1.0)
            else:
                factors = torch.clamp(factors, min=MIN_FACTOR)
            factors = torch.where((param_norms > 0) & (grad_norms > 0), factors, torch.ones_like(factors))
            torch._foreach_mul_(grads, list(factors.unbind()))

    @contextmanager
    def _inner_weight_decay_off(self) -> Iterator[None]:
        """Zero the groups' weight decay for the inner step when it was folded into the gradients, then restore."""
        if not self.fold_weight_decay:
            yield
            return
        saved = [group.get("weight_decay") for group in self.param_groups]
        for group in self.param_groups:
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        try:
            yield
        finally:
            for group, weight_decay in zip(self.param_groups, saved):
                if weight_decay is not None:
                    group["weight_decay"] = weight_decay
