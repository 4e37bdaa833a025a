"""`make tables ARGS="--to wandb"`: the paper-against-reproduced view in the W&B project, next to the runs.

Everything goes to one run of the project, id `paper-comparison` (job type `report`, outside the tables' groups),
resumed on every call so that the project holds one such run whose panels show the latest report:
- `tables/<table>`: each paper table as a `wandb.Table`, one line per paper row (the paper's value, and the mean,
  standard deviation and count of the runs that reproduce it) and one per group of variants;
- `tables/claims`: each claim's verdict in your runs and in the paper's numbers, with its comparisons
  (`claims.md`);
- `tables/time_to_target`: per row with runs, its table's target, the runs that reached it and the median steps
  and training seconds to it (None for a miss), as `time_to_target.md`;
- `figures/<figure>`: Figures 3 and 4 and the performance profiles as images, when they were drawn;
- `dln/<figure>` and `dln/verdicts`: the deep linear network study's figures and its table of runs (paper claim
  against observed verdict), from `make dln`'s output, when it is there.

Online with a W&B key, else offline (WANDB_MODE decides first, as for training runs) with the `wandb sync` command
printed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from novograd.engine.logger import resolve_wandb_mode, wandb_sync_command
from novograd.report.claims import Verdict
from novograd.report.rows import Line
from novograd.report.targets import TimeLine

COMPARISON_RUN_ID = "paper-comparison"


def table_columns(table: dict[str, Any]) -> list[str]:
    """Columns of a paper table's `wandb.Table`: which line, then per metric the paper's value and ours."""
    columns = ["row", "experiment", "differs from the row", "runs"]
    for title in table["metrics"].values():
        columns += [f"{title} (paper)", f"{title} (mean)", f"{title} (std)"]
    return columns


def table_data(table: dict[str, Any], lines: list[Line]) -> list[list[Any]]:
    """One list per line, in `table_columns` order (None where there is no value)."""
    data = []
    for line in lines:
        values: list[Any] = [line.label, line.experiment, "; ".join(line.differences), line.runs]
        for metric in table["metrics"]:
            stat = line.stats[metric]
            values += [line.paper.get(metric), stat and stat.mean, stat and stat.std]
        data.append(values)
    return data


CLAIM_COLUMNS = ["claim", "source", "statement", "your runs", "the paper's numbers", "a run diverged", "comparisons"]
TIME_COLUMNS = ["table", "target", "row", "experiment", "runs", "reached", "steps (median)",
                "training seconds (median)"]


def claims_data(verdicts: list[Verdict]) -> list[list[Any]]:
    """One list per claim, in `CLAIM_COLUMNS` order."""
    return [[v.claim["id"], v.claim["source"], v.claim["claim"], v.verdict, v.paper_verdict, v.diverged,
             "\n".join(map(str, v.comparisons))] for v in verdicts]


def times_data(lines: list[TimeLine]) -> list[list[Any]]:
    """One list per row with runs, in `TIME_COLUMNS` order; a median that missed the target is None."""

    def finite(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else value

    return [[line.table, str(line.target), line.label, line.experiment, line.times.runs, line.times.reached,
             finite(line.times.steps), finite(line.times.seconds)] for line in lines]


def _cell(value: Any) -> Any:
    """A JSON value as a `wandb.Table` cell: lists (initial points, weights) as text."""
    return ", ".join(map(str, value)) if isinstance(value, list) else value


def dln_payload(dln_dir: Path) -> dict[str, Any]:
    """The DLN study's figures and its runs' verdicts, as `make dln` wrote them into `dln_dir` (empty if absent)."""
    import wandb

    payload: dict[str, Any] = {f"dln/{path.stem}": wandb.Image(str(path)) for path in sorted(dln_dir.glob("*.png"))}
    summary_path = dln_dir / "summary.json"
    runs = json.loads(summary_path.read_text())["runs"] if summary_path.is_file() else []
    if runs:
        columns = list(runs[0])
        payload["dln/verdicts"] = wandb.Table(columns=columns, data=[[_cell(run.get(c)) for c in columns]
                                                                     for run in runs])
    return payload


def log_comparison(
    tables: dict[str, Any],
    lines: dict[str, list[Line]],
    verdicts: list[Verdict],
    times: list[TimeLine],
    figures: list[Path],
    dln_dir: Path,
    entity: str | None,
    project: str,
    wandb_root: Path,
) -> None:
    """Log the report's tables, the claims' verdicts, the times to target, figures and the DLN study to the `paper-comparison` run of `entity/project`;
    W&B's local files go to `wandb_root/wandb/`."""
    import wandb

    mode = resolve_wandb_mode(None)
    wandb_root.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, id=COMPARISON_RUN_ID, name="paper comparison",
                     job_type="report", group="paper comparison", resume="allow", mode=mode, dir=str(wandb_root))
    payload: dict[str, Any] = {
        f"tables/{name}": wandb.Table(columns=table_columns(table), data=table_data(table, lines[name]))
        for name, table in tables.items()
    }
    payload["tables/claims"] = wandb.Table(columns=CLAIM_COLUMNS, data=claims_data(verdicts))
    payload["tables/time_to_target"] = wandb.Table(columns=TIME_COLUMNS, data=times_data(times))
    payload |= {f"figures/{path.stem}": wandb.Image(str(path)) for path in figures}
    payload |= dln_payload(dln_dir)
    run.log(payload)
    offline = run.settings.mode == "offline"
    run.finish()
    if offline:
        wandb.teardown()  # flush the offline run to disk before naming it
        print(f"W&B ran offline; upload the comparison with:  "
              f"{wandb_sync_command(wandb_root / 'wandb', COMPARISON_RUN_ID)}")
    else:
        print(f"Logged {len(tables)} tables, the claims, the times to target, {len(figures)} figures and the DLN study to run {COMPARISON_RUN_ID} "
              f"of W&B project {project}.")
