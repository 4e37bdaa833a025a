"""The runs of each paper row and the lines of each paper table: what the Markdown tables (`tables.py`), the
figures (`figures.py`) and the W&B comparison (`to_wandb.py`) are drawn from.

`sort_runs` files each finished run under its row, as a reproduction or as a variant (`matching.py` decides), or as
a trial of a tuning budget (`make tune`: its config's `tuning.seed` is set), reported apart (`tuning.py`);
`table_lines` turns a paper table and those runs into its lines: the paper's rows with the statistics of their
reproducing runs, then the variants. A diverged run is in no statistic: its line names the step it diverged at.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from novograd.report.matching import row_config, row_differences
from novograd.report.sources import Run


@dataclass
class RowRuns:
    """The runs of one experiment: those that reproduce the row, the variants by what differs, and the trials of
    tuning budgets (in no mean and no variant: a trial's point is chosen by the draw, not by the row)."""

    reproducing: list[Run]
    variants: dict[tuple[str, ...], list[Run]]
    trials: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for one run) and count of one metric over runs."""

    mean: float
    std: float | None
    count: int

    def __str__(self) -> str:
        """A table's cell: one run's value alone (the line's runs column counts it), else `with_count`."""
        return f"{self.mean:.2f}" if self.std is None else self.with_count()

    def with_count(self) -> str:
        """'77.10 ± 0.14 (n=2)', or '76.00 (n=1)': the count even of one run (a claim's side has no runs column)."""
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} (n={self.count})"


@dataclass
class Line:
    """One line of a report table: a paper row (no `differences`), or a group of runs of the row's experiment that
    differ from it in the same way (a variant, no paper values)."""

    label: str
    experiment: str | None  # None: another paper's result, quoted by the paper
    differences: tuple[str, ...]
    paper: dict[str, float]
    stats: dict[str, Stat | None]  # per metric; None when no run has it
    runs: int
    diverged: tuple[int, ...] = ()  # the step each diverged run of the line diverged at

    def diverged_note(self) -> str:
        """'diverged at step 812 (1 of 3 runs)', or '' when no run diverged."""
        return divergence_note(self.diverged, self.runs) if self.diverged else ""


def divergence_note(steps: tuple[int, ...], runs: int) -> str:
    """'diverged at step 812, 900 (2 of 3 runs)': the steps the diverged ones of `runs` runs diverged at, as a
    table's line and a claim's side say it."""
    return f"diverged at step {', '.join(map(str, steps))} ({len(steps)} of {runs} runs)"


def sort_runs(runs: list[Run]) -> dict[str, RowRuns]:
    """The runs of each experiment that has a config, split into the row's reproductions and its variants."""
    by_experiment: dict[str, RowRuns] = {}
    for run in runs:
        reference = row_config(run.experiment, run.debug_mode)
        if reference is None:
            continue
        row = by_experiment.setdefault(run.experiment, RowRuns([], defaultdict(list)))
        if is_trial(run):
            row.trials.append(run)
            continue
        differences = tuple(str(d) for d in row_differences(run.config, reference))
        if differences:
            row.variants[differences].append(run)
        else:
            row.reproducing.append(run)
    return by_experiment


def is_trial(run: Run) -> bool:
    """Whether the run is a trial of a tuning budget (`make tune` set its `tuning.seed`)."""
    return (run.config.get("tuning") or {}).get("seed") is not None


def diverged_steps(runs: list[Run]) -> tuple[int, ...]:
    """The step at which each diverged run of `runs` diverged, in order."""
    return tuple(sorted(step for run in runs if (step := run.diverged_at_step) is not None))


def summary_value(run: Run, metric: str) -> float | None:
    """A run's final value of a metric: its summary's (None when the summary lacks it)."""
    value = run.summary.get(metric)
    return None if value is None else float(value)


def metric_stat(runs: list[Run], metric: str,
                value: Callable[[Run, str], float | None] = summary_value) -> Stat | None:
    """The metric's mean, spread and count over the runs with a `value` of it (by default the summary's; never a
    diverged run's)."""
    values = [v for run in runs if not run.summary.get("diverged") and (v := value(run, metric)) is not None]
    if not values:
        return None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def table_lines(table: dict[str, Any], rows: dict[str, RowRuns]) -> list[Line]:
    """The table's paper rows, each with the statistics of its reproducing runs, then its rows' variants."""
    metrics = list(table["metrics"])
    paper_lines, variant_lines = [], []
    for row in table["rows"]:
        experiment = row.get("experiment")
        row_runs = rows.get(experiment) or RowRuns([], {})
        stats = {metric: metric_stat(row_runs.reproducing, metric) for metric in metrics}
        paper_lines.append(Line(row["label"], experiment, (), row["paper"], stats, len(row_runs.reproducing),
                                diverged_steps(row_runs.reproducing)))
        for differences, runs in row_runs.variants.items():
            stats = {metric: metric_stat(runs, metric) for metric in metrics}
            variant_lines.append(Line(row["label"], experiment, differences, {}, stats, len(runs),
                                      diverged_steps(runs)))
    return paper_lines + variant_lines
