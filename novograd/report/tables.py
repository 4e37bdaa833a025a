"""The paper's tables and figures with your runs beside them: `make tables` (`python -m novograd.report.tables`).

Reads the paper's numbers from `results/paper/tables.yaml` and every finished run, from `results/runs/` (a run is
a directory with `summary.json` and `config.yaml`; its `experiment_name` says which row it ran) or from a W&B
project (`--from wandb`); debug, preempted and unfinished runs are set aside, and the report says how many and
why. Writes one Markdown table per paper table to `results/tables/<table>.md` (git-ignored, like
`results/figures/`: the report is yours, and regenerating it never dirties a checkout): the paper's value, and the
mean, sample standard deviation and count of the runs that reproduce the row, for each of the paper's columns; a
diverged run is in no mean, the line under its row says at which step it diverged. A run reproduces its row only
when its config matches the row's own config on every key that defines the row (`novograd/report/matching.py`);
the row's other runs are listed below the table as variants, grouped by what differs, and are never in the row's
mean. From the same runs: the paper's claims judged into `results/tables/claims.md` (`novograd/report/claims.py`),
each row's steps and training time to its table's target into `results/tables/time_to_target.md`
(`novograd/report/targets.py`) with the optimizers' performance profiles (`novograd/report/profiles.py`, figure in
`results/figures/`), the best trial of each tuning budget (`make tune`) beside the row it tunes, into
`results/tables/tuning.md` (`novograd/report/tuning.py`), and Figures 3 and 4 drawn from the runs' histories
(`novograd/report/figures.py`). The
tables and the claims' summary line are printed too. `--debug` compares the debug runs (`debug=smoke`, ...)
instead, each as a run of its row's debug twin: the same tables and claims, a look at the machinery, never at the
paper's numbers. `--to wandb` also logs every table and figure to one run of the
W&B project (`novograd/report/to_wandb.py`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from novograd.report.claims import load_claims, summary_line, write_claims
from novograd.report.figures import write_figures
from novograd.report.rows import Line, RowRuns, sort_runs, table_lines
from novograd.report.sources import Run, local_runs, wandb_api, wandb_runs
from novograd.report.profiles import write_profiles
from novograd.report.targets import render_times, time_lines
from novograd.report.to_wandb import log_comparison
from novograd.report.tuning import render_tuning

REPO = Path(__file__).resolve().parents[2]
PAPER_TABLES = REPO / "results" / "paper" / "tables.yaml"
DEFAULT_PROJECT = "novograd"  # configs/logger/wandb.yaml
NO_ROW = "of experiments that are no paper row (named below)"


def load_paper_tables(path: Path = PAPER_TABLES) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def paper_experiments(tables: dict[str, Any]) -> set[str]:
    """Every experiment that is a paper row."""
    return {row["experiment"] for table in tables.values() for row in table["rows"] if "experiment" in row}


def render_markdown(table: dict[str, Any], lines: list[Line]) -> str:
    """One paper table as Markdown: per row and column the paper's value and the reproducing runs' statistics;
    then the variants of its rows."""
    metrics: dict[str, str] = table["metrics"]
    header = ["row", *(f"{title} {source}" for title in metrics.values() for source in ("(paper)", "(ours)")), "runs"]
    out = [f"### {table['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    variants = []
    for line in lines:
        ours = [str(line.stats[metric] or "-") for metric in metrics]
        if line.differences:
            variants.append(f"| `{line.experiment}` | {'; '.join(line.differences)} | " + " | ".join(ours)
                            + f" | {line.runs} |")
            if line.diverged:
                variants.append(f"| ↳ {line.diverged_note()} |" + " |" * (len(metrics) + 2))
            continue
        if line.experiment is None:
            cells = [f"{line.label} (reference, not a run)"] + [
                f"{line.paper[metric]:.2f} | " if metric in line.paper else "- | " for metric in metrics] + [""]
        else:
            cells = [f"{line.label} (`{line.experiment}`)"] + [
                (f"{line.paper[metric]:.2f}" if metric in line.paper else "-") + f" | {mine}"
                for metric, mine in zip(metrics, ours)] + [str(line.runs)]
        out.append("| " + " | ".join(cells) + " |")
        if line.diverged:  # for an optimizer comparison a divergence is a result: under its row, never in a mean
            out.append(f"| ↳ {line.diverged_note()} |" + " |" * (len(header) - 1))
    if any(line.runs > 1 for line in lines):
        out += ["", "Ours: mean ± sample standard deviation (n = runs) where several runs reproduce a row."]
    if variants:
        out += [
            "", "Variants: runs of these rows' experiments that differ from the row's config (not in the means above).",
            "", "| row | differs from the row | " + " | ".join(metrics.values()) + " | runs |",
            "|" + "---|" * (len(metrics) + 3), *variants,
        ]
    return "\n".join(out) + "\n"


def write_tables(tables: dict[str, Any], rows: dict[str, RowRuns], out_dir: Path) -> dict[str, list[Line]]:
    """Write `out_dir/<table>.md` for every table of the paper; returns each table's lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = {}
    for name, table in tables.items():
        lines[name] = table_lines(table, rows)
        (out_dir / f"{name}.md").write_text(render_markdown(table, lines[name]))
    return lines


def collect(source: str, runs_dir: Path, entity: str | None, project: str, tables: dict[str, Any],
            set_aside: Counter[str], debug: bool = False) -> list[Run]:
    """The finished runs of the chosen source (with `debug`: the debug runs); the others counted by reason into
    `set_aside`."""
    if source == "wandb":
        if debug:
            raise SystemExit("--debug compares the debug runs in --runs (W&B groups them apart: debug-<mode>-<table>); "
                             "leave out --from wandb.")
        return wandb_runs(wandb_api(), entity, project, paper_experiments(tables), set_aside)
    return local_runs(runs_dir, set_aside, debug)


def census(where: str, runs: list[Run], rows: dict[str, RowRuns], set_aside: Counter[str]) -> str:
    """What the tables hold of the runs found: how many reproduce a row, are variants, or were set aside and why."""
    reproducing = sum(len(row.reproducing) for row in rows.values())
    variants = sum(len(group) for row in rows.values() for group in row.variants.values())
    trials = sum(len(row.trials) for row in rows.values())
    no_row = len(runs) - reproducing - variants - trials
    if no_row:
        set_aside = set_aside + Counter({NO_ROW: no_row})
    if reproducing + variants + trials:
        found = (f"{reproducing + variants + trials} finished runs of paper rows in {where}: {reproducing} "
                 f"reproduce their row, {variants} are variants (listed under their table, never in a row's mean)"
                 + (f", {trials} are tuning trials (tuning.md)." if trials else "."))
    else:
        found = f"No finished runs of paper rows in {where}: the tables hold the paper's values only."
    if not set_aside:
        return found
    reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(set_aside.items()))
    return f"{found}\nSet aside: {reasons}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", choices=("local", "wandb"), default="local",
                        help="read the runs from --runs (default) or from the W&B project --entity/--project")
    parser.add_argument("--runs", type=Path, default=REPO / "results" / "runs", help="where the local runs are")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your key's default entity)")
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="W&B project (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tables", help="where the tables go")
    parser.add_argument("--figures", type=Path, default=REPO / "results" / "figures", help="where the figures go")
    parser.add_argument("--to", choices=("files", "wandb"), default="files",
                        help="wandb: also log the tables, figures and the DLN study's figures to one run of the "
                             "W&B project (the files are written either way)")
    parser.add_argument("--debug", action="store_true",
                        help="compare the debug runs (debug=smoke, ...) side by side, each as a run of its row's "
                             "debug twin, instead of the paper's runs")
    parser.add_argument("--dln", type=Path, default=REPO / "results" / "dln",
                        help="the deep linear network study's output (`make dln`), logged with --to wandb")
    args = parser.parse_args(argv)

    tables = load_paper_tables()
    set_aside: Counter[str] = Counter()
    claims = load_claims(tables=tables)
    runs = collect(args.source, args.runs, args.entity, args.project, tables, set_aside, args.debug)
    where = f"W&B project {args.project}" if args.source == "wandb" else str(args.runs)
    if args.debug:
        where = f"debug runs of {where} (each judged against its row's debug twin, not the paper)"
    rows = sort_runs(runs)
    rows = {experiment: row for experiment, row in rows.items() if experiment in paper_experiments(tables)}
    print(census(where, runs, rows, set_aside))
    unknown = sorted({run.experiment for run in runs} - set(rows))
    if unknown:
        print(f"Runs of experiments that are no paper row with a config, not tabulated: {', '.join(unknown)}")
    lines = write_tables(tables, rows, args.out)
    for name in tables:
        print(f"\n{(args.out / f'{name}.md').read_text()}")
    verdicts = write_claims(claims, tables, rows, args.out)
    times_to_target = time_lines(tables, rows, claims["goals"])
    profiles, profile_figure = write_profiles(tables, times_to_target, args.figures)
    times = f"{render_times(tables, times_to_target)}\n{profiles}"
    (args.out / "time_to_target.md").write_text(times)
    print(f"\n{times}")
    tuning = render_tuning(tables, rows)
    if tuning:
        (args.out / "tuning.md").write_text(tuning)
        print(tuning)
    print(f"Claims: {summary_line(verdicts)} {args.out / 'claims.md'}")
    figures = write_figures(tables, rows, args.figures) + ([profile_figure] if profile_figure else [])
    if args.to == "wandb":
        log_comparison(tables, lines, verdicts, times_to_target, figures, args.dln, args.entity, args.project,
                       args.out.parent)


if __name__ == "__main__":
    main()
