"""Verdicts on a training run, computed from its trajectory, never judged by eye.

The verdicts look at the *tail* of a run, its last `tail_steps` steps. A run is *diverged* if a weight ever becomes
non-finite or is outside the box |w_i| <= bound anywhere in the tail (it has escaped; an excursion early on that
comes back does not count); otherwise *converged* if the loss stays below `loss_threshold` throughout the tail
(the run ends on the hyperbola, not just crossing it); otherwise *oscillating* if it still moves (a weight spans
more than `still_tolerance` over the tail) or *stalled* if it has come to rest off the hyperbola (at a minimum of
the L2-regularised loss, or at the saddle).
Oscillating and stalled together are the "bounded but not converged" runs.

The same tracker serves single runs (fed a stored trajectory) and the batched robustness maps (fed one step at
a time, so that thousands of trajectories are never stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from novograd.dln.problem import loss

VERDICTS = ("converged", "oscillating", "stalled", "diverged")
CONVERGED, OSCILLATING, STALLED, DIVERGED = range(len(VERDICTS))


@dataclass(frozen=True)
class VerdictCriteria:
    """Thresholds of the verdicts (see the module docstring and docs/dln.md for why these values)."""

    loss_threshold: float = 0.01
    tail_steps: int = 50
    bound: float = 10.0
    still_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.loss_threshold > 0 and self.bound > 0 and self.still_tolerance >= 0):
            raise ValueError(f"Verdict thresholds must be positive, got {self}")
        if self.tail_steps < 1:
            raise ValueError(f"tail_steps must be at least 1, got {self.tail_steps}")


class VerdictTracker:
    """Streams the points w_0, ..., w_T of a batch of trajectories (shape (..., 2) each) and classifies them.

    The tail is the last `tail_steps` points, w_{T - tail_steps + 1} ... w_T; with fewer points in all, the whole
    trajectory.
    """

    def __init__(self, total_steps: int, batch_shape: torch.Size | tuple[int, ...], criteria: VerdictCriteria):
        self.criteria = criteria
        self.tail_start = max(total_steps - criteria.tail_steps + 1, 0)
        self.step = 0
        self.finite = torch.ones(batch_shape, dtype=torch.bool)
        self.tail_bounded = torch.ones(batch_shape, dtype=torch.bool)
        self.tail_max_loss = torch.full(batch_shape, -torch.inf, dtype=torch.float64)
        self.tail_min = torch.full((*batch_shape, 2), torch.inf, dtype=torch.float64)
        self.tail_max = torch.full((*batch_shape, 2), -torch.inf, dtype=torch.float64)

    def update(self, w: Tensor) -> None:
        """Take the next point of every trajectory."""
        self.finite &= w.isfinite().all(dim=-1)
        if self.step >= self.tail_start:
            # NaN fails `<=`, so it counts as out of bounds.
            self.tail_bounded &= (w.abs() <= self.criteria.bound).all(dim=-1)
            self.tail_max_loss = torch.fmax(self.tail_max_loss, loss(w[..., 0], w[..., 1]).to(torch.float64))
            self.tail_min = torch.fmin(self.tail_min, w.to(torch.float64))
            self.tail_max = torch.fmax(self.tail_max, w.to(torch.float64))
        self.step += 1

    def verdicts(self) -> Tensor:
        """Verdict codes (indices into `VERDICTS`) of the trajectories seen so far."""
        moving = (self.tail_max - self.tail_min > self.criteria.still_tolerance).any(dim=-1)
        codes = torch.where(moving, OSCILLATING, STALLED)
        codes = torch.where(self.tail_max_loss < self.criteria.loss_threshold, CONVERGED, codes)
        return torch.where(self.finite & self.tail_bounded, codes, DIVERGED)


def classify(trajectory: Tensor, criteria: VerdictCriteria = VerdictCriteria()) -> str:
    """The verdict on one trajectory of shape (T + 1, 2): w_0 ... w_T."""
    if trajectory.ndim != 2 or trajectory.shape[-1] != 2:
        raise ValueError(f"Expected a trajectory of shape (steps + 1, 2), got {tuple(trajectory.shape)}")
    tracker = VerdictTracker(trajectory.shape[0] - 1, (), criteria)
    for point in trajectory:
        tracker.update(point)
    return VERDICTS[int(tracker.verdicts())]
