"""Where the report finds finished runs: output directories on this machine, or the W&B API.

Both sources give the same `Run`: the row it ran (`experiment_name`), its resolved config (nested, as
`config.yaml` holds it, so that `novograd.report.matching` applies one rule to both), its final metrics under the
paper's column names, and its logged history for the figures.

- Local (`local_runs`): every directory under `results/runs/` with `summary.json` and `config.yaml`; the history is
  its `metrics.jsonl`.
- W&B (`wandb_runs`): the runs of a project whose group is a paper table and whose `experiment_name` is a paper row;
  the final metrics are the `final/<column>` summary keys `novograd.engine.logger.RunLogger` writes at the end of a
  run (a run without them has not finished), the history comes from `scan_history`.

Both leave out, and count by reason into the `set_aside` counter they are given (`make tables` prints it), the
runs that are no finished run of a row: debug runs (`debug=...`, which name no row), preempted runs (stopped
before the end, to be resumed) and, locally, unfinished ones (a `config.yaml` without `summary.json`: running,
failed or killed). `local_runs(..., debug=True)` (`make tables ARGS=--debug`) keeps the debug runs instead, each
under the row its directory names (`results/runs/<table>/<row>/...`, where `make <row> ARGS=debug=smoke` puts it),
so that the report compares them as it compares the paper's runs, never mixed with them.

A diverged run (its summary says `"diverged": true`, with `diverged_at_step`; a non-finite model is never scored, so
it has no final metrics) is a finished run: for an optimizer comparison its divergence is the result.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from novograd.engine.logger import FINAL_PREFIX, METRICS_FILE, STEP_METRIC, read_metrics, wandb_api_key_configured
from novograd.engine.run_config import CONFIG_FILE, SUMMARY_FILE
from novograd.engine.target import TRAIN_ELAPSED

# One point of a run's history: "step", "epoch", the metric asked for and, where the record has it, TRAIN_ELAPSED
# (the training time at an evaluation: novograd/engine/target.py).
Record = dict[str, float]

# Why a run is not tabulated: the keys of the `set_aside` counters.
DEBUG = "debug runs (debug=..., which reproduce no row)"
PREEMPTED = "preempted (stopped before the end: re-run the same command to resume)"
UNFINISHED = "unfinished (no final metrics: still running, failed or killed)"
NOT_DEBUG = "runs of paper rows (--debug compares debug runs only)"


@dataclass
class Run:
    """A finished run: the row it ran, its resolved config, its final metrics, and its history by metric."""

    experiment: str
    config: dict[str, Any]
    summary: dict[str, Any]
    history: Callable[[str], list[Record]] = field(repr=False)
    debug_mode: str | None = None  # the debug mode of a debug run kept with --debug

    @property
    def diverged_at_step(self) -> int | None:
        """The step at which the run diverged, or None for a run that did not."""
        if not self.summary.get("diverged"):
            return None
        step = self.summary.get("diverged_at_step")
        return int(step if step is not None else self.summary.get("steps", 0))


# ------------------------------------------------------------------------------------------------------ local files
def _jsonl_history(path: Path) -> Callable[[str], list[Record]]:
    """The records of `metrics.jsonl` that hold a metric (the file is read once, on the first request)."""

    @cache
    def records() -> list[dict[str, Any]]:
        return read_metrics(path)

    def history(metric: str) -> list[Record]:
        return [
            {"step": r["step"], "epoch": r.get("epoch", float("nan")), metric: r[metric]}
            | ({TRAIN_ELAPSED: r[TRAIN_ELAPSED]} if TRAIN_ELAPSED in r else {})
            for r in records() if metric in r
        ]

    return history


def _experiment_of_directory(run_dir: Path, runs_dir: Path) -> str | None:
    """The row a debug run's directory names (`<runs_dir>/<table>/<row>/<settings>`), else None."""
    parts = run_dir.relative_to(runs_dir).parts
    return "/".join(parts[:2]) if len(parts) >= 3 and parts[0].startswith("table") else None


def local_runs(runs_dir: Path, set_aside: Counter[str] | None = None, debug: bool = False) -> list[Run]:
    """Every finished run under `runs_dir` that names the experiment it ran (none when the directory is absent),
    or with `debug` every finished debug run under the row its directory names; the others are counted by reason
    into `set_aside`."""
    runs, set_aside = [], Counter() if set_aside is None else set_aside
    for config_path in sorted(runs_dir.rglob(CONFIG_FILE)) if runs_dir.is_dir() else []:
        if "wandb" in config_path.relative_to(runs_dir).parts:  # W&B's copy of the config, in its run folder
            continue
        summary_path = config_path.with_name(SUMMARY_FILE)
        config = OmegaConf.to_container(OmegaConf.load(config_path))
        experiment = config.get("experiment_name")  # type: ignore[union-attr]
        if not summary_path.is_file():
            set_aside[UNFINISHED] += 1
            continue
        summary = json.loads(summary_path.read_text())
        debug_mode = config.get("debug_mode")  # type: ignore[union-attr]
        if debug:
            experiment = _experiment_of_directory(config_path.parent, runs_dir) if debug_mode else None
        if not experiment:
            set_aside[DEBUG if debug_mode or not debug else NOT_DEBUG] += 1
        elif summary.get("preempted"):
            set_aside[PREEMPTED] += 1
        else:
            runs.append(Run(experiment, config, summary,  # type: ignore[arg-type]
                            _jsonl_history(summary_path.with_name(METRICS_FILE)), debug_mode))
    return runs


# ------------------------------------------------------------------------------------------------------------ W&B
class WandbRun(Protocol):
    """What the report reads of a `wandb.apis.public.Run`."""

    config: dict[str, Any]
    summary_metrics: dict[str, Any]

    def scan_history(self, keys: list[str]) -> Iterable[dict[str, Any]]: ...


class WandbApi(Protocol):
    """What the report asks of `wandb.Api()`."""

    def runs(self, path: str, filters: dict[str, Any]) -> Iterable[WandbRun]: ...


def wandb_api() -> WandbApi:
    """`wandb.Api()`, or an error that says how to give it a key."""
    if not wandb_api_key_configured():
        raise SystemExit("--from wandb reads your runs through the W&B API and needs a key: run `wandb login` or "
                         "set WANDB_API_KEY.")
    import wandb

    return wandb.Api()


def final_metrics(summary_metrics: dict[str, Any]) -> dict[str, Any]:
    """The `final/<name>` keys of a W&B run summary as `summary.json` holds them (`<name>`)."""
    return {key.removeprefix(FINAL_PREFIX): value for key, value in summary_metrics.items()
            if key.startswith(FINAL_PREFIX)}


def _wandb_history(run: WandbRun) -> Callable[[str], list[Record]]:
    """A W&B run's history by metric, each metric scanned once. `scan_history` returns only the rows that hold
    every key asked for, so the training time is scanned apart and joined by step: an evaluation logged before
    evaluation records held it (a run resumed across that change) is kept, without its time."""

    @cache
    def elapsed() -> dict[float, float]:
        return {row[STEP_METRIC]: row[TRAIN_ELAPSED] for row in run.scan_history(keys=[STEP_METRIC, TRAIN_ELAPSED])}

    @cache
    def history(metric: str) -> list[Record]:
        times = elapsed() if metric.startswith("eval/") else {}
        return [{"step": row[STEP_METRIC], "epoch": row["epoch"], metric: row[metric]}
                | ({TRAIN_ELAPSED: times[row[STEP_METRIC]]} if row[STEP_METRIC] in times else {})
                for row in run.scan_history(keys=[STEP_METRIC, "epoch", metric])]

    return history


def wandb_filters(experiments: Iterable[str]) -> dict[str, Any]:
    """The runs of the paper's rows: the group is the row's table (`table5`) and `experiment_name` the row."""
    experiments = sorted(set(experiments))
    groups = sorted({experiment.split("/")[0] for experiment in experiments})
    return {"$and": [{"group": {"$in": groups}}, {"config.experiment_name": {"$in": experiments}}]}


def wandb_runs(api: WandbApi, entity: str | None, project: str, experiments: Iterable[str],
               set_aside: Counter[str] | None = None) -> list[Run]:
    """The finished, not preempted runs of `experiments` in the W&B project `entity/project` (`project` alone:
    the key's default entity); the others the filter returns are counted by reason into `set_aside`. (Debug runs
    name no experiment, so the filter never returns them.)"""
    path = f"{entity}/{project}" if entity else project
    runs, set_aside = [], Counter() if set_aside is None else set_aside
    for run in api.runs(path, filters=wandb_filters(experiments)):
        config = dict(run.config)
        summary = final_metrics(dict(run.summary_metrics))
        experiment = config.get("experiment_name")
        if not experiment:
            set_aside[DEBUG] += 1
        elif not summary:
            set_aside[UNFINISHED] += 1
        elif summary.get("preempted"):
            set_aside[PREEMPTED] += 1
        else:
            runs.append(Run(experiment, config, summary, _wandb_history(run)))
    return runs
