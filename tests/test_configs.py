"""Every paper row composes and holds the paper's hyperparameters (docs/hyperparameters.md)."""

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


# Tables 4-5 (Jasper): optimizer, lr, weight decay, global batch (utterances), warmup ratio.
JASPER_ROWS = {
    "table4/novograd": ("novograd", 0.02, 0.001, 256, 0.0),
    "table4/sgd": ("sgd", 0.01, 0.001, 256, 0.0),
    "table4/adam": ("adam", 0.001, 0.001, 256, 0.0),
    "table5/novograd_b512": ("novograd", 0.015, 0.001, 512, 0.0),
    "table5/novograd_b4k": ("novograd", 0.03, 0.001, 4096, 0.05),
    "table5/novograd_b8k": ("novograd", 0.06, 0.001, 8192, 0.05),
    "table5/novograd_b16k": ("novograd", 0.06, 0.003, 16384, 0.05),
    "table5/novograd_b32k": ("novograd", 0.06, 0.004, 32768, 0.08),
}
# Table 6 (Transformer-XL): optimizer, lr, weight decay, steps (tokens / 32,768, rounded up).
TXL_ROWS = {
    "table6/adam_12b": ("adam", 0.00025, 0.0, 366_211),
    "table6/adamw_12b": ("adamw", 0.00025, 0.001, 366_211),
    "table6/novograd_12b": ("novograd", 0.01, 0.0, 366_211),
    "table6/novograd_20b": ("novograd", 0.01, 0.0, 610_352),
}

# Table 7 (Transformer-big): optimizer, lr, weight decay, betas, dropout.
WMT_ROWS = {
    "table7/adam": ("adam", 0.0006, 0.0, [0.9, 0.997], 0.3),
    "table7/adamw": ("adamw", 0.0006, 0.005, [0.9, 0.997], 0.3),
    "table7/novograd": ("novograd", 0.04, 0.0001, [0.95, 0.99], 0.2),
}


def test_every_experiment_file_is_a_paper_row() -> None:
    files = {str(p.relative_to(CONFIG_DIR / "experiment").with_suffix("")) for p in CONFIG_DIR.glob("experiment/table*/*.yaml")}
    assert files == set(PAPER_ROWS) | set(JASPER_ROWS) | set(TXL_ROWS) | set(WMT_ROWS)


@pytest.mark.parametrize("row", sorted(WMT_ROWS))
def test_transformer_big_rows_hold_the_paper_hyperparameters(row: str) -> None:
    optimizer, lr, weight_decay, betas, dropout = WMT_ROWS[row]
    cfg = compose_config([f"experiment={row}"], output_dir="unused")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (optimizer, lr, weight_decay)
    assert list(cfg.optimizer.betas) == betas and (optimizer == "novograd" or cfg.optimizer.eps == 1e-9)
    assert (cfg.model.dropout, cfg.model.attention_dropout, cfg.model.vocab_size) == (dropout, 0.1, 8192)
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.num_heads, cfg.model.encoder_layers) == (1024, 4096, 16, 6)
    assert (cfg.scheduler.name, cfg.scheduler.warmup_steps, cfg.scheduler.min_lr) == ("cosine", 4000, 0.0)
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps) == (490_000, 100_000)
    assert (cfg.data.vocab_size, cfg.workload.beam_size, cfg.workload.length_penalty) == (8192, 4, 0.6)


@pytest.mark.parametrize("row", sorted(JASPER_ROWS))
def test_jasper_rows_hold_the_paper_hyperparameters(row: str) -> None:
    optimizer, lr, weight_decay, batch, warmup_ratio = JASPER_ROWS[row]
    cfg = compose_config([f"experiment={row}"], output_dir="unused")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (optimizer, lr, weight_decay)
    assert dict(cfg.optimizer.larc) == {"enabled": True, "trust_coefficient": 0.001, "clip": True, "eps": 1e-7}
    assert (cfg.scheduler.name, cfg.scheduler.power, cfg.scheduler.min_lr) == ("poly", 2.0, 1e-5)
    assert (cfg.scheduler.warmup_ratio, cfg.scheduler.warmup_steps) == (warmup_ratio, 0)
    assert (cfg.trainer.batch_size, cfg.trainer.micro_batch_size, cfg.trainer.epochs) == (batch, 32, 400)
    assert cfg.trainer.max_steps is None and cfg.trainer.eval_every_epochs == 1
    assert cfg.model._target_ == "models.jasper.Jasper" and cfg.model.dense_residual and len(cfg.model.blocks) == 10
    assert cfg.data.max_duration == 16.7 and list(cfg.data.speed_perturb) == [0.9, 1.0, 1.1]
    assert sorted(cfg.data.eval_manifests) == ["dev_clean", "dev_other", "test_clean", "test_other"]
    assert cfg.workload._target_ == "novograd.workloads.librispeech.LibriSpeechWorkload"
    assert cfg.logger.group == row.split("/")[0]
    assert list(cfg.optimizer.get("betas", [])) == {"novograd": [0.95, 0.98], "adam": [0.9, 0.999], "sgd": []}[optimizer]


@pytest.mark.parametrize("row", sorted(TXL_ROWS))
def test_transformer_xl_rows_hold_the_paper_hyperparameters(row: str) -> None:
    optimizer, lr, weight_decay, steps = TXL_ROWS[row]
    cfg = compose_config([f"experiment={row}"], output_dir="unused")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (optimizer, lr, weight_decay)
    assert list(cfg.optimizer.betas) == ([0.95, 0.98] if optimizer == "novograd" else [0.9, 0.999])
    assert (cfg.scheduler.name, cfg.scheduler.warmup_steps, cfg.scheduler.min_lr) == ("cosine", 0, 0.0)
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps, cfg.trainer.grad_clip_norm) == (256, steps, 0.25)
    assert cfg.trainer.batch_size * cfg.model.tgt_len * steps >= float(row.split("_")[-1].rstrip("b")) * 1e9
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.dropout) == (16, 512, 8, 0.15)
    assert (cfg.data.vocab_size, cfg.trainer.eval_micro_batch_size) == (267_735, 10)
    assert dict(cfg.data.eval) == {"tgt_len": 64, "mem_len": 640, "clamp_len": 400, "same_length": True,
                                   "num_streams": 10, "warm_up": False}


@pytest.mark.parametrize("row", sorted(JASPER_ROWS) + sorted(TXL_ROWS) + sorted(WMT_ROWS))
def test_smoke_and_learn_pick_the_workloads_own_twin(row: str) -> None:
    smoke = compose_config([f"experiment={row}", "debug=smoke"], output_dir="unused")
    learn = compose_config([f"experiment={row}", "debug=learn"], output_dir="unused")
    assert smoke.data.synthetic.kind == "smoke" and learn.data.synthetic.kind == "learnable"
    assert smoke.trainer.device == learn.trainer.device == "cpu"
    for cfg in (smoke, learn):  # the tiny variant of the row's own model
        if row in JASPER_ROWS:
            assert len(cfg.model.blocks) == 3
        else:
            assert cfg.model.get("n_layer", cfg.model.get("encoder_layers")) == 2
    assert learn.optimizer.name == compose_config([f"experiment={row}"], "unused").optimizer.name


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


ALL_ROWS = sorted({**PAPER_ROWS, **JASPER_ROWS, **TXL_ROWS, **WMT_ROWS})


@pytest.mark.parametrize("mode", ["smoke", "learn"])
def test_every_row_passes_the_checks_in_each_debug_mode(mode: str) -> None:
    """debug=smoke and debug=learn work on all 26 rows (a few of them also run for real: tests/test_train.py and
    the workloads' tests); Table 3's 500 warmup steps are fitted into the debug run."""
    from novograd.engine.config_checks import config_errors

    assert len(ALL_ROWS) == 26
    for row in ALL_ROWS:
        cfg = compose_config([f"experiment={row}", f"debug={mode}"], output_dir="unused")
        assert config_errors(cfg, world_size=1) == [], row
    smoke = compose_config(["experiment=table3/novograd_b32k_warmup", "debug=smoke"], "unused")
    assert (smoke.trainer.max_steps, smoke.scheduler.warmup_steps) == (4, 2)
    chosen = compose_config(["experiment=table3/novograd_b32k_warmup", "debug=smoke", "scheduler.warmup_steps=1"],
                            "unused")
    assert chosen.scheduler.warmup_steps == 1  # the command line's warmup is kept


# One row per workload, each with another optimizer than NovoGrad where the workload has one.
SWAP_ROWS = ["table1/sgd_100ep", "table4/novograd", "table6/adam_12b", "table7/adamw"]


@pytest.mark.parametrize("row", SWAP_ROWS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "novograd"])
def test_every_optimizer_on_every_workload_takes_its_own_defaults(row: str, optimizer: str) -> None:
    """`optimizer=<name>` on a row of another optimizer: that optimizer's file, the row's LARC (Tables 4-5), and
    nothing else of the row; the config passes the checks and builds the optimizer."""
    import torch
    from omegaconf import OmegaConf

    from novograd.engine.config_checks import config_errors
    from novograd.optim.factory import build_optimizer
    from novograd.optim.larc import LARC

    for mode in ([], ["debug=smoke"]):
        cfg = compose_config([f"experiment={row}", *mode, f"optimizer={optimizer}"], output_dir="unused")
        row_cfg = compose_config([f"experiment={row}", *mode], output_dir="unused")
        assert config_errors(cfg, world_size=1) == [], (row, mode)
        built = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(3))])
        assert isinstance(built, LARC) == row.startswith("table4")
        if optimizer == row_cfg.optimizer.name:
            assert cfg.optimizer == row_cfg.optimizer
            continue
        defaults = OmegaConf.load(CONFIG_DIR / "optimizer" / f"{optimizer}.yaml")
        assert {**cfg.optimizer, "larc": defaults.larc} == {**defaults}  # nothing of the row's optimizer leaks
        assert cfg.optimizer.larc == row_cfg.optimizer.larc


def test_a_swapped_optimizer_says_what_it_kept_dropped_and_took_and_the_command_line_wins(caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="novograd.config"):
        cfg = compose_config(["experiment=table4/novograd", "optimizer=adamw", "optimizer.weight_decay=0.01"], "unused")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("adamw", 0.001, 0.01)
    (note,) = [record.getMessage() for record in caplog.records if "optimizer=adamw" in record.getMessage()]
    assert note == (
        "optimizer=adamw on table4/novograd, whose optimizer is novograd: a variant of the row, not counted in it. "
        "Kept from the row: larc.enabled=true, larc.eps=1e-07. "
        "Dropped the row's novograd values: lr=0.02, betas=[0.95, 0.98]. "
        "From adamw's defaults (configs/optimizer/adamw.yaml) instead: lr=0.001, betas=[0.9, 0.999]. "
        "Given on the command line: weight_decay=0.01.")


def test_a_run_with_a_swapped_optimizer_is_a_variant_of_its_row() -> None:
    from omegaconf import OmegaConf

    from novograd.report.matching import row_config, row_differences

    swapped = OmegaConf.to_container(compose_config(["experiment=table6/novograd_12b", "optimizer=adam"], "x"),
                                     resolve=True)
    differences = [str(d) for d in row_differences(swapped, row_config("table6/novograd_12b"))]
    assert "optimizer.name adam instead of novograd" in differences
    assert "optimizer.lr 0.001 instead of 0.01" in differences
    same = OmegaConf.to_container(compose_config(["experiment=table6/novograd_12b", "optimizer=novograd"], "x"),
                                  resolve=True)
    assert row_differences(same, row_config("table6/novograd_12b")) == []  # choosing the row's own optimizer
