"""The best trial of each tuning budget (`make tune`, novograd/tuning.py) beside the paper's hand-tuned row:
`results/tables/tuning.md`.

A budget is a row's trials drawn with one seed (`tuning.seed` in their configs; `tuning.trial` says which point).
Its best trial is the one with the best final value of the workload's primary metric (the metric that chooses the
best checkpoint: top-1, dev-clean WER, validation perplexity, newstest2013 BLEU; so that Table 7's budget is never
chosen on the newstest2014 BLEU it reports), shown with the table's first column and the point it ran (what differs
from the row's config). A diverged trial is a trial that failed: it counts in the budget, is never the best, and the
line says how many diverged and at which steps. Every row of a table that has a trial is listed, a row without
trials too ("no trials"), so that unequal budgets show.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from typing import Any

from novograd.report.matching import row_config, row_differences
from novograd.report.rows import RowRuns, diverged_steps, metric_stat
from novograd.report.sources import Run


@cache
def primary_metric(workload_target: str) -> tuple[str, str]:
    """The primary metric of a workload class (`workload._target_` of a run's config) and its goal (max or min)."""
    from hydra.utils import get_class

    workload = get_class(workload_target)
    return workload.primary_metric, workload.metric_goals[workload.primary_metric]


def best_trial(trials: list[Run]) -> Run | None:
    """The trial with the best final primary metric among those that did not diverge (None: no such trial)."""
    metric, goal = primary_metric(trials[0].config["workload"]["_target_"])
    scored = [t for t in trials if not t.summary.get("diverged") and t.summary.get(metric) is not None]
    if not scored:
        return None
    pick = max if goal == "max" else min
    return pick(scored, key=lambda t: float(t.summary[metric]))


def budgets(trials: list[Run]) -> dict[int, list[Run]]:
    """A row's trials by the seed of their budget, in the order of their trial index."""
    by_seed: dict[int, list[Run]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.config["tuning"]["trial"]):
        by_seed[int(trial.config["tuning"]["seed"])].append(trial)
    return dict(sorted(by_seed.items()))


def point(trial: Run) -> str:
    """What the trial set differently from its row: `optimizer.lr 0.01219 instead of 0.007; ...`."""
    reference = row_config(trial.experiment, trial.debug_mode)
    return "; ".join(str(d) for d in row_differences(trial.config, reference or {}))


def budget_cells(trials: list[Run], column: str) -> list[str]:
    """The cells of one budget: its trials, how many diverged, the best trial's values and its point."""
    metric, _ = primary_metric(trials[0].config["workload"]["_target_"])
    diverged = diverged_steps(trials)
    failed = f"{len(diverged)} (at step {', '.join(map(str, diverged))})" if diverged else "0"
    best = best_trial(trials)
    if best is None:
        return [str(len(trials)), failed, "none: no trial finished with a metric", ""]
    value = best.summary.get(column)
    shown = "-" if value is None else f"{float(value):.2f}"
    if metric != column:
        shown += f" ({metric} {float(best.summary[metric]):.2f})"
    return [str(len(trials)), failed, f"{shown}, trial {best.config['tuning']['trial']}", point(best)]


def render_tuning(tables: dict[str, Any], rows: dict[str, RowRuns]) -> str | None:
    """`tuning.md`: per table with trials, each row's hand-tuned values and its budgets' best trials; None when no
    row has a trial."""
    out = ["# Equal tuning budgets", "",
           "Per row, the paper's hand-tuned value, the mean of your runs of the row as the paper tuned it, and per "
           "tuning budget (`make tune`: its seed) the number of trials, those that diverged (failed trials, never "
           "the best) and the best trial, chosen by the final value of the workload's primary metric (in "
           "parentheses where it is not the table's column), with the point it ran."]
    for table in tables.values():
        experiments = [row for row in table["rows"] if "experiment" in row]
        if not any(rows.get(row["experiment"]) and rows[row["experiment"]].trials for row in experiments):
            continue
        column, title = next(iter(table["metrics"].items()))
        out += ["", f"### {table['title'].split(':')[0]}: {title}", "",
                f"| row | paper (hand-tuned) | yours (hand-tuned) | budget seed | trials | diverged | best trial "
                f"| its point |", "|---|---|---|---|---|---|---|---|"]
        for row in experiments:
            row_runs = rows.get(row["experiment"]) or RowRuns([], {})
            paper = f"{row['paper'][column]:.2f}" if column in row["paper"] else "-"
            mine = str(metric_stat(row_runs.reproducing, column) or "-")
            label = f"{row['label']} (`{row['experiment']}`)"
            if not row_runs.trials:
                out.append(f"| {label} | {paper} | {mine} | - | no trials | | | |")
            for seed, trials in budgets(row_runs.trials).items():
                out.append(f"| {label} | {paper} | {mine} | {seed} | " + " | ".join(budget_cells(trials, column)) + " |")
    return "\n".join(out) + "\n" if len(out) > 3 else None
