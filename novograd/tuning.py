"""Equal tuning budgets: `make tune ROWS="table1-sgd-100ep table1-adamw-100ep table1-novograd-100ep" TRIALS=5 SEED=0`
(`python -m novograd.tuning <rows> --trials 5 --seed 0 [overrides]`), as MLCommons AlgoPerf's external-tuning
ruleset gives every optimizer the same number of quasi-random points of its search space.

- The search space of a row is `configs/search_space/<workload>/<optimizer>.yaml` (the row's workload and
  optimizer): per Hydra override path a range `{low, high, log}`, drawn on a log or a linear scale.
- The points are the first `trials` of a scrambled Sobol sequence seeded with `seed` (`torch.quasirandom`), one
  dimension per key in the file's order, each value rounded to `SIGNIFICANT_DIGITS`: the same seed gives the same
  points, and a budget of 8 trials holds the 5 of a budget of 5 with the same seed.
- Each point is an ordinary run of its row: `python -m novograd.engine.launcher ... -m novograd.train
  experiment=<row> <point> tuning.seed=<seed> tuning.trial=<i>`, in the directory the same command uses alone
  (`results/runs/<row>/<point>`); a trial that already finished trains nothing again, so growing a budget runs the
  new points only. `tuning.seed`/`tuning.trial` (configs/config.yaml) mark the run as a trial of that budget for the
  report (`novograd/report/tuning.py`); they are bookkeeping, which a resume may change and the directory name leaves
  out (`novograd.engine.run_config.RESUME_MAY_CHANGE`), so the directory is named by the point alone.
- The trials run side by side, one per `--gpus-per-trial` GPUs of this machine (one at a time without a GPU), each
  writing its output to `results/runs/<row>/tuning-seed<s>-trial<i>.log`, one line each when it ends; `--dry-run`
  prints the commands instead, one per line, for a SLURM array (docs/claims.md#equal-tuning-budgets).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from novograd.engine.exit_codes import EXIT_DIVERGED
from novograd.engine.logger import optimizer_name

REPO = Path(__file__).resolve().parents[1]
SEARCH_SPACES = REPO / "configs" / "search_space"
EXPERIMENTS = REPO / "configs" / "experiment"
RUNS = REPO / "results" / "runs"
SIGNIFICANT_DIGITS = 4  # a point's values as the command line, the directory name and config.yaml hold them


@dataclass(frozen=True)
class Range:
    """One hyperparameter's range: values from `low` to `high`, drawn uniformly in log(value) when `log`."""

    low: float
    high: float
    log: bool

    def value(self, unit: float) -> float:
        """The value at `unit` in [0, 1), rounded to `SIGNIFICANT_DIGITS` and kept inside the range."""
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), self.low), self.high)


def search_space_path(workload: str, optimizer: str) -> Path:
    return SEARCH_SPACES / workload / f"{optimizer}.yaml"


def load_search_space(path: Path) -> dict[str, Range]:
    """The ranges of a search-space file, in its order; an error that says what is wrong with a range."""
    if not path.is_file():
        known = sorted(str(p.relative_to(SEARCH_SPACES)) for p in SEARCH_SPACES.glob("*/*.yaml"))
        raise SystemExit(f"No search space {path}: write one (ranges as the others: {', '.join(known)}).")
    spec = OmegaConf.to_container(OmegaConf.load(path))
    space = {}
    for key, bounds in spec.items():
        where = f"{path}: {key}"
        if not isinstance(bounds, dict) or set(bounds) - {"low", "high", "log"} or not {"low", "high"} <= set(bounds):
            raise SystemExit(f"{where}: give {{low: <number>, high: <number>, log: true|false}}, not {bounds!r}.")
        low, high, log = bounds["low"], bounds["high"], bounds.get("log", False)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise SystemExit(f"{where}: low and high must be numbers with low < high, not {low!r} and {high!r}.")
        if log and low <= 0:
            raise SystemExit(f"{where}: a log scale needs low > 0 (it is {low!r}); use log: false to include 0.")
        space[key] = Range(float(low), float(high), bool(log))
    if not space:
        raise SystemExit(f"{path} has no ranges.")
    return space


def draw_points(space: dict[str, Range], trials: int, seed: int) -> list[dict[str, float]]:
    """The first `trials` points of the scrambled Sobol sequence seeded with `seed`, mapped onto `space`."""
    import torch

    if trials < 1:
        raise SystemExit(f"--trials must be at least 1, not {trials}.")
    engine = torch.quasirandom.SobolEngine(len(space), scramble=True, seed=seed)
    units = engine.draw(trials, dtype=torch.float64).tolist()
    return [{key: bounds.value(unit) for (key, bounds), unit in zip(space.items(), point)} for point in units]


@dataclass(frozen=True)
class Trial:
    """One point of a row's budget, as the overrides of an ordinary run of the row."""

    experiment: str
    seed: int
    index: int
    point: dict[str, float]

    def overrides(self) -> list[str]:
        point = [f"{key}={value:.{SIGNIFICANT_DIGITS}g}" for key, value in self.point.items()]
        return [f"experiment={self.experiment}", *point, f"tuning.seed={self.seed}", f"tuning.trial={self.index}"]

    def command(self, gpus: int, extra: list[str]) -> list[str]:
        """The launcher command of the trial on `gpus` processes (its own rendezvous: several run side by side)."""
        return [sys.executable, "-m", "novograd.engine.launcher", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "novograd.train", *self.overrides(), *extra]

    @property
    def log_file(self) -> Path:
        return RUNS / self.experiment / f"tuning-seed{self.seed}-trial{self.index}.log"


def experiment_of(name: str) -> str:
    """`table1/novograd_100ep` from itself or its make target `table1-novograd-100ep`; an error naming the rows."""
    experiments = sorted(str(p.relative_to(EXPERIMENTS).with_suffix("")) for p in EXPERIMENTS.glob("table*/*.yaml"))
    by_target = {e.replace("/", "-").replace("_", "-"): e for e in experiments}
    if name in experiments or name in by_target:
        return by_target.get(name, name)
    raise SystemExit(f"No paper row {name!r}: the rows are {', '.join(by_target)} (`make help`).")


def row_search_space(experiment: str, extra: list[str]) -> dict[str, Range]:
    """The search space of the row as `extra` overrides leave it (its workload and optimizer), every key checked to
    be a number of the row's config."""
    from novograd.engine.compose import compose_config

    cfg = compose_config([f"experiment={experiment}", *extra], output_dir="tuning")  # the path is not used
    workload = str(cfg.workload._target_).rsplit(".", 2)[-2]  # novograd.workloads.<workload>.<Class>
    path = search_space_path(workload, optimizer_name(cfg.optimizer))
    space = load_search_space(path)
    for key in space:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SystemExit(f"{path}: {key} is {value!r} in {experiment}'s config, not a number to tune.")
    return space


def budget(experiments: list[str], trials: int, seed: int, extra: list[str]) -> list[Trial]:
    """Every row's `trials` points of its search space, drawn with `seed`."""
    out = []
    for experiment in experiments:
        space = row_search_space(experiment, extra)
        out += [Trial(experiment, seed, index, point) for index, point in enumerate(draw_points(space, trials, seed))]
    return out


def printable(command: list[str]) -> str:
    """A command as one shell line that runs from the repository with the locked environment."""
    return shlex.join(["uv", "run", "--frozen", "python", *command[1:]])


def run_side_by_side(trials: list[Trial], gpus: int, gpus_per_trial: int, extra: list[str]) -> int:
    """Run the trials, `gpus // gpus_per_trial` at a time (each on its own GPUs; one at a time on the CPU); one line
    per trial as it ends. Returns 0 when every trial finished or diverged (a result), else 1."""
    slots: queue.Queue[str | None] = queue.Queue()
    for first in range(0, gpus - gpus_per_trial + 1, gpus_per_trial) if gpus else []:
        slots.put(",".join(str(g) for g in range(first, first + gpus_per_trial)))
    if gpus and slots.empty():
        raise SystemExit(f"--gpus-per-trial {gpus_per_trial} needs that many GPUs; this machine has {gpus}.")
    if slots.empty():
        slots.put(None)  # no GPU: one trial at a time, one process

    def run(trial: Trial) -> int:
        devices = slots.get()
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {}))
        trial.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with trial.log_file.open("w") as log:
                status = subprocess.run(trial.command(gpus_per_trial if devices else 1, extra), env=env, cwd=REPO,
                                        stdout=log, stderr=subprocess.STDOUT).returncode
        finally:
            slots.put(devices)
        outcome = "finished" if status == 0 else "diverged" if status == EXIT_DIVERGED else f"failed (exit {status})"
        print(f"{trial.experiment} trial {trial.index} (seed {trial.seed}): {outcome}; log {trial.log_file}",
              flush=True)
        return status

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        statuses = list(pool.map(run, trials))
    return 0 if all(status in (0, EXIT_DIVERGED) for status in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="+", metavar="ROW|OVERRIDE",
                        help="paper rows (table1/adamw_100ep or table1-adamw-100ep), and Hydra overrides (key=value) "
                             "for every trial, e.g. debug=smoke")
    parser.add_argument("--trials", type=int, default=5, help="points per row (default: %(default)s, as AlgoPerf)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the quasi-random draw (default: %(default)s)")
    parser.add_argument("--gpus-per-trial", type=int, default=1, help="GPUs of one trial (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials' commands, one per line (for a SLURM array), and run nothing")
    args = parser.parse_intermixed_args(argv)  # rows, options and overrides in any order
    extra = [item for item in args.items if "=" in item]
    trials = budget([experiment_of(item) for item in args.items if "=" not in item], args.trials, args.seed, extra)
    if args.dry_run:
        print("\n".join(printable(trial.command(args.gpus_per_trial, extra)) for trial in trials))
        return 0
    import torch

    gpus = torch.cuda.device_count()
    print(f"{len(trials)} trials (seed {args.seed}), {max(1, gpus // args.gpus_per_trial)} at a time:", flush=True)
    for trial in trials:
        print(f"  {printable(trial.command(args.gpus_per_trial, extra))}", flush=True)
    return run_side_by_side(trials, gpus, args.gpus_per_trial, extra)


if __name__ == "__main__":
    sys.exit(main())
