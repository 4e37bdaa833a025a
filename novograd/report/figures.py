"""The paper's training curves drawn from the runs: Figure 3 (dev-clean WER against epochs at each batch size of
Table 5) and Figure 4 (train and validation perplexity against steps, Adam and NovoGrad, Table 6).

Each figure is described by the `figure` entry of its table in `results/paper/tables.yaml`: which rows, the x axis
(`epoch` or `step` of each logged record), and the curves (a logged metric, or `exp` of one: the training
perplexity of Figure 4 is exp(`train/loss`)). Every run is one line in its row's colour: runs that reproduce the
row (`novograd/report/matching.py`) thick, the row's variants thin and faint with their first difference in the
legend. Where the paper gives a curve's final value (Table 5's dev-clean WER, Table 6's validation perplexity), a
dotted horizontal line in the row's colour marks it. The y axis is logarithmic: WER and perplexity fall by orders
of magnitude over training, and the end of training, where the paper's values are, stays readable.

A figure none of whose rows has a run is not drawn; the report says which rows have no run yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from novograd.report.sources import Run
    from novograd.report.rows import RowRuns

TRANSFORMS = {None: lambda value: value, "exp": math.exp}
CURVE_STYLES = ("-", "--", "-.")  # the paper's final values are dotted
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


@dataclass
class DrawnFigure:
    """A figure and the rows of it that have no run yet (`figure` is None when no row has one)."""

    name: str
    figure: Figure | None
    missing: list[str]


def figure_rows(table: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper rows a figure draws: `spec["rows"]` in that order, else every row of the table with a config."""
    by_experiment = {row["experiment"]: row for row in table["rows"] if "experiment" in row}
    names = spec.get("rows") or list(by_experiment)
    unknown = [name for name in names if name not in by_experiment]
    if unknown:
        raise ValueError(f"Figure {spec['name']} names rows that are not in its table: {unknown}")
    return [by_experiment[name] for name in names]


def curve_points(run: Run, curve: dict[str, Any], x: str) -> tuple[list[float], list[float]]:
    """The run's (x, y) points of one curve, in x order."""
    transform = TRANSFORMS[curve.get("transform")]
    points = sorted((record[x], transform(record[curve["key"]])) for record in run.history(curve["key"]))
    return [p[0] for p in points], [p[1] for p in points]


def _legend_differences(differences: tuple[str, ...]) -> str:
    more = f" (+{len(differences) - 1} more)" if len(differences) > 1 else ""
    return f"variant: {differences[0]}{more}"


def _draw_runs(ax: Axes, runs: list[Run], spec: dict[str, Any], label: str, color: str, variant: str = "") -> int:
    """One line per run and curve, the legend naming each curve of these runs once; returns the lines drawn."""
    drawn = 0
    for style, curve in zip(CURVE_STYLES, spec["curves"]):
        legend = ", ".join(filter(None, (label, curve["label"], variant))) + (
            f" ({len(runs)} runs)" if len(runs) > 1 else "")
        for run in runs:
            xs, ys = curve_points(run, curve, spec["x"])
            if xs:
                ax.plot(xs, ys, style, color=color, linewidth=0.8 if variant else 1.8, alpha=0.45 if variant else 1.0,
                        label=legend)
                legend = "_nolegend_"
                drawn += 1
    return drawn


def draw_figure(table: dict[str, Any], spec: dict[str, Any], rows: dict[str, RowRuns]) -> DrawnFigure:
    """The figure `spec` of `table` from the runs sorted by row (`novograd.report.rows.sort_runs`)."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state is touched

    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.add_subplot()
    missing, drawn_rows = [], 0
    for color, row in zip(COLORS, figure_rows(table, spec)):
        row_runs = rows.get(row["experiment"])
        drawn = 0
        if row_runs is not None:
            drawn += _draw_runs(ax, row_runs.reproducing, spec, row["label"], color)
            for differences, runs in row_runs.variants.items():
                drawn += _draw_runs(ax, runs, spec, row["label"], color, _legend_differences(differences))
        if not drawn:
            missing.append(row["experiment"])
            continue
        drawn_rows += 1
        for curve in spec["curves"]:
            paper = row["paper"].get(curve.get("paper"))
            if paper is not None:
                ax.axhline(paper, color=color, linestyle=":", linewidth=1.2,
                           label=f"{row['label']}: the paper's final {curve['label']} ({paper:.2f})")
    if not drawn_rows:
        return DrawnFigure(spec["name"], None, missing)
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 20, 50, 100 rather than 2 x 10^1
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y_label"])
    ax.set_title(spec["title"], fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return DrawnFigure(spec["name"], figure, missing)


def write_figures(tables: dict[str, Any], rows: dict[str, RowRuns], out_dir: Path) -> list[Path]:
    """Draw every table's figure into `out_dir/<name>.png` when it has runs; say which rows have none yet. Returns
    the files written."""
    written = []
    for table in tables.values():
        spec = table.get("figure")
        if spec is None:
            continue
        drawn = draw_figure(table, spec, rows)
        path = out_dir / f"{drawn.name}.png"
        if drawn.figure is None:
            print(f"{spec['title'].split(':')[0]}: no runs yet for {', '.join(drawn.missing)}; {path} not drawn.")
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        drawn.figure.savefig(path, dpi=120)
        written.append(path)
        print(f"{path}" + (f" (no runs yet for {', '.join(drawn.missing)})" if drawn.missing else ""))
    return written
