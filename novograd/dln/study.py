"""Running the study: the paper's scenarios with the real optimizers, and the batched robustness maps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from novograd.dln.optimizers import OPTIMIZERS, build_batched_update, build_torch_optimizer
from novograd.dln.problem import DeepLinearNetwork, flat_distance, loss, loss_and_grads
from novograd.dln.verdict import VERDICTS, VerdictCriteria, VerdictTracker, classify

DTYPE = torch.float64  # double precision keeps rounding out of the verdicts on oscillating runs


@dataclass(frozen=True)
class Scenario:
    """One figure of Appendix A: a learning rate, weight decay and initial point shared by the four optimizers."""

    name: str
    lr: float
    weight_decay: float
    init: tuple[float, float]
    title: str = ""
    #: The verdict the paper states for each optimizer (missing: "unstated").
    paper_claims: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"Scenario {self.name!r}: need lr > 0 and weight_decay >= 0, got {self.lr}, "
                             f"{self.weight_decay}")
        if len(self.init) != 2:
            raise ValueError(f"Scenario {self.name!r}: init must be [w1, w2], got {list(self.init)}")
        for optimizer, claim in self.paper_claims.items():
            if optimizer not in OPTIMIZERS or claim not in VERDICTS:
                raise ValueError(f"Scenario {self.name!r}: paper claim {optimizer}: {claim} must map one of "
                                 f"{OPTIMIZERS} to one of {VERDICTS}")


@dataclass(frozen=True)
class Run:
    """One optimizer on one scenario: the whole trajectory w_0 ... w_T and its verdict."""

    scenario: Scenario
    optimizer: str
    trajectory: Tensor  # (steps + 1, 2)
    verdict: str

    @property
    def final(self) -> Tensor:
        return self.trajectory[-1]

    @property
    def final_loss(self) -> float:
        return float(loss(self.final[0], self.final[1]))

    @property
    def max_abs_weight(self) -> float:
        """The largest |w_i| the run reached (NaN ignored): how far it strayed, even if it came back."""
        return float(self.trajectory.abs().nan_to_num(nan=0.0).max())

    @property
    def flat_distance(self) -> float:
        return float(flat_distance(self.final))

    @property
    def paper_claim(self) -> str:
        return self.scenario.paper_claims.get(self.optimizer, "unstated")


def train_real(
    optimizer: str, *, init: tuple[float, float], lr: float, weight_decay: float, betas: tuple[float, float],
    steps: int,
) -> Tensor:
    """Train `DeepLinearNetwork` with the real optimizer; the trajectory w_0 ... w_T, shape (steps + 1, 2)."""
    model = DeepLinearNetwork(*init, dtype=DTYPE)
    opt = build_torch_optimizer(optimizer, list(model.parameters()), lr=lr, weight_decay=weight_decay, betas=betas)
    trajectory = torch.empty(steps + 1, 2, dtype=DTYPE)
    trajectory[0] = model.weights()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=False)
        model.loss().backward()
        opt.step()
        trajectory[step] = model.weights()
    return trajectory


def run_scenario(
    scenario: Scenario, *, betas: tuple[float, float], steps: int, criteria: VerdictCriteria
) -> list[Run]:
    """The four optimizers on one scenario, with the real optimizers."""
    runs = []
    for optimizer in OPTIMIZERS:
        trajectory = train_real(optimizer, init=scenario.init, lr=scenario.lr, weight_decay=scenario.weight_decay,
                                betas=betas, steps=steps)
        runs.append(Run(scenario, optimizer, trajectory, classify(trajectory, criteria)))
    return runs


@dataclass(frozen=True)
class BatchOutcome:
    """End of a batch of independent runs: final points (N, 2), verdict codes (N,), and trajectories if recorded."""

    final: Tensor
    verdicts: Tensor
    trajectories: Tensor | None = None

    @property
    def flat_distance(self) -> Tensor:
        return flat_distance(self.final)


def train_batched(
    optimizer: str, *, init: Tensor, lr: Tensor, weight_decay: Tensor, betas: tuple[float, float], steps: int,
    criteria: VerdictCriteria, record: bool = False,
) -> BatchOutcome:
    """Train N independent problems at once: init (N, 2), lr (N,), weight_decay (N,).

    Each problem follows exactly the trajectory `train_real` gives it (see `novograd.dln.optimizers`).
    `record` keeps the trajectories, shape (steps + 1, N, 2); otherwise only the verdict statistics are kept.
    """
    if init.ndim != 2 or init.shape[-1] != 2 or lr.shape != init.shape[:1] or weight_decay.shape != init.shape[:1]:
        raise ValueError(f"Expected init (N, 2), lr (N,), weight_decay (N,); got {tuple(init.shape)}, "
                         f"{tuple(lr.shape)}, {tuple(weight_decay.shape)}")
    w1, w2 = (init[:, i].to(DTYPE).clone() for i in range(2))
    update = build_batched_update(optimizer, [w1, w2], lr=lr.to(DTYPE), weight_decay=weight_decay.to(DTYPE),
                                  betas=betas)
    tracker = VerdictTracker(steps, init.shape[:1], criteria)
    trajectories = torch.empty(steps + 1, len(init), 2, dtype=DTYPE) if record else None
    for step in range(steps + 1):
        point = torch.stack([w1, w2], dim=-1)
        tracker.update(point)
        if trajectories is not None:
            trajectories[step] = point
        if step < steps:
            _, grad1, grad2 = loss_and_grads(w1, w2)
            update.step([grad1, grad2])
    return BatchOutcome(torch.stack([w1, w2], dim=-1), tracker.verdicts(), trajectories)


def init_axis(half_width: float, points: int) -> Tensor:
    """`points` cell centres of [-half_width, half_width]: a symmetric grid that never samples an axis of the
    (w1, w2) plane, where one gradient vanishes, exactly."""
    if points < 1 or not half_width > 0:
        raise ValueError(f"An init grid needs points >= 1 and half_width > 0, got {points}, {half_width}")
    width = 2 * half_width / points
    return torch.linspace(-half_width + width / 2, half_width - width / 2, points, dtype=DTYPE)


def hyperparameter_axis(low: float, high: float, points: int, log: bool = False) -> Tensor:
    """`points` values from low to high, both included, evenly spaced on a linear or a log scale."""
    if points < 2 or not high > low:
        raise ValueError(f"A hyperparameter axis needs points >= 2 and high > low, got {points} on [{low}, {high}]")
    if log:
        if not low > 0:
            raise ValueError(f"A log axis needs low > 0, got {low}")
        return torch.logspace(math.log10(low), math.log10(high), points, dtype=DTYPE)
    return torch.linspace(low, high, points, dtype=DTYPE)


@dataclass(frozen=True)
class InitMap:
    """Verdicts over a grid of initial points at one (lr, weight_decay): codes[optimizer] has shape (P, P),
    indexed [w2 index, w1 index] (image order), over the cell centres `axis` of [-half_width, half_width]."""

    lr: float
    weight_decay: float
    half_width: float
    axis: Tensor
    codes: dict[str, Tensor]
    scenarios: tuple[str, ...]  # the scenarios that use this (lr, weight_decay)


@dataclass(frozen=True)
class HyperparameterMap:
    """Fraction of a grid of initial points that converges, over a grid of (lr, weight_decay):
    fraction[optimizer] has shape (len(weight_decays), len(lrs))."""

    lrs: Tensor
    weight_decays: Tensor
    init_half_width: float
    init_axis: Tensor
    fraction: dict[str, Tensor]


def _init_grid(axis: Tensor) -> Tensor:
    """All points (w1, w2) of axis x axis, shape (P * P, 2), w1 varying fastest."""
    w2, w1 = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([w1.reshape(-1), w2.reshape(-1)], dim=-1)


def init_maps(
    settings: list[tuple[float, float, tuple[str, ...]]], *, half_width: float, points: int,
    betas: tuple[float, float], steps: int, criteria: VerdictCriteria,
) -> list[InitMap]:
    """For each (lr, weight_decay, scenario names): every optimizer from each of points x points initial points
    in [-half_width, half_width]^2; all settings in one batch per optimizer."""
    axis = init_axis(half_width, points)
    grid = _init_grid(axis)
    n = len(grid)
    init = grid.repeat(len(settings), 1)
    lr = torch.tensor([s[0] for s in settings], dtype=DTYPE).repeat_interleave(n)
    weight_decay = torch.tensor([s[1] for s in settings], dtype=DTYPE).repeat_interleave(n)
    codes = {
        optimizer: train_batched(optimizer, init=init, lr=lr, weight_decay=weight_decay, betas=betas, steps=steps,
                                 criteria=criteria).verdicts.reshape(len(settings), points, points)
        for optimizer in OPTIMIZERS
    }
    return [
        InitMap(lr_value, wd_value, half_width, axis, {o: c[i] for o, c in codes.items()}, names)
        for i, (lr_value, wd_value, names) in enumerate(settings)
    ]


def hyperparameter_map(
    lrs: Tensor, weight_decays: Tensor, *, half_width: float, init_points: int, betas: tuple[float, float],
    steps: int, criteria: VerdictCriteria,
) -> HyperparameterMap:
    """Every optimizer at every (lr, weight_decay) from each of init_points x init_points initial points in
    [-half_width, half_width]^2, all in one batch per optimizer."""
    axis = init_axis(half_width, init_points)
    grid = _init_grid(axis)
    wd_grid, lr_grid = torch.meshgrid(weight_decays, lrs, indexing="ij")
    cells = lr_grid.numel()
    init = grid.repeat(cells, 1)
    lr = lr_grid.reshape(-1).repeat_interleave(len(grid))
    weight_decay = wd_grid.reshape(-1).repeat_interleave(len(grid))
    fraction = {}
    for optimizer in OPTIMIZERS:
        verdicts = train_batched(optimizer, init=init, lr=lr, weight_decay=weight_decay, betas=betas, steps=steps,
                                 criteria=criteria).verdicts
        converged = (verdicts == VERDICTS.index("converged")).reshape(cells, len(grid))
        fraction[optimizer] = converged.to(DTYPE).mean(dim=-1).reshape(lr_grid.shape)
    return HyperparameterMap(lrs, weight_decays, half_width, axis, fraction)
