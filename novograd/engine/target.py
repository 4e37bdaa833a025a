"""A run's target and where the run first reached it: time-to-target as MLCommons AlgoPerf scores a training run.

The target is a value of a paper metric that every optimizer of the row's table reached in the paper (the worst
final value among the table's rows: `novograd/report/targets.py` derives it from `results/paper/tables.yaml`, and a
test keeps each row's config equal to it). The row's experiment config names it, `target: {metric: top1, value:
76.33}` (null: no target, as for runs of no row); which way is better is the workload's `metric_goals`. The run
reaches it at its first evaluation whose value is at least (`max`) or at most (`min`) the target; its steps and
training time to target are that evaluation's step and `train/elapsed_s` (the training wall time, evaluation and
checkpoint time left out, resumed segments added up). `Target.reached` is the rule the trainer applies as it
evaluates; `first_reached` applies it to logged evaluation records: the trainer's for a resumed run whose checkpoint
predates the target, the report's for runs whose summary predates the keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The training wall time at an evaluation (evaluation and checkpoint time left out, resumed segments added up): a key
# of every evaluation record in metrics.jsonl and the W&B history (runs logged before it existed lack it).
TRAIN_ELAPSED = "train/elapsed_s"


@dataclass(frozen=True)
class Target:
    """`metric` reaching `value`: at least it for `goal` max, at most for min."""

    metric: str
    value: float
    goal: str

    def reached(self, value: float | None) -> bool:
        """Whether `value` reaches the target; a missing (not evaluated) or non-finite value never does."""
        if value is None or not math.isfinite(value):
            return False
        return value >= self.value if self.goal == "max" else value <= self.value

    def as_dict(self) -> dict[str, Any]:
        """The target as summary.json and the W&B summary hold it (`target`)."""
        return {"metric": self.metric, "value": self.value, "goal": self.goal}


@dataclass(frozen=True)
class Reached:
    """Where a run first reached its target: the optimizer step, and the training time (None: not logged)."""

    step: int
    seconds: float | None


def run_target(setting: Mapping[str, Any] | None, metric_goals: Mapping[str, str]) -> Target | None:
    """The run's `target` config (None: no target) as a Target, its goal the workload's; a clear error otherwise."""
    if setting is None:
        return None
    if not isinstance(setting, Mapping) or set(setting) != {"metric", "value"}:
        raise ValueError(f"target must be null or {{metric: <name>, value: <number>}}, got {setting!r}.")
    metric, value = setting["metric"], setting["value"]
    if metric not in metric_goals:
        raise ValueError(f"target.metric={metric!r} is no metric of this workload; choose one of "
                         f"{', '.join(sorted(metric_goals))}.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"target.value must be a finite number, got {value!r}.")
    return Target(metric, float(value), metric_goals[metric])


def first_reached(records: Iterable[Mapping[str, Any]], target: Target) -> Reached | None:
    """The first evaluation record (by step) whose `eval/<metric>` reaches `target`, or None (a miss)."""
    key = f"eval/{target.metric}"
    for record in sorted((r for r in records if key in r), key=lambda r: r["step"]):
        if target.reached(record[key]):
            return Reached(int(record["step"]), record.get(TRAIN_ELAPSED))
    return None


def target_summary(target: Target | None, steps: int | None, seconds: float | None) -> dict[str, Any]:
    """The summary keys of a run's target (none without a target): the target, whether it was reached (`steps`
    None: missed), and the steps and training seconds to it (null for a miss)."""
    if target is None:
        return {}
    return {"target": target.as_dict(), "reached_target": steps is not None, "steps_to_target": steps,
            "time_to_target_s": seconds}


def summary_has(summary: Mapping[str, Any], target: Target) -> bool:
    """Whether a run's summary says where it reached `target` (not when written before the keys existed, or for
    another target)."""
    return summary.get("target") == target.as_dict() and "reached_target" in summary


def summary_reached(summary: Mapping[str, Any]) -> Reached | None:
    """Where the summary's run reached its target, or None (a miss); see `summary_has`."""
    if not summary["reached_target"]:
        return None
    return Reached(int(summary["steps_to_target"]), summary["time_to_target_s"])
