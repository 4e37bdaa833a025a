"""Run records on rank 0: `metrics.jsonl` (always), Weights & Biases (unless `logger=none`), the console.

The console gets, every `trainer.log_every_steps`, either a tqdm bar (on a terminal with `trainer.progress_bar`)
or one plain line (`TrainingStatus.line`: step/total, loss, lr, throughput, elapsed, ETA), which a SLURM log file
holds without carriage returns; every run ends with one `summary_line`.

W&B runs offline when no API key is configured (or when WANDB_MODE says so) and prints the `wandb sync` command
that uploads every segment of the run; the run id lives in the checkpoint so a resumed run continues the same W&B
run.

A W&B run is laid out for comparing the optimizers of a paper table in the dashboard:
- `group` is the paper table (`table5`; `logger.group`, else the table of `experiment_name`) and `job_type` the
  optimizer, so grouping the runs by group, then by job type, gives the paper's layout; a debug run
  (`debug=smoke`, ...) is tagged `debug` and grouped apart (`debug-smoke-table5`), so it is never averaged with
  the paper's runs;
- the config holds the resolved config as `config.yaml` does (nested: the dashboard shows `optimizer.lr`, and the
  report's row matching reads it back), plus flat keys for the usual filters (`dashboard_config`), among them
  the world size, which the config does not hold;
- the summary holds the final metrics as `summary.json` does, under `final/<column>` with the paper's column names
  (`final/top1`, `final/wer_dev_clean`, ...), and each evaluated metric's best value under `eval/<column>` (the
  highest top-1 or BLEU, the lowest WER or perplexity: the workload's `metric_goals`).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
STEP_METRIC = "trainer/step"  # the x axis of every W&B chart (W&B's own `_step` counts log calls)
FINAL_PREFIX = "final/"  # summary keys of the final metrics (`summary.json`)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` (none when the file is absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records logged after `after_step`: a resumed run re-logs them, so the file never holds a step twice."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


def wandb_api_key_configured() -> bool:
    """Whether `wandb login` or WANDB_API_KEY provided a key (without importing wandb or touching the network)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(configured: str | None) -> str:
    """`logger.mode` if set, else WANDB_MODE, else online with a key and offline without one."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured() else "offline"


def wandb_sync_command(wandb_dir: Path, run_id: str | None) -> str:
    """`wandb sync` with every offline segment of the run: each start or resume of an offline run writes its own
    `offline-run-<time>-<id>/` directory, and W&B syncs the segments of one run id in order of start time."""
    segments = sorted(wandb_dir.glob(f"offline-run-*-{run_id}"))
    return "wandb sync " + " ".join(str(segment) for segment in segments)


def dashboard_config(run_config: dict[str, Any], total_steps: int, world_size: int) -> dict[str, Any]:
    """The flat keys a run's W&B config holds beside the nested resolved config, to filter and group by in the
    dashboard: the paper table and row, what the paper varies between rows, and how the run ran. `table` and `row`
    are None for runs of no paper row (`debug=...`)."""
    experiment = run_config.get("experiment_name")
    optimizer = run_config.get("optimizer") or {}
    trainer = run_config.get("trainer") or {}
    return {
        "table": experiment.split("/")[0] if experiment else None,
        "row": experiment,
        "optimizer_name": optimizer_name(optimizer),
        "lr": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "batch_size": trainer.get("batch_size"),
        "epochs": trainer.get("epochs"),
        "max_steps": trainer.get("max_steps"),
        "total_steps": total_steps,
        "precision": trainer.get("precision"),
        "world_size": world_size,
        "seed": run_config.get("seed"),
        "debug_mode": run_config.get("debug_mode"),
    }


def wandb_group_and_tags(settings: dict[str, Any], dashboard: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The run's W&B group (`logger.group`, else the paper table) and tags (`logger.tags`); a debug run's group is
    `debug-<mode>[-<group>]` and its tags add `debug` and `debug=<mode>`."""
    group = settings.get("group") or dashboard["table"]
    tags = list(settings.get("tags") or [])
    mode = dashboard.get("debug_mode")
    if mode:
        group = "-".join(filter(None, ["debug", mode, group]))
        tags += [tag for tag in ("debug", f"debug={mode}") if tag not in tags]
    return group, tags


def format_duration(seconds: float) -> str:
    """`1:02:03` (hours unbounded: `26:03:04`, not `1 day, 2:03:04`), `0:00:05`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@dataclass(frozen=True)
class TrainingStatus:
    """Where training stands at a log step, for the console."""

    step: int
    total_steps: int
    loss: float
    lr: float
    throughput: float  # `unit` per second of training (evaluation and checkpoints left out)
    unit: str
    elapsed_s: float  # the run's wall time so far, over all its segments
    eta_s: float
    skipped_steps: int = 0  # non-finite steps not applied, so far in the run (shown only when there are some)
    data_wait: float = 0.0  # share of the interval's training time spent waiting for the next batch

    def line(self) -> str:
        """e.g. `step 200/5000 | loss 3.4521 | lr 0.00699 | 2,014 images/s | data wait 2% | elapsed 0:03:10 |
        ETA 1:16:05`."""
        skipped = f" | skipped {self.skipped_steps} steps" if self.skipped_steps else ""
        return (
            f"step {self.step}/{self.total_steps} | loss {self.loss:.4f} | lr {self.lr:.3g} | "
            f"{self.throughput:,.0f} {self.unit}/s | data wait {self.data_wait:.0%} | "
            f"elapsed {format_duration(self.elapsed_s)} | ETA {format_duration(self.eta_s)}{skipped}"
        )

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows beside its own rate and ETA."""
        return {"loss": f"{self.loss:.4f}", "lr": f"{self.lr:.3g}", f"{self.unit}/s": f"{self.throughput:.0f}",
                "data wait": f"{self.data_wait:.0%}"}


_BOOKKEEPING = ("steps", "epochs", "wall_time_s", "world_size", "output_dir", "preempted", "stop_reason")
#: Counts of examples that stood in for unreadable files (`skipped_train`, `skipped_<set>`): shown when not zero.
_COUNT_PREFIX = "skipped_"


def metrics_text(metrics: dict[str, Any]) -> str:
    """`top1=37.5000, top5=100.0000` for the console, zero counts of skipped files left out (metrics.jsonl and
    summary.json keep them)."""
    return ", ".join(
        f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in metrics.items() if not (key.startswith(_COUNT_PREFIX) and value == 0)
    )


def summary_line(summary: dict[str, Any], total_steps: int | None = None, columns: tuple[str, ...] = ()) -> str:
    """The one line that ends a run: how it ended, its final metrics (the paper's `columns` and any count of
    skipped files, when `columns` are given; `summary.json` holds them all), wall time and output directory."""
    shown = {key: value for key, value in summary.items() if key not in _BOOKKEEPING
             and (not columns or key in columns or key.startswith(_COUNT_PREFIX))}
    metrics = metrics_text(shown) or "no evaluation"
    steps = f"{summary['steps']}/{total_steps}" if total_steps else str(summary["steps"])
    ended = f"Stopped ({summary['stop_reason']}) at step {steps}" if summary.get("preempted") else f"Finished {steps} steps"
    return f"{ended}: {metrics} | wall time {format_duration(summary['wall_time_s'])} | output {summary['output_dir']}"


def optimizer_name(optimizer: dict[str, Any]) -> str:
    """`optimizer.name`, else the class of `optimizer._target_` (lower case)."""
    return str(optimizer.get("name") or str(optimizer.get("_target_", "optimizer")).rsplit(".", 1)[-1]).lower()


def _world_size() -> int:
    """The number of ranks: the trainer has set up the process group before it builds the logger."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class RunLogger:
    """Writes metrics of the main rank to every sink; on other ranks every method is a no-op."""

    def __init__(
        self,
        output_dir: Path,
        enabled: bool,
        wandb_settings: dict[str, Any] | None,
        metric_goals: dict[str, Literal["max", "min"]],
        run_config: dict[str, Any],
        run_id: str | None,
        total_steps: int,
        start_step: int,
        show_progress: bool,
    ) -> None:
        self.enabled = enabled
        self.metrics_path = output_dir / METRICS_FILE
        self.wandb_run = None
        self.run_id = run_id
        self.progress = None
        if not enabled:
            return
        truncate_metrics(self.metrics_path, start_step)
        if wandb_settings is not None:
            wandb_config = run_config | dashboard_config(run_config, total_steps, _world_size())
            self.wandb_run = self._start_wandb(output_dir, wandb_settings, metric_goals, wandb_config, run_id)
            self.run_id = self.wandb_run.id
        if show_progress and sys.stdout.isatty():  # a bar's carriage returns do not belong in a log file
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stdout)

    @staticmethod
    def _start_wandb(
        output_dir: Path,
        settings: dict[str, Any],
        metric_goals: dict[str, Literal["max", "min"]],
        run_config: dict[str, Any],
        run_id: str | None,
    ) -> Any:
        import wandb

        mode = resolve_wandb_mode(settings.get("mode"))
        group, tags = wandb_group_and_tags(settings, run_config)
        run = wandb.init(
            project=settings["project"],
            entity=settings.get("entity"),
            group=group,
            job_type=run_config["optimizer_name"],
            name=settings["name"],
            tags=tags,
            notes=settings.get("notes"),
            config=run_config,
            dir=str(output_dir),
            id=run_id or uuid.uuid4().hex[:8],  # chosen here so the checkpoint can store it
            resume="allow",
            mode=mode,
            # Offline, W&B prints nothing of its own (its summary panel alone was 32 lines of a smoke run): `close`
            # says where the run is and how to upload it. Online it keeps the lines that link the run's page.
            settings=wandb.Settings(silent=True) if mode == "offline" else wandb.Settings(quiet=True),
        )
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        for name, goal in metric_goals.items():
            # The run summary shows the best value (highest top-1, lowest WER/PPL) instead of the last one.
            run.define_metric(f"eval/{name}", summary=goal, step_metric=STEP_METRIC)
        return run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({STEP_METRIC: step, **metrics})

    def advance(self, steps: int, status: TrainingStatus) -> None:
        """After `steps` more steps: move the progress bar, or print the status as one plain line."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.set_postfix(status.postfix(), refresh=False)
            self.progress.update(steps)
        else:
            log.info(status.line())

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.wandb_run is not None:
            # A resumed run updates the summary of its preempted segment: `preempted` is always written, so that
            # the finished run does not keep the segment's `final/preempted: true`.
            summary = {"preempted": False, "stop_reason": ""} | summary
            self.wandb_run.summary.update({f"{FINAL_PREFIX}{k}": v for k, v in summary.items()})

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb_run is not None:
            offline = self.wandb_run.settings.mode == "offline" or self.wandb_run.offline
            run_dir = Path(self.wandb_run.dir).parent
            self.wandb_run.finish()
            import wandb

            wandb.teardown()  # waits for the W&B service to flush the run to disk before the process moves on
            if offline:
                log.info("W&B ran offline; upload the run with:  %s", wandb_sync_command(run_dir.parent, self.run_id))
