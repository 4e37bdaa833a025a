"""Runs on a cluster: the same command resumes its own directory, a finished run trains nothing, checkpoints come
by time too, the console holds plain lines and a summary line, debug runs stay apart in W&B, and a failed run
leaves no empty directory."""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from novograd.engine import run
from novograd.engine.compose import CONFIG_DIR, compose_config
from novograd.engine.output_dir import MAX_NAME_LENGTH, run_directory, settings_name

REGRESSION = ["debug=regression", "logger=none", "trainer.max_steps=4"]


def train_command(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    """`python -m novograd.train <overrides>` in this process, in the current working directory."""
    from novograd.train import main

    monkeypatch.setattr(sys, "argv", ["novograd.train", *overrides])
    main()


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


# -------------------------------------------------------------------------------------------- directory names
def test_directory_name_is_the_training_overrides_without_bookkeeping() -> None:
    name = settings_name(["experiment=table1/novograd_100ep", "optimizer.lr=0.01", "debug=smoke"])
    assert name == "debug=smoke,optimizer.lr=0.01"  # sorted: the order on the command line does not matter
    bookkeeping = ["trainer.stop_at_step=2", "trainer.log_every_steps=1", "logger=none", "logger.mode=offline",
                   "data.num_workers=4", "trainer.output_dir=/x", "trainer.checkpoint_every_minutes=5",
                   "launcher=slurm", "trainer.progress_bar=false"]
    assert settings_name(["optimizer.lr=0.01", *bookkeeping, "debug=smoke"]) == name
    assert settings_name(bookkeeping) == "default" and settings_name([]) == "default"
    # Negative controls: a training key, the seed and a run name each give another directory.
    assert settings_name(["optimizer.lr=0.02", "debug=smoke"]) != name
    assert settings_name(["optimizer.lr=0.01", "debug=smoke", "seed=1"]) == "debug=smoke,optimizer.lr=0.01,seed=1"
    assert settings_name(["optimizer.lr=0.01", "debug=smoke", "run_name=b"]) != name
    assert run_directory(None, []) == "no_experiment/default"
    assert run_directory("table6/adam_12b", ["+model.x=a/b c"]) == "table6/adam_12b/+model.x=a%2Fb%20c"


def test_a_long_override_list_gives_a_bounded_distinct_name() -> None:
    many = [f"model.layer_{i}_width={100 + i}" for i in range(20)]
    name, other = settings_name(many), settings_name([*many[:-1], "model.layer_19_width=7"])
    assert len(name) <= MAX_NAME_LENGTH and len(other) <= MAX_NAME_LENGTH and name != other
    assert name.startswith("model.layer_0_width=100,") and "_more-" in name


def test_hydra_run_and_sweep_directories_come_from_the_command_line() -> None:
    from hydra import compose, initialize_config_dir

    overrides = ["experiment=table1/novograd_100ep", "optimizer.lr=0.01", "trainer.stop_at_step=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.run.dir == "results/runs/table1/novograd_100ep/optimizer.lr=0.01"
    assert f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}" == cfg.hydra.run.dir  # a -m job: the same directory


def test_every_debug_mode_names_itself() -> None:
    """W&B tags and groups debug runs by `debug_mode`: each configs/debug/<mode>.yaml must set it."""
    for path in sorted((CONFIG_DIR / "debug").glob("*.yaml")):
        assert OmegaConf.load(path).get("debug_mode") == path.stem, path


# ------------------------------------------------------------------------------------------ the same command
def test_the_same_command_resumes_and_a_finished_run_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    command = [*REGRESSION, "model.dropout=0.2"]  # dropout: the generator states must resume too
    train_command(monkeypatch, *command, "trainer.stop_at_step=2")  # a preemption, as far as the run can tell
    (output_dir,) = (tmp_path / "results" / "runs" / "no_experiment").iterdir()
    assert output_dir.name == "debug=regression,model.dropout=0.2,trainer.max_steps=4"
    assert "Stopped by trainer.stop_at_step=2 at step 2/4" in capsys.readouterr().out

    train_command(monkeypatch, *command)
    out = capsys.readouterr().out
    assert f"Resuming from step 2 of {output_dir / 'checkpoints' / 'last.pt'}" in out
    assert "step 3/4 |" in out and "step 1/4 |" not in out
    run(compose_config(command, tmp_path / "straight"))
    straight = weights(tmp_path / "straight")
    for key, value in weights(output_dir).items():
        assert torch.equal(value, straight[key]), key

    before = {p: p.stat().st_mtime_ns for p in output_dir.rglob("*")}
    train_command(monkeypatch, *command)
    out = capsys.readouterr().out
    assert f"This run already finished: {output_dir / 'summary.json'}. Nothing to train." in out
    assert {p: p.stat().st_mtime_ns for p in output_dir.rglob("*")} == before  # nothing trained or rewritten
    assert len(list((tmp_path / "results" / "runs" / "no_experiment").iterdir())) == 1

    train_command(monkeypatch, *command, "seed=1")  # a new run of the same settings: one key away
    assert (output_dir.parent / "debug=regression,model.dropout=0.2,seed=1,trainer.max_steps=4" / "summary.json").is_file()


def test_a_failed_run_leaves_no_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # Hydra reports the error and exits 1
        train_command(monkeypatch, "experiment=table1/novograd_100ep", "model=resnet_v2_tiny", "trainer.device=cpu",
                      "logger=none", f"data.root={tmp_path / 'nowhere'}")  # no dataset there
    assert list(tmp_path.iterdir()) == []  # results/runs/table1/novograd_100ep/default/ and its parents are gone


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("minutes", [1e-6, None])
def test_time_based_checkpoints(tmp_path: Path, minutes: float | None) -> None:
    # 60 microseconds: due at every step boundary. The vote cast after step k is read before step k + 1.
    run(compose_config([*REGRESSION, f"trainer.checkpoint_every_minutes={'null' if minutes is None else minutes}",
                        "trainer.keep_last_k=10", "trainer.eval_every_steps=null"], tmp_path))
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    expected = [1, 2, 3, 4] if minutes else [4]  # without: only the final checkpoint
    assert steps == [f"step_{step:08d}.pt" for step in expected]


def test_deferred_vote_alone_returns_the_previous_cast() -> None:
    from novograd.engine.distributed import DeferredVote

    vote = DeferredVote(num_flags=2)
    assert vote.result() == [0, 0]
    vote.cast([15, 1])
    assert vote.result() == [15, 1] and vote.result() == [0, 0]
    vote.close()


# ----------------------------------------------------------------------------------------------------- console
def test_plain_progress_lines_and_a_summary_line_without_a_terminal(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="novograd"):
        summary = run(compose_config([*REGRESSION, "trainer.progress_bar=true", "trainer.log_every_steps=2"],
                                     tmp_path))
    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if line.startswith("step ") and " | loss " in line]
    assert [line.split(" |")[0] for line in progress] == ["step 2/4", "step 4/4"]
    assert all(re.search(r" examples/s \| data wait \d+% \| elapsed 0:00:", line) and "| ETA " in line
               for line in progress)
    assert lines[-1] == (f"Finished 4/4 steps: mse={summary['mse']:.4f} | wall time "
                         f"0:00:0{round(summary['wall_time_s'])} | output {tmp_path}")
    assert "best_mse" in summary  # the final line shows the paper's columns; summary.json holds every metric


def test_the_final_line_shows_the_paper_columns_and_counts_that_are_not_zero() -> None:
    from novograd.engine.logger import metrics_text, summary_line

    summary = {"valid_bleu": 0.5, "sacrebleu": 1.25, "tokenized_bleu": 2.0, "best_sacrebleu": 1.5, "skipped_val": 0,
               "skipped_train": 3, "steps": 4, "wall_time_s": 2.0, "output_dir": "/out"}
    assert summary_line(summary, 4, ("sacrebleu", "tokenized_bleu")) == (
        "Finished 4/4 steps: sacrebleu=1.2500, tokenized_bleu=2.0000, skipped_train=3 | wall time 0:00:02 | output /out")
    # Without columns every metric is shown (the zero count still left out), as on an evaluation line.
    assert summary_line(summary).startswith("Finished 4 steps: valid_bleu=0.5000, sacrebleu=1.2500, tokenized_bleu="
                                            "2.0000, best_sacrebleu=1.5000, skipped_train=3 |")
    assert metrics_text({"top1": 37.5, "skipped_val": 0}) == "top1=37.5000"
    assert metrics_text({"top1": 37.5, "skipped_val": 2}) == "top1=37.5000, skipped_val=2"


def test_each_workload_shows_the_columns_of_its_paper_tables() -> None:
    """The final line's columns (Workload.columns) are those results/paper/tables.yaml gives each table."""
    from hydra.utils import get_class

    tables = OmegaConf.load(CONFIG_DIR.parent / "results" / "paper" / "tables.yaml")
    for name, table in tables.items():
        row = next((row.experiment for row in table.rows if "experiment" in row), None)
        if row is None:
            continue
        workload = get_class(compose_config([f"experiment={row}"], "unused").workload._target_)
        assert set(table.metrics) <= set(workload.columns()), (name, workload.columns())
    wmt14 = get_class(compose_config(["experiment=table7/novograd"], "unused").workload._target_)
    assert wmt14.columns() == ("sacrebleu", "tokenized_bleu")  # not Table 7's 17 metrics


def test_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from novograd.engine.logger import RunLogger

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def logger(show_progress: bool) -> RunLogger:
        return RunLogger(tmp_path, enabled=True, wandb_settings=None, metric_goals={}, run_config={}, run_id=None,
                         total_steps=4, start_step=0, show_progress=show_progress)

    assert logger(True).progress is None  # pytest's stdout is no terminal
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert logger(True).progress is not None and logger(False).progress is None


# --------------------------------------------------------------------------------------------------------- W&B
def test_debug_runs_are_tagged_and_grouped_apart() -> None:
    from novograd.engine.logger import wandb_group_and_tags

    paper = {"table": "table1", "debug_mode": None}
    assert wandb_group_and_tags({"tags": ["a"]}, paper) == ("table1", ["a"])
    assert wandb_group_and_tags({"tags": ["a"]}, {**paper, "debug_mode": "smoke"}) == (
        "debug-smoke-table1", ["a", "debug", "debug=smoke"])
    assert wandb_group_and_tags({"group": "g"}, {"table": None, "debug_mode": "regression"}) == (
        "debug-regression-g", ["debug", "debug=regression"])


# -------------------------------------------------------------------------------------------------- structure
def test_engine_modules_import_no_circle() -> None:
    """Module-level imports (type-only ones included) among novograd/engine/ and novograd/workload.py."""
    root = CONFIG_DIR.parent
    files = {f"novograd.engine.{p.stem}": p for p in (root / "novograd" / "engine").glob("*.py")
             if p.stem != "__init__"} | {"novograd.workload": root / "novograd" / "workload.py"}

    def imports(path: Path) -> set[str]:
        found, tree = set(), ast.parse(path.read_text())
        nodes = [*tree.body, *(n for s in tree.body if isinstance(s, ast.If) for n in s.body)]  # TYPE_CHECKING
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        return found & files.keys()

    graph = {name: imports(path) for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name not in done:
            for dependency in graph[name]:
                visit(dependency, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_data_wait_share_is_logged_and_a_slow_loader_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A deliberately slow dataset (20 ms a sample, 160 ms a step) makes the loop wait for data most of each step
    (the rest: the engine's ~80 ms of per-step bookkeeping on this machine), and one warning says so; a computation
    slowed as much, with the fast data (negative control), waits about 1% and warns not."""
    from torch.utils.data import TensorDataset

    from novograd.workloads.regression import RegressionWorkload

    def slowed(function):
        def slow(*args):
            time.sleep(0.02 if function is read else 0.16)
            return function(*args)
        return slow

    from novograd.engine.batches import DataWait

    monkeypatch.setattr(DataWait, "MIN_SECONDS", 0.0)  # a test run is seconds long
    read, loss = TensorDataset.__getitem__, RegressionWorkload.loss
    shares = {}
    for name, patched in (("slow_data", (TensorDataset, "__getitem__", slowed(read))),
                          ("slow_compute", (RegressionWorkload, "loss", slowed(loss)))):
        with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="novograd"):
            patch.setattr(*patched)
            caplog.clear()
            run(compose_config(REGRESSION, tmp_path / name))
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        shares[name] = [r["train/data_wait"] for r in records if "train/loss" in r]
        warned = [r for r in caplog.records if "input pipeline is the bottleneck" in r.getMessage()]
        assert len(warned) == (name == "slow_data"), name
    assert len(shares["slow_data"]) == 4 and min(shares["slow_data"]) > 0.5, shares
    assert max(shares["slow_compute"]) < 0.1, shares
