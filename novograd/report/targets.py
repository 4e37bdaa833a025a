"""Time-to-target and steps-to-target: how long each run trained before its first evaluation that reached its
table's target, as MLCommons AlgoPerf scores a training run.

The target of a table is on its first column (`results/paper/tables.yaml`: top-1, dev-clean WER, validation
perplexity, SacreBLEU): the worst final value the paper reports among the table's rows that this suite runs, so that
every row reached it in the paper (Table 1: SGD's 200-epoch 76.33 top-1). A run's time to it is the training wall
time (`train/elapsed_s` of the evaluation record: evaluation and checkpoint time left out, resumed segments added
up) and its steps the optimizer steps, both at the first evaluation whose value reaches the target; a run that never
reaches it (a diverged run included, unless it reached it before diverging) misses, an infinite time. The rule is
`novograd.engine.target`'s, which each paper row's config names its table's target for: a run whose summary says
where it reached this target (`steps_to_target`, `time_to_target_s`) is read from it, older runs from their
evaluation records. Runs logged before evaluation records held their training time have steps-to-target only.
Table 7's SacreBLEU is computed at the final evaluation only (intermediate ones decode newstest2013), so its
time-to-target is the run's length or a miss.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from novograd.engine.logger import format_duration
from novograd.engine.target import Reached, first_reached, summary_has, summary_reached
from novograd.engine.target import Target as RunTarget
from novograd.report.rows import RowRuns
from novograd.report.sources import Run


@dataclass(frozen=True)
class Target(RunTarget):
    """A table's target, with its column's `title` for the report."""

    title: str

    def __str__(self) -> str:
        return f"{self.title} {'≥' if self.goal == 'max' else '≤'} {self.value:g}"


def table_target(table: dict[str, Any], goals: dict[str, str]) -> Target | None:
    """The table's target (module docstring), or None when no row that runs has a paper value for its metric."""
    metric, title = next(iter(table["metrics"].items()))
    values = [row["paper"][metric] for row in table["rows"] if "experiment" in row and metric in row["paper"]]
    if not values:
        return None
    goal = goals[metric]
    return Target(metric, min(values) if goal == "max" else max(values), goal, title)


def time_to_target(run: Run, target: Target) -> Reached | None:
    """The first evaluation of `run` that reached `target`, or None (a miss): as its summary says, else (a run from
    before the summary held it, or measured to another target) from its evaluation records."""
    if summary_has(run.summary, target):
        return summary_reached(run.summary)
    return first_reached(run.history(f"eval/{target.metric}"), target)


@dataclass(frozen=True)
class RowTimes:
    """The time-to-target of a row's reproducing runs: the median steps and seconds (misses count as infinite;
    seconds None when a run that reached the target did not log its time)."""

    runs: int
    reached: int
    steps: float
    seconds: float | None


def row_times(runs: list[Run], target: Target) -> RowTimes:
    results = [time_to_target(run, target) for run in runs]
    reached = [r for r in results if r is not None]
    steps = statistics.median([r.step if r else math.inf for r in results]) if results else math.inf
    known = all(r.seconds is not None for r in reached)
    seconds = statistics.median([r.seconds if r else math.inf for r in results]) if results and known else None
    return RowTimes(len(runs), len(reached), steps, seconds)  # type: ignore[arg-type]


def _duration(seconds: float | None) -> str:
    """A row's median training time to target as `time_to_target.md` shows it."""
    if seconds is None:
        return "not logged"
    return "missed" if math.isinf(seconds) else format_duration(seconds)


@dataclass(frozen=True)
class TimeLine:
    """A row with runs and their time to its table's target: a line of `time_to_target.md` and of its W&B table."""

    table: str
    target: Target
    label: str
    experiment: str
    times: RowTimes


def time_lines(tables: dict[str, Any], rows: dict[str, RowRuns], goals: dict[str, str]) -> list[TimeLine]:
    """Per table with a target, each row with reproducing runs and their time to the target."""
    lines = []
    for name, table in tables.items():
        target = table_target(table, goals)
        for row in table["rows"]:
            row_runs = rows.get(row.get("experiment"))
            if target is not None and row_runs and row_runs.reproducing:
                lines.append(TimeLine(name, target, row["label"], row["experiment"],
                                      row_times(row_runs.reproducing, target)))
    return lines


def render_times(tables: dict[str, Any], lines: list[TimeLine]) -> str:
    """`time_to_target.md`: per table its target and, per row with runs, the runs that reached it and the median
    steps and training time to it."""
    out = ["# Time to target", "",
           "Per table, the target is the worst final value the paper reports among its rows; per row, the median "
           "over its runs of the optimizer steps and the training time (evaluation and checkpoints left out) to "
           "the first evaluation that reached it; a run that never did counts as infinite (missed)."]
    for name, table in tables.items():
        table_lines = [line for line in lines if line.table == name]
        if table_lines:
            out += ["", f"### {table['title'].split(':')[0]}: {table_lines[0].target}", "",
                    "| row | reached | steps (median) | training time (median) |", "|---|---|---|---|"]
        for line in table_lines:
            times = line.times
            steps = "missed" if math.isinf(times.steps) else f"{times.steps:g}"
            out.append(f"| {line.label} (`{line.experiment}`) | {times.reached} of {times.runs} | {steps} | "
                       f"{_duration(times.seconds)} |")
    if not lines:
        out += ["", "No run of a paper row yet."]
    return "\n".join(out) + "\n"
