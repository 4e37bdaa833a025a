"""debug=fullsize: a row's real model at its real size for one optimizer step on the CPU (configs/debug/fullsize.yaml,
configs/debug_twin/<workload>_fullsize.yaml).

Every table's row keeps its model, optimizer (LARC included) and clipping under debug=fullsize (fast); one row of
each workload runs (slow: minutes each on 2 cores, the Transformer-big row's beam search the longest)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from novograd.engine import run
from novograd.engine.compose import compose_config

# One row of each of the seven tables; rows of a workload share its model.
TABLE_ROWS = ["table1/novograd_100ep", "table2/novograd_b32k", "table3/novograd_b32k_warmup", "table4/novograd",
              "table5/novograd_b16k", "table6/novograd_12b", "table7/novograd"]
RUN_ROWS = ["table1/novograd_100ep", "table4/novograd", "table6/novograd_12b", "table7/novograd"]


def fullsize(row: str, output_dir: Path | str = "unused") -> object:
    return compose_config([f"experiment={row}", "debug=fullsize", "logger=none"], output_dir)


@pytest.mark.parametrize("row", TABLE_ROWS)
def test_fullsize_keeps_the_rows_model_optimizer_and_clipping(row: str) -> None:
    real, debug = compose_config([f"experiment={row}"]), fullsize(row)
    as_dict = lambda node: OmegaConf.to_container(node, resolve=False)  # noqa: E731
    model_keys = set(as_dict(real.model)) - {"vocab_size"}  # the twin's vocabulary is the real one's size
    assert {k: debug.model[k] for k in model_keys} == {k: real.model[k] for k in model_keys}
    assert as_dict(debug.optimizer) == as_dict(real.optimizer)
    assert debug.trainer.grad_clip_norm == real.trainer.grad_clip_norm
    assert debug.trainer.device == "cpu" and debug.trainer.max_steps in (1, 5)
    assert debug.data.get("synthetic") is not None  # a twin, never the real corpus
    assert debug.data.get("num_classes") == real.data.get("num_classes")  # ResNet-50's 1000-way head
    if "vocab_size" in real.model:
        assert debug.data.vocab_size == real.data.vocab_size  # the embedding and softmax at their real size


@pytest.mark.slow
@pytest.mark.parametrize("row", RUN_ROWS)
def test_fullsize_step_and_evaluation_run(tmp_path: Path, row: str, capsys) -> None:
    cfg = fullsize(row, tmp_path)
    summary = run(cfg)
    assert summary["steps"] == cfg.trainer.max_steps
    metrics = [value for key, value in summary.items() if isinstance(value, float) and key != "wall_time_s"]
    assert metrics and all(math.isfinite(value) for value in metrics)
