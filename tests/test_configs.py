"""Every paper row of Tables 1-3 composes and holds the paper's hyperparameters (hyperparameters.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from novograd.engine.compose import CONFIG_DIR, compose_config

# row: optimizer, lr, weight decay, schedule, epochs, global batch, warmup steps (hyperparameters.md, ResNet-50).
PAPER_ROWS = {
    "table1/sgd_100ep": ("sgd", 0.4, 1e-4, "poly", 100, 1024, 0),
    "table1/sgd_200ep": ("sgd", 0.4, 1e-4, "poly", 200, 1024, 0),
    "table1/adamw_100ep": ("adamw", 0.002, 0.12, "cosine", 100, 1024, 0),
    "table1/adamw_200ep": ("adamw", 0.002, 0.12, "cosine", 200, 1024, 0),
    "table1/novograd_100ep": ("novograd", 0.007, 0.002, "cosine", 100, 1024, 0),
    "table1/novograd_200ep": ("novograd", 0.007, 0.002, "cosine", 200, 1024, 0),
    "table1/novograd_300ep": ("novograd", 0.007, 0.002, "cosine", 300, 1024, 0),
    "table2/novograd_b1k": ("novograd", 0.007, 0.002, "cosine", 90, 1024, 0),
    "table2/novograd_b8k": ("novograd", 0.016, 0.006, "cosine", 90, 8192, 0),
    "table2/novograd_b32k": ("novograd", 0.026, 0.010, "cosine", 90, 32768, 0),
    "table3/novograd_b32k_warmup": ("novograd", 0.026, 0.010, "cosine", 90, 32768, 500),
}


def test_every_experiment_file_is_a_paper_row() -> None:
    files = {str(p.relative_to(CONFIG_DIR / "experiment").with_suffix("")) for p in CONFIG_DIR.glob("experiment/table*/*.yaml")}
    assert files == set(PAPER_ROWS)


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_experiment_holds_the_paper_hyperparameters(row: str) -> None:
    optimizer, lr, weight_decay, schedule, epochs, batch, warmup = PAPER_ROWS[row]
    cfg = compose_config([f"experiment={row}"], output_dir="unused")
    assert cfg.optimizer.name == optimizer
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == weight_decay
    assert cfg.scheduler.name == schedule and cfg.scheduler.warmup_steps == warmup
    assert cfg.scheduler.warmup_ratio == 0.0 and cfg.scheduler.min_lr == 0.0
    assert cfg.trainer.epochs == epochs and cfg.trainer.max_steps is None
    assert cfg.trainer.batch_size == batch and cfg.trainer.micro_batch_size == 128
    assert cfg.model._target_ == "models.resnet_v2.PreActResNet" and list(cfg.model.blocks) == [3, 4, 6, 3]
    assert cfg.data.num_classes == 1000 and cfg.data.synthetic is None
    assert cfg.workload._target_ == "novograd.workloads.imagenet.ImageNetWorkload"
    assert cfg.logger.group == row.split("/")[0]
    if optimizer == "sgd":
        assert (cfg.optimizer.momentum, cfg.optimizer.nesterov, cfg.scheduler.power) == (0.9, False, 2.0)
        assert cfg.optimizer.exclude_from_weight_decay  # the authors' L2 skipped BatchNorm and biases
    else:
        assert list(cfg.optimizer.betas) == ([0.95, 0.98] if optimizer == "novograd" else [0.9, 0.999])
        assert not cfg.optimizer.exclude_from_weight_decay
    if optimizer == "novograd":
        assert not cfg.optimizer.grad_averaging


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_smoke_turns_any_row_into_a_tiny_cpu_run(row: str) -> None:
    cfg = compose_config([f"experiment={row}", "debug=smoke"], output_dir="unused")
    assert cfg.data.synthetic is not None and cfg.model.blocks == [1, 1, 1, 1]
    assert (cfg.trainer.device, cfg.trainer.batch_size, cfg.trainer.max_steps) == ("cpu", 8, 4)
    assert cfg.optimizer.lr == PAPER_ROWS[row][1]  # the row's optimizer stays real


def test_command_line_overrides_win() -> None:
    cfg = compose_config(["experiment=table1/novograd_100ep", "optimizer.lr=0.01", "trainer.max_steps=7"], "unused")
    assert cfg.optimizer.lr == 0.01 and cfg.trainer.max_steps == 7


def test_cfg_job_prints_the_composed_config_without_training() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "novograd.train", "experiment=table2/novograd_b8k", "optimizer.lr=0.02", "--cfg", "job"],
        capture_output=True, text=True, timeout=120, cwd=Path(CONFIG_DIR).parent,
    )
    assert result.returncode == 0, result.stderr
    assert "lr: 0.02" in result.stdout and "batch_size: 8192" in result.stdout
