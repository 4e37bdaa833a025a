"""Preemption through the documented launch paths, on the CPU with gloo: `make <row>` (torchrun through
novograd.engine.launcher) checkpoints and exits 0 on SIGTERM or SIGUSR1, leaving no worker behind."""

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
from omegaconf import OmegaConf

from novograd.engine.compose import CONFIG_DIR

REPO = CONFIG_DIR.parent
# Two ranks on the regression workload, long enough to be stopped while training.
RUN = ["debug=regression", "logger=none", "trainer.max_steps=1000000", "trainer.micro_batch_size=4",
       "trainer.log_every_steps=20"]


def environment(tmp_path: Path) -> dict[str, str]:
    """The test's Python first on PATH, the repository importable, and a `uv` that runs its command as it is (the
    Makefile's `$(UV) run --frozen ...`), so `make` runs exactly its recipe in this environment."""
    fake_uv = tmp_path / "bin" / "uv"
    fake_uv.parent.mkdir()
    fake_uv.write_text('#!/bin/sh\n[ "$1" = run ] && shift\n[ "$1" = --frozen ] && shift\nexec "$@"\n')
    fake_uv.chmod(0o755)
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "UV": str(fake_uv),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def process_tree(root: int) -> dict[int, str]:
    """pid -> command line of `root`'s descendants, read from /proc."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree[pid] = commands[pid]
                frontier.append(pid)
    return tree


def wait_for_training(process: subprocess.Popen, metrics: Path) -> None:
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def assert_checkpointed(output: str, output_dir: Path, signal_name: str) -> None:
    assert f"Stopped by {signal_name}" in output and "exiting 0" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    state = torch.load(output_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["progress"]["step"] >= 40 and len(state["rng"]) == 2


@pytest.mark.distributed
def test_make_row_stopped_by_sigterm_to_its_launcher_checkpoints_and_exits_0(tmp_path: Path) -> None:
    runs = REPO / "results" / "runs" / "table1" / "novograd_100ep"
    runs_before = set(runs.iterdir()) if runs.is_dir() else set()
    output_dir = tmp_path / "run"
    command = ["make", "-s", "--no-print-directory", "table1-novograd-100ep", "NPROC=2",
               f"ARGS={' '.join(RUN)} trainer.output_dir={output_dir}"]
    env = environment(tmp_path)
    make = subprocess.Popen([*command, f"UV={env['UV']}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_training(make, output_dir / "metrics.jsonl")
    (launcher,) = [pid for pid, cmd in process_tree(make.pid).items()  # the launcher (torchrun before it), not a worker
                   if ("novograd.engine.launcher" in cmd or "torchrun" in cmd) and "-u -m novograd.train" not in cmd]
    os.kill(launcher, signal.SIGTERM)  # what a scheduler or `kill` does to the torchrun of a job
    output, _ = make.communicate(timeout=120)
    assert make.returncode == 0, output[-3000:]
    assert_checkpointed(output, output_dir, "SIGTERM")
    assert process_tree(make.pid) == {}
    # Hydra's own run folder (results/runs/<experiment>/<time>/) is not left behind empty.
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == runs_before


@pytest.mark.distributed
@pytest.mark.slow
def test_sigusr1_to_the_launcher_and_its_workers_checkpoints_and_exits_0(tmp_path: Path) -> None:
    """SLURM's `--signal=USR1@...` reaches every process of the job step; torchrun alone dies of SIGUSR1."""
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "novograd.engine.launcher", "--standalone", "--nproc-per-node=2",
               "-m", "novograd.train", *RUN, f"trainer.output_dir={output_dir}"]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=environment(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for_training(launcher, output_dir / "metrics.jsonl")
    workers = process_tree(launcher.pid)
    os.killpg(launcher.pid, signal.SIGUSR1)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, output[-3000:]
    assert_checkpointed(output, output_dir, "SIGUSR1")
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the launcher"
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------------- checks before any worker
SMOKE_ROW = ["-m", "novograd.train", "experiment=table1/novograd_100ep", "debug=smoke", "logger=none"]


def test_hydra_flags_after_the_overrides_move_before_them() -> None:
    """`make <row> ARGS="-m ..."` puts `-m` after `experiment=<row>`, where Hydra's parser refuses it."""
    from novograd.engine.launcher import hydra_flags_first

    assert hydra_flags_first(["experiment=x", "-m", "optimizer.lr=0.01,0.02", "--cfg", "job"]) == [
        "-m", "--cfg", "job", "experiment=x", "optimizer.lr=0.01,0.02"]
    assert hydra_flags_first(["experiment=x", "seed=1"]) == ["experiment=x", "seed=1"]


def test_every_job_of_a_sweep_is_checked_and_an_error_names_its_job() -> None:
    from novograd.engine.launcher import check_training_command, job_overrides

    assert job_overrides(["-m", "a=1,2", "b=x,y", "c=3"]) == [
        ["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]
    assert job_overrides(["--cfg", "job", "a=1"]) is None  # printing the config trains nothing
    assert check_training_command(["--nproc-per-node=2", *SMOKE_ROW, "-m", "optimizer.lr=0.01,0.02"]) is None
    problem = check_training_command(["--nproc-per-node=1", *SMOKE_ROW, "-m", "optimizer.lr=0.01,-1"])
    assert problem.startswith("Job experiment=table1/novograd_100ep debug=smoke logger=none optimizer.lr=-1: "
                              "Config error (nothing was started):")
    assert check_training_command(["-m", "some.other.module", "x=1"]) is None


def test_the_world_size_torchrun_is_asked_for_is_checked() -> None:
    from novograd.engine.launcher import check_training_command

    problem = check_training_command(["--nproc-per-node=3", *SMOKE_ROW])
    assert "x world size 3 = 12: run a number of processes that divides 8" in problem
    assert check_training_command(["--nproc-per-node=2", "--nnodes=1:4", *SMOKE_ROW]) is None  # elastic: unknown


def test_ranks_sharing_a_cpu_split_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS is set before torchrun, which would set 1 per rank with a 4-line warning."""
    from novograd.engine.launcher import thread_defaults

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert thread_defaults(["--nproc-per-node=2", *SMOKE_ROW]) == {"OMP_NUM_THREADS": "4"}
    assert thread_defaults(["--nproc-per-node=3", *SMOKE_ROW]) == {"OMP_NUM_THREADS": "2"}
    assert thread_defaults(["--nproc-per-node=1", *SMOKE_ROW]) == {}  # torch uses every core
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert thread_defaults(["--nproc-per-node=2", *SMOKE_ROW]) == {"OMP_NUM_THREADS": "1"}


def test_composition_errors_read_as_config_errors() -> None:
    """A misspelt key gets the key meant on the first try (not Hydra's advice to append it with `+`), an unknown
    row the closest rows; other composition errors keep Hydra's words."""
    from novograd.engine.launcher import check_training_command

    problem = check_training_command([*SMOKE_ROW, "optimizer.learning_rate=0.01"])
    assert problem.startswith("Config error (nothing was started):")
    assert "unknown key optimizer.learning_rate: did you mean optimizer.lr?" in problem and "To append" not in problem
    problem = check_training_command(["-m", "novograd.train", "experiment=table1/novograd_50ep"])
    assert "no such experiment; the closest: table1/novograd_" in problem and "`make help`" in problem
    problem = check_training_command([*SMOKE_ROW, "optimizer=novogard"])
    assert "Could not find 'optimizer/novogard'" in problem and "Available options in 'optimizer'" in problem


def test_a_row_without_its_dataset_stops_before_any_worker_naming_the_make_target(tmp_path: Path) -> None:
    empty, work = tmp_path / "imagenet", tmp_path / "cwd"
    empty.mkdir()
    work.mkdir()  # Hydra's run folder would go below the working directory
    command = [sys.executable, "-m", "novograd.engine.launcher", "--nproc-per-node=1", "-m", "novograd.train",
               "experiment=table1/novograd_100ep", f"data.root={empty}"]
    result = subprocess.run(command, cwd=work, env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert output.startswith("Dataset not found (nothing was started):"), output
    assert output.count(f"make prepare-imagenet ARCHIVES=/path/to/archives IMAGENET_ROOT={empty}") == 1, output
    assert "Traceback" not in output and "torchrun" not in output and list(work.iterdir()) == []  # no worker


def test_make_answers_an_unknown_target_with_the_rows_of_its_table() -> None:
    result = subprocess.run(["make", "-s", "--no-print-directory", "table1-novograd-50ep"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "make: no target 'table1-novograd-50ep'. Rows of table1: table1-adamw-100ep" in result.stderr, result.stderr
    assert "table1-novograd-100ep" in result.stderr and "`make help` lists every" in result.stderr
    assert "No rule to make target" not in result.stderr
    # Real targets keep their recipes (the negative control), and make does not rebuild its Makefile.
    dry = subprocess.run(["make", "-n", "--no-print-directory", "table1-novograd-100ep", "ARGS=x=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "-m novograd.train experiment=table1/novograd_100ep x=1" in dry.stdout, dry.stdout
    assert "no target" not in dry.stdout + dry.stderr


def test_launcher_slurm_without_its_extra_names_the_fix() -> None:
    from novograd.engine.launcher import check_training_command

    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        pytest.skip("the slurm extra is installed here")
    except ImportError:
        pass
    assert "uv sync --frozen --extra slurm" in check_training_command([*SMOKE_ROW, "launcher=slurm"])
    direct = subprocess.run([sys.executable, "-m", "novograd.train", "-m", "launcher=slurm",
                             "experiment=table2/novograd_b8k"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert direct.returncode == 2 and "uv sync --frozen --extra slurm" in direct.stderr, direct.stderr[-2000:]


def test_make_row_with_a_config_error_prints_it_once_and_starts_no_worker(tmp_path: Path) -> None:
    command = ["make", "-s", "--no-print-directory", "table1-novograd-100ep", "NPROC=2",
               f"ARGS=debug=smoke logger=none optimizer.lr=-1 trainer.output_dir={tmp_path / 'run'}"]
    env = environment(tmp_path)
    result = subprocess.run([*command, f"UV={env['UV']}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]  # make's own status for a failed recipe
    assert output.count("optimizer.lr must be a positive number, got -1") == 1, output
    assert "Traceback" not in output and "ChildFailedError" not in output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_sweep_through_make_runs_each_job(tmp_path: Path) -> None:
    """`make <row> ARGS="-m key=a,b"`: one run per value, in Hydra's sweep directory."""
    sweep = tmp_path / "sweep"
    command = ["make", "-s", "--no-print-directory", "table1-novograd-100ep", "NPROC=1",
               f"ARGS=-m debug=regression logger=none optimizer.lr=0.01,0.02 hydra.sweep.dir={sweep}"]
    env = environment(tmp_path)
    result = subprocess.run([*command, f"UV={env['UV']}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summaries = sorted(sweep.rglob("summary.json"))  # each job in the directory its overrides name
    assert len(summaries) == 2, sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    lrs = sorted(OmegaConf.load(path.with_name("config.yaml")).optimizer.lr for path in summaries)
    assert lrs == [0.01, 0.02]


# --------------------------------------------------------------------------------------------- failing workers
def launch(tmp_path: Path, nproc: int, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "novograd.engine.launcher", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "novograd.train", *overrides]
    directory = tmp_path / f"launch{len(list(tmp_path.glob('launch*')))}"
    directory.mkdir()
    return subprocess.Popen(command, cwd=directory, env=environment(directory), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_step(process: subprocess.Popen, metrics: Path, step: int) -> None:
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= step):
        assert process.poll() is None and time.monotonic() < deadline, "training did not reach the step"
        time.sleep(0.05)


@pytest.mark.distributed
def test_a_killed_rank_is_restarted_and_the_run_ends_bit_identical(tmp_path: Path) -> None:
    import random

    run = ["debug=regression", "logger=none", "trainer.max_steps=160", "trainer.micro_batch_size=4",
           "trainer.log_every_steps=1"]
    reference = launch(tmp_path, 2, *run, f"trainer.output_dir={tmp_path / 'reference'}")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()[-3000:]

    faulted_dir = tmp_path / "faulted"
    faulted = launch(tmp_path, 2, *run, "trainer.checkpoint_every_steps=5", f"trainer.output_dir={faulted_dir}")
    wait_for_step(faulted, faulted_dir / "metrics.jsonl", random.randint(10, 100))
    workers = [pid for pid, cmd in process_tree(faulted.pid).items() if "-u -m novograd.train" in cmd]
    assert len(workers) == 2
    os.kill(random.choice(workers), signal.SIGKILL)  # a lost node, an OOM kill
    output, _ = faulted.communicate(timeout=300)
    assert faulted.returncode == 0, output[-3000:]
    assert output.count("was killed by SIGKILL; restart 1 of 3: the workers resume from the last checkpoint.") == 1
    assert "ChildFailedError" not in output
    weights = [torch.load(d / "checkpoints" / "last.pt", weights_only=False)["model"] for d in (tmp_path / "reference",
                                                                                              faulted_dir)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert json.loads((faulted_dir / "summary.json").read_text())["steps"] == 160


def test_a_diverged_run_is_not_restarted(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    process = launch(tmp_path, 1, "debug=regression", "logger=none", "optimizer=sgd", "optimizer.lr=1e12",
                     "trainer.checkpoint_every_steps=1", f"trainer.output_dir={output_dir}")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 3, output[-3000:]
    assert "Diverged at step" in output and "(the run diverged): not restarted" in output
    assert "restart 1 of" not in output and "Traceback" not in output
    assert json.loads((output_dir / "summary.json").read_text())["diverged"] is True


@pytest.mark.distributed
def test_ctrl_c_stops_with_a_checkpoint_and_says_so_in_two_lines(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    launcher = launch(tmp_path, 2, *RUN, f"trainer.output_dir={output_dir}")
    wait_for_training(launcher, output_dir / "metrics.jsonl")
    os.kill(launcher.pid, signal.SIGINT)  # what Ctrl-C does: the launcher forwards it to its workers
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, output[-3000:]
    tail = output[output.index("Ctrl-C: stopping after the next step"):].splitlines()
    step = torch.load(output_dir / "checkpoints" / "last.pt", weights_only=False)["progress"]["step"]
    assert tail[1].startswith(f"Stopped by SIGINT at step {step}/") and "To resume, re-run the same command" in tail[1]
    assert tail[2].startswith(f"Stopped (SIGINT) at step {step}/") and len(tail) == 3, tail
    assert "Traceback" not in output
