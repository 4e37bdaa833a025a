"""The ResNet smoke run through the whole engine: every optimizer, exact resume, preemption, W&B, user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.compose import CONFIG_DIR, compose_config

REPO = CONFIG_DIR.parent
SMOKE = ["experiment=table1/novograd_100ep", "debug=smoke", "logger=none"]


def last_checkpoint(output_dir: Path) -> dict:
    return torch.load(output_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


@pytest.mark.parametrize("optimizer", ["novograd", "sgd", "adam", "adamw"])
def test_smoke_run_per_optimizer(tmp_path: Path, optimizer: str) -> None:
    summary = run(compose_config([*SMOKE, f"optimizer={optimizer}"], tmp_path))
    assert summary["steps"] == 4 and 0.0 <= summary["top1"] <= 100.0 and "best_top1" in summary
    assert json.loads((tmp_path / "summary.json").read_text())["top1"] == summary["top1"]
    assert (tmp_path / "config.yaml").read_text().count(f"name: {optimizer}") == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/top1" in r] == [2, 4]
    assert last_checkpoint(tmp_path)["progress"]["step"] == 4


def test_resnet_smoke_resume_is_bit_for_bit(tmp_path: Path) -> None:
    # Three epochs of two steps (8 training images x 4 classes = 32, batch 8 -> 4 steps an epoch; 6 steps end
    # mid-epoch 2): the stop at step 3 falls inside an epoch, so the data position within it is exercised.
    overrides = [*SMOKE, "trainer.max_steps=6", "trainer.eval_every_steps=null"]
    run(compose_config(overrides, tmp_path / "straight"))
    stopped = run(compose_config([*overrides, "trainer.stop_at_step=3"], tmp_path / "resumed"))
    assert stopped["preempted"] and last_checkpoint(tmp_path / "resumed")["progress"]["step_in_epoch"] == 3
    run(compose_config(overrides, tmp_path / "resumed"))
    straight, resumed = last_checkpoint(tmp_path / "straight"), last_checkpoint(tmp_path / "resumed")
    for key, value in straight["model"].items():  # BatchNorm running statistics included
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in straight["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][name]), (index, name)


def test_sigterm_checkpoints_at_a_step_boundary_and_exits_cleanly(tmp_path: Path) -> None:
    output_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    command = [sys.executable, "-m", "novograd.train", "debug=regression", "logger=none", "trainer.max_steps=1000000",
               "trainer.log_every_steps=1", f"trainer.output_dir={output_dir}"]
    pythonpath = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath})
    metrics = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Stopped by SIGTERM" in output and "To resume, re-run the same command." in output
    state = last_checkpoint(output_dir)
    assert 3 <= state["progress"]["step"] < 1000000
    assert len(state["optimizer"]["state"]) > 0
    assert not list((output_dir / "checkpoints").glob(".*tmp*"))  # no partial file left behind
    assert list(cwd.iterdir()) == []  # Hydra's run folder (results/runs/no_experiment/<time>/) is not left behind


def test_wandb_offline_run_holds_config_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    marker = "engine-test-marker"
    run(compose_config([*SMOKE[:2], "logger.mode=null", f"logger.notes={marker}", "trainer.max_steps=2"], tmp_path))
    run_id = last_checkpoint(tmp_path)["wandb_run_id"]
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    # The offline transaction log is protobuf: the resolved config, the summary and the group are stored as text.
    log = (run_dir / f"run-{run_id}.wandb").read_bytes()
    for expected in (marker, "imagenet-novograd-lr0.007-wd0.002-b8-2steps", "final/top1", "debug-smoke-table1"):
        assert expected.encode() in log, expected


def test_missing_dataset_names_the_make_target(tmp_path: Path) -> None:
    overrides = ["experiment=table1/novograd_100ep", "model=resnet_v2_tiny", "trainer.device=cpu", "logger=none",
                 f"data.root={tmp_path / 'nowhere'}"]
    with pytest.raises(Exception, match="make prepare-imagenet"):
        run(compose_config(overrides, tmp_path / "run"))
