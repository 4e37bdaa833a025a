"""The paper's tables with your runs beside them: `make tables` (`python -m novograd.report.tables`).

Reads the paper's numbers from `results/paper/tables.yaml` and every finished run under `results/runs/` (a run is
a directory with `summary.json` and `config.yaml`; its `experiment_name` says which row it reproduces; preempted
runs are skipped), and writes one Markdown table per paper table to `results/tables/<table>.md`: the paper's value
and the mean over your runs of the same row (with their count), for each of the paper's columns.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
PAPER_TABLES = REPO / "results" / "paper" / "tables.yaml"


def collect_runs(runs_dir: Path) -> dict[str, list[dict[str, float]]]:
    """Final metrics of every finished run under `runs_dir`, by the experiment (paper row) it ran."""
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for summary_path in sorted(runs_dir.rglob("summary.json")):
        config_path = summary_path.with_name("config.yaml")
        if not config_path.is_file():
            continue
        experiment = OmegaConf.load(config_path).get("experiment_name")
        summary = json.loads(summary_path.read_text())
        if experiment and not summary.get("preempted"):
            runs[experiment].append(summary)
    return runs


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} (n={len(values)})"


def render_table(table: dict[str, Any], runs: dict[str, list[dict[str, float]]]) -> str:
    """One paper table as Markdown: per row and column, the paper's value and the mean of the matching runs."""
    metrics: dict[str, str] = table["metrics"]
    header = ["row", *(f"{title} {source}" for title in metrics.values() for source in ("(paper)", "(ours)")), "runs"]
    lines = [f"### {table['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        experiment = row.get("experiment")
        row_runs = runs.get(experiment, []) if experiment else []
        cells = [f"{row['label']}" + (f" (`{experiment}`)" if experiment else " (reference, not a run)")]
        for metric in metrics:
            paper = row["paper"].get(metric)
            ours = _cell([run[metric] for run in row_runs if metric in run]) if experiment else ""
            cells.append(f"{paper:.2f} | {ours}" if paper is not None else f"- | {ours}")
        cells.append(str(len(row_runs)) if experiment else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(runs_dir: Path, out_dir: Path, paper_tables: Path = PAPER_TABLES) -> list[Path]:
    """Write `out_dir/<table>.md` for every table of the paper; returns the files written."""
    tables = OmegaConf.to_container(OmegaConf.load(paper_tables))
    runs = collect_runs(runs_dir) if runs_dir.is_dir() else {}
    unknown = sorted(set(runs) - {row.get("experiment") for t in tables.values() for row in t["rows"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = out_dir / f"{name}.md"
        path.write_text(render_table(table, runs))
        written.append(path)
    if unknown:
        print(f"Runs of experiments that are no paper row, not tabulated: {', '.join(unknown)}")
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
