"""Synthetic finished runs for the report's tests: an output directory as `python -m novograd.train` leaves it
(`config.yaml` resolved, `metrics.jsonl`, `summary.json`), with made-up metrics."""

from __future__ import annotations

import copy
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from novograd.engine.compose import compose_config


@cache
def _composed(experiment: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    cfg = compose_config([f"experiment={experiment}", *overrides], "results/runs/x")
    return {**OmegaConf.to_container(cfg, resolve=True), "experiment_name": experiment}  # type: ignore[dict-item]


def run_config(experiment: str, *overrides: str) -> dict[str, Any]:
    """A run's config.yaml as `python -m novograd.train experiment=<experiment> <overrides>` writes it."""
    return copy.deepcopy(_composed(experiment, overrides))


def write_run(root: Path, name: str, config: dict[str, Any], summary: dict[str, Any],
              records: list[dict[str, Any]] | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records or []))
    return run


def jasper_records(final_wer: float, epochs: int, steps_per_epoch: int = 10) -> list[dict[str, Any]]:
    """Train records mid-epoch and an evaluation at the end of every epoch, dev-clean WER falling to `final_wer`."""
    records = []
    for epoch in range(1, epochs + 1):
        step = epoch * steps_per_epoch
        records.append({"step": step - 5, "train/loss": 100.0 / epoch, "train/lr": 0.01, "epoch": epoch - 0.5})
        records.append({"step": step, "eval/wer_dev_clean": final_wer + 80.0 / epoch, "eval/wer_dev_other": 50.0,
                        "eval/wer_test_clean": 40.0, "eval/wer_test_other": 60.0, "epoch": float(epoch)})
    return records


def lm_records(steps: int, log_every: int, eval_every: int, gap: float) -> list[dict[str, Any]]:
    """Transformer-XL records: training loss every `log_every` steps, validation perplexity every `eval_every`."""
    records: list[dict[str, Any]] = []
    for step in range(log_every, steps + 1, log_every):
        records.append({"step": step, "train/loss": math.log(30.0 + 1000.0 / step), "epoch": step / 1000})
        if step % eval_every == 0:
            records.append({"step": step, "eval/val_ppl": 30.0 + gap + 1000.0 / step, "epoch": step / 1000})
    return records
