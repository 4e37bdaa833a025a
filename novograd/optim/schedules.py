"""Learning-rate schedules of the paper's runs, as `torch.optim.lr_scheduler.LambdaLR` multipliers.

With `t` the number of optimizer steps already taken (LambdaLR's counter: the step about to run uses the lr of
`t`), `T = total_steps`, `W` warmup steps and `base` each param group's own initial lr:

    t < W:   lr(t) = base * t / W                                   (linear warmup from 0, as OpenSeq2Seq)
    t >= W:  p = min((t - W) / (T - W), 1)
             constant: lr(t) = base
             cosine:   lr(t) = min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2
             poly:     lr(t) = min_lr + (base - min_lr) * (1 - p) ** power   (tf.train.polynomial_decay)

so the decay runs over the steps left after warmup and holds at `min_lr` past `T`. `min_lr` is an absolute lr
shared by all groups. The scheduler is stepped once per optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULE_NAMES = ("constant", "cosine", "poly")
_SCHEDULE_KEYS = {"name", "warmup_steps", "warmup_ratio", "power", "min_lr"}


@dataclass(frozen=True)
class WarmupDecay:
    """The multiplier of one param group's base lr at step `t`; see the module docstring for the formula.

    A callable object rather than a closure so that LambdaLR's state_dict records its settings and checkpoints
    pickle.
    """

    name: str
    total_steps: int
    warmup_steps: int
    power: float
    min_ratio: float  # min_lr / base lr of the group

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return t / self.warmup_steps
        if self.name == "constant":
            return 1.0
        progress = min((t - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        if self.name == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = (1.0 - progress) ** self.power
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def build_scheduler(cfg: Mapping[str, Any], optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """Build the schedule named by `cfg.name` over `total_steps` optimizer steps.

    `cfg` holds `name` (constant | cosine | poly) and optionally `warmup_steps` or `warmup_ratio` (a fraction of
    `total_steps`; at most one of them non-zero), `power` (poly, default 2.0) and `min_lr` (cosine and poly,
    default 0.0).
    """
    name = cfg.get("name")
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"Unknown scheduler name {name!r}: set scheduler.name to one of {', '.join(SCHEDULE_NAMES)}")
    unknown = set(cfg.keys()) - _SCHEDULE_KEYS
    if unknown:
        raise ValueError(f"Unknown scheduler keys {sorted(unknown)}: valid keys are {sorted(_SCHEDULE_KEYS)}")
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps}")
    total_steps = int(total_steps)

    warmup_steps = _warmup_steps(cfg, total_steps)
    power = float(cfg.get("power", 2.0))
    min_lr = float(cfg.get("min_lr", 0.0))
    if power <= 0.0:
        raise ValueError(f"scheduler.power must be > 0, got {power}")
    if min_lr < 0.0:
        raise ValueError(f"scheduler.min_lr must be >= 0, got {min_lr}")
    if name == "constant" and min_lr != 0.0:
        raise ValueError(f"scheduler.min_lr={min_lr} has no meaning for the constant schedule: use cosine or poly")

    multipliers = []
    for index, group in enumerate(optimizer.param_groups):
        # LambdaLR sets initial_lr on construction; a scheduler rebuilt on a used optimizer must start from it.
        base_lr = float(group.get("initial_lr", group["lr"]))
        if min_lr > base_lr:
            raise ValueError(f"scheduler.min_lr={min_lr} exceeds the lr {base_lr} of param group {index}")
        min_ratio = min_lr / base_lr if base_lr > 0.0 else 0.0
        multipliers.append(WarmupDecay(name, total_steps, warmup_steps, power, min_ratio))
    return LambdaLR(optimizer, multipliers)


def _warmup_steps(cfg: Mapping[str, Any], total_steps: int) -> int:
    warmup_steps = cfg.get("warmup_steps", 0) or 0
    warmup_ratio = float(cfg.get("warmup_ratio", 0.0) or 0.0)
    if warmup_steps and warmup_ratio:
        raise ValueError(
            f"scheduler.warmup_steps={warmup_steps} and scheduler.warmup_ratio={warmup_ratio} are both set: "
            "keep one and set the other to 0"
        )
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps must be a non-negative integer, got {warmup_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if warmup_ratio:
        warmup_steps = round(warmup_ratio * total_steps)
    warmup_steps = int(warmup_steps)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup of {warmup_steps} steps leaves no step to decay over in total_steps={total_steps}: "
            "shorten the warmup or train longer"
        )
    return warmup_steps
