"""Two ranks (torchrun, gloo) x micro-batches of 4 give the weights of one process with micro-batches of 8, and
agree through the deferred vote on time-based checkpoints (a disagreement would hang their checkpoint gather)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.compose import compose_config

OVERRIDES = ["debug=regression", "logger=none", "optimizer=novograd", "trainer.max_steps=3"]


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    run(compose_config([*OVERRIDES, "trainer.micro_batch_size=8"], tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "novograd.train", *OVERRIDES, "trainer.micro_batch_size=4",
        "trainer.checkpoint_every_minutes=1e-6", "trainer.keep_last_k=10",  # due at every step boundary
        f"trainer.output_dir={tmp_path / 'ddp'}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 ranks" in result.stdout + result.stderr
    assert result.stdout.count("Finished 3/3 steps") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("step_*")) == [
        f"step_{step:08d}.pt" for step in (1, 2, 3)]

    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)
    assert len(ddp["rng"]) == 2  # every rank's generator states are in the one file
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-6)
