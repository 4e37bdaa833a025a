"""The paper's tables with your runs beside them: `make tables` (`python -m novograd.report.tables`).

Reads the paper's numbers from `results/paper/tables.yaml` and every finished run under `results/runs/` (a run is
a directory with `summary.json` and `config.yaml`; its `experiment_name` says which row it ran; preempted runs are
skipped), and writes one Markdown table per paper table to `results/tables/<table>.md`: the paper's value and the
mean over the runs that reproduce the row (with their count), for each of the paper's columns. A run reproduces
its row only when its config matches the row's own config on every key that defines the row
(`novograd/report/matching.py`); the row's other runs are listed below the table as variants, grouped by what
differs, and are never in the row's mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from novograd.report.matching import row_config, row_differences

REPO = Path(__file__).resolve().parents[2]
PAPER_TABLES = REPO / "results" / "paper" / "tables.yaml"


@dataclass
class Run:
    """A finished run: the row it ran, its resolved config and its final metrics."""

    experiment: str
    config: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class RowRuns:
    """The runs of one experiment: those that reproduce the row, and the variants by what differs."""

    reproducing: list[Run]
    variants: dict[tuple[str, ...], list[Run]]


def collect_runs(runs_dir: Path) -> list[Run]:
    """Every finished run under `runs_dir` that names the experiment it ran."""
    runs = []
    for summary_path in sorted(runs_dir.rglob("summary.json")):
        config_path = summary_path.with_name("config.yaml")
        if not config_path.is_file():
            continue
        config = OmegaConf.to_container(OmegaConf.load(config_path))
        summary = json.loads(summary_path.read_text())
        experiment = config.get("experiment_name")  # type: ignore[union-attr]
        if experiment and not summary.get("preempted"):
            runs.append(Run(experiment, config, summary))  # type: ignore[arg-type]
    return runs


def sort_runs(runs: list[Run]) -> dict[str, RowRuns]:
    """The runs of each experiment that has a config, split into the row's reproductions and its variants."""
    by_experiment: dict[str, RowRuns] = {}
    for run in runs:
        reference = row_config(run.experiment)
        if reference is None:
            continue
        row = by_experiment.setdefault(run.experiment, RowRuns([], defaultdict(list)))
        differences = tuple(str(d) for d in row_differences(run.config, reference))
        if differences:
            row.variants[differences].append(run)
        else:
            row.reproducing.append(run)
    return by_experiment


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} (n={len(values)})"


def _mean_cells(runs: list[Run], metrics: dict[str, str]) -> list[str]:
    return [_cell([run.summary[metric] for run in runs if metric in run.summary]) for metric in metrics]


def render_table(table: dict[str, Any], rows: dict[str, RowRuns]) -> str:
    """One paper table as Markdown: per row and column, the paper's value and the mean of the reproducing runs;
    then the variants of its rows."""
    metrics: dict[str, str] = table["metrics"]
    header = ["row", *(f"{title} {source}" for title in metrics.values() for source in ("(paper)", "(ours)")), "runs"]
    lines = [f"### {table['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    variant_lines = []
    for row in table["rows"]:
        experiment = row.get("experiment")
        row_runs = rows.get(experiment, RowRuns([], {})) if experiment else RowRuns([], {})
        cells = [f"{row['label']}" + (f" (`{experiment}`)" if experiment else " (reference, not a run)")]
        ours = _mean_cells(row_runs.reproducing, metrics) if experiment else [""] * len(metrics)
        for metric, mine in zip(metrics, ours):
            paper = row["paper"].get(metric)
            cells.append(f"{paper:.2f} | {mine}" if paper is not None else f"- | {mine}")
        cells.append(str(len(row_runs.reproducing)) if experiment else "")
        lines.append("| " + " | ".join(cells) + " |")
        for differences, runs in row_runs.variants.items():
            variant_lines.append(
                f"| `{experiment}` | {'; '.join(differences)} | " + " | ".join(_mean_cells(runs, metrics))
                + f" | {len(runs)} |"
            )
    if variant_lines:
        lines += [
            "", "Variants: runs of these rows' experiments that differ from the row's config (not in the means above).",
            "", "| row | differs from the row | " + " | ".join(metrics.values()) + " | runs |",
            "|" + "---|" * (len(metrics) + 3), *variant_lines,
        ]
    return "\n".join(lines) + "\n"


def write_tables(runs_dir: Path, out_dir: Path, paper_tables: Path = PAPER_TABLES) -> list[Path]:
    """Write `out_dir/<table>.md` for every table of the paper; returns the files written."""
    tables = OmegaConf.to_container(OmegaConf.load(paper_tables))
    runs = collect_runs(runs_dir) if runs_dir.is_dir() else []
    rows = sort_runs(runs)
    paper_rows = {row.get("experiment") for t in tables.values() for row in t["rows"]}  # type: ignore[union-attr]
    unknown = sorted({run.experiment for run in runs} - (paper_rows & set(rows)))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():  # type: ignore[union-attr]
        path = out_dir / f"{name}.md"
        path.write_text(render_table(table, rows))
        written.append(path)
    if unknown:
        print(f"Runs of experiments that are no paper row with a config, not tabulated: {', '.join(unknown)}")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "results" / "runs", help="where the runs are")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tables", help="where the tables go")
    args = parser.parse_args(argv)
    for path in write_tables(args.runs, args.out):
        print(path)


if __name__ == "__main__":
    main()
