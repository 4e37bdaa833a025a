"""The GPU paths the CPU suite cannot reach: bf16/fp16 autocast, channels-last, TF32, torch.compile, fused NovoGrad.

Run with `make test-all` (or `pytest -m gpu`) on a machine with a CUDA device; skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.compose import compose_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMOKE_ON_GPU = ["experiment=table1/novograd_100ep", "debug=smoke", "logger=none", "trainer.device=cuda"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["novograd", "sgd"])
def test_resnet_smoke_trains_on_the_gpu(tmp_path: Path, precision: str, optimizer: str) -> None:
    summary = run(compose_config([*SMOKE_ON_GPU, f"trainer.precision={precision}", f"optimizer={optimizer}",
                                  "optimizer.fused=true"], tmp_path))
    assert summary["steps"] == 4 and 0.0 <= summary["top1"] <= 100.0


def test_compiled_model_resumes_bit_for_bit(tmp_path: Path) -> None:
    overrides = [*SMOKE_ON_GPU, "trainer.compile=true", "trainer.deterministic=true", "trainer.max_steps=6",
                 "trainer.eval_every_steps=null"]
    run(compose_config(overrides, tmp_path / "straight"))
    run(compose_config([*overrides, "trainer.stop_at_step=3"], tmp_path / "resumed"))
    run(compose_config(overrides, tmp_path / "resumed"))
    straight, resumed = (
        torch.load(tmp_path / name / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        for name in ("straight", "resumed")
    )
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
