"""Config errors are found before any work, each with what to change (novograd/engine/config_checks.py), and the
entry point reports them once, without a traceback, even when the dataset is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from novograd.engine.compose import CONFIG_DIR, added_keys, compose_config, composition_problem
from novograd.engine.config_checks import ConfigError, check_config, config_errors, data_problems

SMOKE = ["experiment=table1/novograd_100ep", "debug=smoke", "logger=none"]


def errors(*overrides: str, world_size: int | None = 1, base: tuple[str, ...] = tuple(SMOKE)) -> list[str]:
    overrides = [*base, *overrides]
    return config_errors(compose_config(overrides, "unused"), world_size, added_keys(overrides))


def test_a_good_config_has_no_errors() -> None:  # the negative control of every case below
    assert errors() == [] and errors(world_size=2) == [] and errors(world_size=None) == []
    assert errors("trainer.parallelism=fsdp") == errors("trainer.compile=true") == []


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=-0.1", "optimizer.lr must be a positive number, got -0.1"),
    ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0"),
    ("+optimizer.momentum=0.9", "Unknown keys ['momentum'] for optimizer 'novograd'"),
    ("optimizer.betas=[0.9]", "optimizer.betas must be a pair"),
    ("trainer.micro_batch_size=3", "trainer.batch_size=8 (global, per optimizer step) is not a whole multiple of "
                                   "trainer.micro_batch_size=3 x world size 1 = 3"),
    ("trainer.batch_size=0", "trainer.batch_size must be a positive whole number, got 0"),
    ("trainer.max_steps=0", "trainer.max_steps must be a positive whole number or null, got 0"),
    ("scheduler.warmup_steps=4", "warmup of 4 steps leaves no step to decay over in total_steps=4: shorten the warmup "
                                 "or train longer (trainer.max_steps=4)"),
    ("scheduler.warmup_ratio=1.0", "scheduler.warmup_ratio must be in [0, 1), got 1.0"),
    ("+scheduler.warmup=2", "Unknown scheduler keys ['warmup']: valid keys are"),
    ("+trainer.batchsize=8", "+trainer.batchsize: no part of the suite reads it: did you mean trainer.batch_size?"),
    ("+seeds=1", "+seeds: no part of the suite reads it: did you mean seed?"),
    ("+model.widht=2", "+model.widht: models.resnet_v2.PreActResNet takes no argument 'widht': did you mean "
                       "model.widths?"),
    ("trainer.precision=fp8", "trainer.precision must be one of ['bf16', 'fp16', 'fp32'], got 'fp8'"),
    ("trainer.nonfinite=ignore", "trainer.nonfinite must be one of skip, stop, rewind, got 'ignore'"),
    ("trainer.max_consecutive_skips=0", "trainer.max_consecutive_skips must be >= 1"),
    ("trainer.parallelism=zero3", "trainer.parallelism must be one of ddp, fsdp (ddp: a replica per GPU; fsdp: FSDP2"),
    ("trainer.parallelism=fsdp trainer.compile=true trainer.device=cpu",
     "trainer.compile=true with trainer.parallelism=fsdp fails on the CPU"),
])
def test_each_config_error_says_what_to_change(override: str, message: str) -> None:
    (error,) = errors(*override.split())
    assert error.startswith(message), error


def test_the_gpu_decode_is_refused_without_cuda_with_what_to_do(monkeypatch) -> None:
    """data.decode=gpu needs the training GPU's nvJPEG, and the worker's decode to skip unreadable files; the
    default decode=cpu and a GPU-decode run on a (stand-in) CUDA machine pass: the negative controls."""
    assert errors("data.decode=cpu") == []
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    (error,) = errors("data.decode=gpu", "trainer.device=auto")
    assert error == ("data.decode=gpu decodes the JPEGs with nvJPEG on the training GPU, but no CUDA device is visible "
                     "here: set data.decode=cpu (the default: the loader's workers decode), or run on a CUDA machine.")
    (error,) = errors("data.decode=gpu", "trainer.device=cpu")
    assert "but this run trains on the CPU (trainer.device=cpu): set data.decode=cpu" in error
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert errors("data.decode=gpu", "trainer.device=cuda") == []
    (error,) = errors("data.decode=gpu", "trainer.device=cuda", "data.skip_corrupt=true")
    assert error.startswith("data.decode=gpu cannot skip unreadable images") and "data.skip_corrupt=false" in error
    assert errors("data.decode=nvjpeg") == ["data.decode must be one of ['cpu', 'gpu'], got 'nvjpeg'."]


def test_the_split_over_ranks_is_checked_for_the_world_size() -> None:
    (message,) = errors(world_size=3)
    assert "x world size 3 = 12: run a number of processes that divides 8" in message
    assert errors(world_size=None) == []  # an elastic job: the number of ranks is not known before it starts


def test_a_token_budget_splits_any_batch() -> None:
    """WMT14's batch is a number of tokens per step (TokenBudgetPlan), not a count of micro-batches."""
    wmt = ("experiment=table7/novograd", "debug=smoke", "logger=none")
    assert errors("trainer.batch_size=2000", "trainer.micro_batch_size=1024", world_size=3, base=wmt) == []


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        cfg = compose_config([*SMOKE, "optimizer.lr=-1", "trainer.micro_batch_size=3"], "unused")
        check_config(cfg, 1)
    message = str(raised.value)
    assert message.startswith("Config error (nothing was started):")
    assert "optimizer.lr must be" in message and "trainer.micro_batch_size=3" in message


def test_added_keys_that_something_reads_pass() -> None:
    """`+key` is fine where the suite reads it: an argument of the model's class, an optimizer key the factory
    takes, a config group added whole."""
    assert errors("optimizer=sgd", "+optimizer.foreach=false") == []
    assert added_keys(["+data=imagenet", "+trainer.x=1", "++trainer.y=2", "trainer.z=3"]) == ["trainer.x"]


def test_the_entry_point_reports_a_config_error_once_without_a_traceback_even_without_the_dataset(tmp_path) -> None:
    command = [sys.executable, "-m", "novograd.train", "experiment=table1/novograd_100ep", "logger=none",
               "optimizer.lr=-1", "+trainer.batchsize=8", f"data.root={tmp_path / 'no-imagenet-here'}",
               f"trainer.output_dir={tmp_path / 'run'}"]
    work = tmp_path / "cwd"  # Hydra's run folder goes below the working directory
    work.mkdir()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIG_DIR.parent)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert list(work.iterdir()) == []  # Hydra's run folder does not outlive the error
    assert result.stderr.count("Config error (nothing was started)") == 1, result.stderr
    assert "optimizer.lr must be a positive number" in result.stderr and "+trainer.batchsize" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "prepare-imagenet" not in result.stderr  # the dataset was never opened
    assert not (tmp_path / "run").exists()


def test_the_entry_point_reports_a_missing_dataset_with_the_status_the_launcher_does_not_restart(tmp_path) -> None:
    """Started without novograd.engine.launcher's pre-flight check (torchrun or python directly), a worker finds the
    missing dataset itself: exit status 2 (NOT_RESTARTED: the same command would fail the same way), not a crash."""
    from novograd.engine.exit_codes import EXIT_USAGE, NOT_RESTARTED

    command = [sys.executable, "-m", "novograd.train", "experiment=table1/novograd_100ep", "logger=none",
               f"data.root={tmp_path / 'no-imagenet-here'}", f"trainer.output_dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIG_DIR.parent)})
    assert result.returncode == EXIT_USAGE and EXIT_USAGE in NOT_RESTARTED, result.stderr[-2000:]
    assert result.stderr.count("Dataset not found (nothing was started)") == 1 and "prepare-imagenet" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=0.01", "unknown key optimizer.learning_rate: did you mean optimizer.lr? valid keys of "
                                     "optimizer are ['amsgrad', 'betas', "),
    ("trainer.batchsize=8", "unknown key trainer.batchsize: did you mean trainer.batch_size?"),
    ("optimzer.lr=0.01", "unknown key optimzer.lr: did you mean optimizer.lr?"),
    ("optimizer.lr.x=1", "optimizer.lr.x: optimizer.lr is a value, not a section with keys"),
])
def test_a_misspelt_key_gets_the_closest_key_at_once(override: str, message: str) -> None:
    """Where Hydra advises appending the key with `+`, the suite names the key meant (unit level; the entry point
    and the launcher print the same, tests/test_launcher.py)."""
    assert composition_problem(SMOKE) is None  # the negative control
    problem = composition_problem([*SMOKE, override])
    assert problem.startswith("Config error (nothing was started):\n  - ") and message in problem, problem
    assert "To append" not in problem


def test_every_misspelt_key_is_named() -> None:
    problem = composition_problem([*SMOKE, "trainer.batchsize=8", "optimizer.wd=0.1"])
    assert "did you mean trainer.batch_size?" in problem and "did you mean optimizer.weight_decay?" in problem


def test_an_experiment_that_does_not_exist_names_the_closest_rows() -> None:
    problem = composition_problem(["experiment=table1/novograd_50ep"])
    assert "experiment=table1/novograd_50ep: no such experiment; the closest: table1/novograd_" in problem, problem
    assert "table1/novograd_100ep" in problem and "`make help` lists every paper row" in problem


@pytest.mark.parametrize("row, target", [("table1/novograd_100ep", "make prepare-imagenet ARCHIVES="),
                                         ("table4/novograd", "make prepare-librispeech ARCHIVES="),
                                         ("table6/novograd_12b", "make prepare-wikitext103 WT103_ROOT="),
                                         ("table7/novograd", "make prepare-wmt14 WMT14_ROOT=")])
def test_a_missing_dataset_names_its_make_target(tmp_path, row: str, target: str) -> None:
    """The workload's `check_data` (the data module's own check) for the launcher's pre-flight check; a debug run
    reads its synthetic twin and needs no dataset."""
    (problem,) = data_problems(compose_config([f"experiment={row}", f"data.root={tmp_path}"], "unused"))
    assert target in problem and str(tmp_path) in problem, problem
    assert data_problems(compose_config([f"experiment={row}", "debug=smoke", f"data.root={tmp_path}"], "unused")) == []


@pytest.mark.parametrize("overrides, message", [
    ("experiment=table1/novograd_100ep optimizer.learning_rate=0.01",
     "unknown key optimizer.learning_rate: did you mean optimizer.lr?"),
    ("experiment=table1/novograd_50ep", "experiment=table1/novograd_50ep: no such experiment; the closest: table1/"),
])
def test_the_entry_point_answers_a_typo_on_the_first_try(tmp_path, overrides: str, message: str) -> None:
    """`python -m novograd.train` (before Hydra composes: no torch import, about a second)."""
    command = [sys.executable, "-m", "novograd.train", "debug=smoke", "logger=none", *overrides.split()]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(CONFIG_DIR.parent)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count(message) == 1, result.stderr
    assert "To append" not in result.stderr and "Available options" not in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []
