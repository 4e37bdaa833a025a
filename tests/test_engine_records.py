"""Records you can trust, engine side: resume refuses a changed training, the output directory fails early and
clearly, stale checkpoint temporaries go, a planned stop says how to resume, W&B's sync command names every segment,
and a previous signal handler (submitit's) runs only once the run is written."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from novograd.engine import run
from novograd.engine.compose import compose_config

REGRESSION = ["debug=regression", "logger=none", "trainer.max_steps=4"]


def train(output_dir: Path, *overrides: str) -> dict:
    return run(compose_config([*REGRESSION, *overrides], output_dir))


def snapshot(output_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output_dir)): p.read_bytes() for p in sorted(output_dir.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ config comparison
def test_config_differences_walk_nested_sections_and_report_absent_keys() -> None:
    from novograd.engine.run_config import config_differences

    reference = {"optimizer": {"name": "novograd", "lr": 0.007, "betas": [0.95, 0.98]}, "data": {"synthetic": None}}
    config = {"optimizer": {"name": "sgd", "lr": 0.007, "momentum": 0.9}, "data": {"synthetic": {"seed": 0}}}
    assert [str(d) for d in config_differences(reference, config)] == [
        "optimizer.name sgd instead of novograd",
        "optimizer.betas (absent) instead of [0.95, 0.98]",
        "optimizer.momentum 0.9 instead of (absent)",
        "data.synthetic {seed: 0} instead of null",
    ]
    # Numbers compare by value (0 == 0.0), lists element by element, booleans only with booleans.
    assert config_differences({"a": 0.0, "b": [1, 2], "c": True}, {"a": 0, "b": (1, 2), "c": True}) == []
    assert [d.key for d in config_differences({"c": True}, {"c": 1})] == ["c"]


def test_bookkeeping_keys_may_change_on_resume_and_nothing_else() -> None:
    from novograd.engine.run_config import RESUME_MAY_CHANGE, resume_differences

    original = OmegaConf.to_container(compose_config(REGRESSION, "/runs/a"), resolve=True)
    bookkeeping = OmegaConf.to_container(compose_config(
        [*REGRESSION, "trainer.log_every_steps=7", "trainer.stop_at_step=2", "trainer.eval_every_steps=3",
         "data.num_workers=2", "trainer.progress_bar=true", "logger=wandb", "optimizer.foreach=false", "tuning.seed=3", "tuning.trial=1",
         "target={metric: mse, value: 0.5}"],
        "/runs/b",
    ), resolve=True)
    assert resume_differences(original, bookkeeping) == []
    training = OmegaConf.to_container(compose_config(
        [*REGRESSION, "optimizer.lr=0.07", "trainer.micro_batch_size=4", "seed=1"], "/runs/a"), resolve=True)
    assert [d.key for d in resume_differences(original, training)] == [
        "seed", "optimizer.lr", "trainer.micro_batch_size"]
    assert all("." in key or key in ("logger", "tuning", "target") for key in RESUME_MAY_CHANGE)


# ------------------------------------------------------------------------------------------------------- resuming
def test_resume_with_a_changed_training_is_refused_before_any_work(tmp_path: Path) -> None:
    stopped = train(tmp_path, "trainer.stop_at_step=2")
    assert stopped["preempted"]
    before = snapshot(tmp_path)

    with pytest.raises(ValueError) as refused:
        train(tmp_path, "optimizer.lr=0.07")
    message = str(refused.value)
    assert "optimizer.lr: 0.01 (the run) -> 0.07 (this command)" in message
    assert f"trainer.output_dir={tmp_path}" in message and "new trainer.output_dir" in message
    assert "original values" in message
    with pytest.raises(ValueError, match=r"optimizer.name: novograd \(the run\) -> sgd \(this command\)"):
        train(tmp_path, "optimizer=sgd")  # not torch's "different number of parameter groups"
    assert snapshot(tmp_path) == before  # config.yaml, checkpoint and metrics untouched

    # Bookkeeping may change: the run goes on, and config.yaml says what it did.
    resumed = train(tmp_path, "trainer.log_every_steps=2")
    assert resumed["steps"] == 4 and not resumed.get("preempted")
    written = OmegaConf.load(tmp_path / "config.yaml")
    assert written.optimizer.lr == 0.01 and written.trainer.log_every_steps == 2 and written.trainer.stop_at_step is None


def test_a_directory_without_checkpoint_starts_afresh_with_any_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(REGRESSION, tmp_path)))
    assert train(tmp_path, "optimizer.lr=0.07")["steps"] == 4
    assert OmegaConf.load(tmp_path / "config.yaml").optimizer.lr == 0.07


def test_planned_stop_says_to_drop_stop_at_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="novograd"):
        train(tmp_path, "trainer.stop_at_step=2")
    (message,) = [r.getMessage() for r in caplog.records if "Stopped by" in r.getMessage()]
    assert "re-run the command without trainer.stop_at_step" in message and str(tmp_path / "checkpoints") in message


# --------------------------------------------------------------------------------------------- output directory
IMAGENET_MISSING = ["experiment=table1/novograd_100ep", "model=resnet_v2_tiny", "trainer.device=cpu", "logger=none"]


@pytest.mark.parametrize("kind", ["file", "below a file"])
def test_unusable_output_dir_fails_before_the_datasets_are_built(tmp_path: Path, kind: str) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    output_dir = a_file if kind == "file" else a_file / "run"
    # The dataset root does not exist: building the datasets first would fail with make prepare-imagenet's message.
    cfg = compose_config([*IMAGENET_MISSING, f"data.root={tmp_path / 'nowhere'}"], output_dir)
    with pytest.raises(ValueError, match=rf"trainer.output_dir={output_dir} (is a file|cannot be written)"):
        run(cfg)


def test_stale_checkpoint_temporaries_are_removed_at_start(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in (".last.pt.tmp4242", ".step_00000002.pt.tmp77"):  # saves killed before their rename
        (checkpoints / name).write_bytes(b"")
    (checkpoints / "notes.txt").write_text("mine")
    train(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt", "notes.txt"]


# ------------------------------------------------------------------------------------------------------ W&B sync
def test_offline_wandb_sync_command_names_every_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """The suite says where the offline run is and how to upload it; W&B itself prints nothing (its offline
    banner and summary panel were 32 of a smoke run's 46 lines)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = ["logger=wandb", "logger.mode=offline"]
    with caplog.at_level(logging.INFO, logger="novograd"):
        train(tmp_path, *overrides, "trainer.stop_at_step=2")
        time.sleep(1.1)  # segment directories are named by the second they started
        train(tmp_path, *overrides)
    segments = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({s.name.rsplit("-", 1)[1] for s in segments}) == 1  # one run id
    commands = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert commands[-1].endswith("wandb sync " + " ".join(map(str, segments)))
    printed = capfd.readouterr()
    assert "wandb:" not in printed.out + printed.err, printed


# ----------------------------------------------------------------------------------------------------- signals
def test_a_previous_handler_gets_the_signal_only_after_the_run_is_written(tmp_path: Path) -> None:
    """submitit's SIGUSR1 handler requeues the SLURM job and exits: it must not cut the run's ending short."""
    seen: list[bool] = []

    def submitit_like(signum: int, frame: object) -> None:
        seen.append((tmp_path / "checkpoints" / "last.pt").is_file())
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR1, submitit_like)
    metrics = tmp_path / "metrics.jsonl"

    def preempt_once_training() -> None:
        deadline = time.monotonic() + 60
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    try:
        sender = threading.Thread(target=preempt_once_training)
        sender.start()
        summary = train(tmp_path, "trainer.max_steps=1000000")  # returns: the handler is not called inside
        sender.join()
        assert summary["stop_reason"] == "SIGUSR1" and seen == []
        assert json.loads(metrics.read_text().splitlines()[-1])["step"] <= summary["steps"]
        from novograd.engine.preemption import hand_on_signal

        with pytest.raises(SystemExit):
            hand_on_signal(summary)
        assert seen == [True]
    finally:
        signal.signal(signal.SIGUSR1, previous)
