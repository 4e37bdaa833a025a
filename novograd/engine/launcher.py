"""torchrun, ending a preempted run as a preempted run: `python -m novograd.engine.launcher [torchrun options] -m
novograd.train ...` (what `make <row>` runs).

torchrun alone turns a preemption into a failure: on SIGTERM its agent forwards the signal to the workers, waits
for them (30 s by default, then SIGKILL), and raises `SignalException`, so it exits 1 with a traceback although the
workers wrote a good checkpoint (make then exits 2); SIGUSR1, which it does not handle by default, kills it at once
and leaves the workers running without it. This launcher is torchrun (same options, same agent) with:
- SIGUSR1 handled and forwarded like SIGTERM (`--signals-to-handle`, environment `PET_SIGNALS_TO_HANDLE`);
- workers given `--shutdown-timeout` 600 s (environment `PET_SHUTDOWN_TIMEOUT`) to reach the next step boundary
  and checkpoint, instead of 30 s, shorter than one step of the large-batch rows;
- exit status 0 after a signal when every worker on this node ended the run cleanly (it finished, or stopped
  with its checkpoint written: local rank 0 records that in a file named by `NOVOGRAD_RUN_OUTCOME_FILE`), and
  128 + the signal's number, as a killed process, when they did not.
Options given on the command line or in the environment win.

A crashed worker (an exception, a kill, a lost GPU) restarts the workers of this node, which resume from the last
checkpoint, up to `--max-restarts` times (environment `PET_MAX_RESTARTS`, default 3), with
one line saying which rank died, how, and which restart this is. The launcher restarts torchrun itself (torchrun
runs with `--max-restarts=0`) so that it can read why the workers ended: a failure that a restart cannot fix
(`exit_codes.NOT_RESTARTED`: a divergence, a usage error, a full disk, an interrupt) ends the job at once with the
worker's own status, where torchrun's agent would restart every failure alike.

Before torchrun starts any worker, a `-m novograd.train` command is checked (`check_training_command`): every job
of it (each combination of a `-m` sweep) is composed with Hydra's compose API, settled as the workers will settle
it, and checked (novograd/engine/config_checks.py) for the world size torchrun is asked for, and its dataset must
be there (the workload's own check, whose message names the make target that prepares it). A config error or a
missing dataset is printed once, without a traceback, and the launcher exits 2: seconds, instead of every rank
failing after building its model and datasets. Several ranks on a node get an OMP_NUM_THREADS that splits its
cores (`thread_defaults`). Hydra's flags after the overrides (`make <row> ARGS="-m optimizer.lr=0.01,0.02"`
puts `-m` after `experiment=<row>`, which Hydra's parser refuses) are moved before them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from novograd.engine.compose import LAUNCHER_CHECKED_ENV
from novograd.engine.exit_codes import NOT_RESTARTED
from novograd.engine.preemption import OUTCOME_FILE_ENV, PREEMPTION_SIGNALS

TRAINING_MODULE = "novograd.train"
# Hydra flags that print or inspect instead of training: a command with one of them is not checked.
_INSPECTING_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")

log = logging.getLogger("novograd.launcher")

DEFAULTS = {
    # Restarts after a crash, counted by this launcher (`run_with_restarts`); `--max-restarts` overrides it.
    "PET_MAX_RESTARTS": "3",
    "PET_SIGNALS_TO_HANDLE": ",".join(["SIGINT", "SIGHUP", "SIGQUIT", *(sig.name for sig in PREEMPTION_SIGNALS)]),
    "PET_SHUTDOWN_TIMEOUT": "600",
    LAUNCHER_CHECKED_ENV: "1",  # the workers need not compose the command once more before Hydra does
}


def thread_defaults(argv: list[str]) -> dict[str, str]:
    """OMP_NUM_THREADS for workers that share a node (unless set): its cores split between the ranks when they
    compute on the CPU, 1 per rank when GPUs are there to compute. Unset, torchrun sets 1 for every rank with a
    4-line warning, which on the CPU leaves all but one core per rank idle; a GPU rank's own threads only feed the
    GPU. One rank per node needs nothing: torch uses every core."""
    import torch
    from torch.distributed.run import determine_local_world_size, get_args_parser

    nproc = determine_local_world_size(get_args_parser().parse_args(argv).nproc_per_node)
    if nproc <= 1:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(1 if torch.cuda.is_available() else max(1, cores // nproc))}


def exit_status(received: signal.Signals, outcome_file: Path) -> int:
    """0 when the workers recorded a clean end of the run after `received`, else 128 + its number."""
    if not outcome_file.is_file():
        log.error("%s: the workers ended without recording a checkpoint; exiting %d.", received.name, 128 + received)
        return 128 + received
    outcome = json.loads(outcome_file.read_text())
    if outcome.get("preempted"):
        if received != signal.SIGINT:  # after Ctrl-C the workers' two lines (where, how to resume) say it all
            log.warning("%s: the workers stopped at step %s with a checkpoint in %s; exiting 0 (resume from there).",
                        received.name, outcome["steps"], outcome["output_dir"])
    else:
        log.warning("%s arrived as the run finished (step %s); exiting 0.", received.name, outcome["steps"])
    return 0


def _training_args(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """`argv` split into torchrun's part (up to `-m novograd.train`) and the training script's arguments, or None
    when `argv` runs something else."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    if not (args.module and args.training_script == TRAINING_MODULE):
        return None
    script_args = list(args.training_script_args)
    return argv[: len(argv) - len(script_args)], script_args


def hydra_flags_first(script_args: list[str]) -> list[str]:
    """The training script's arguments with Hydra's flags (`-m`, `--cfg job`, ...) before the overrides, where
    Hydra's parser accepts them."""
    from hydra._internal.utils import get_args_parser

    overrides = get_args_parser().parse_intermixed_args(script_args).overrides
    flags, ordered, position = [], [], 0
    for token in script_args:
        if position < len(overrides) and token == overrides[position]:
            ordered.append(token)
            position += 1
        else:
            flags.append(token)
    return flags + ordered


def _world_size(argv: list[str]) -> int | None:
    """Processes the torchrun options ask for, or None when elastic (`--nnodes=1:4`) or otherwise unknown here."""
    import torch
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    nproc, nnodes = str(args.nproc_per_node), str(args.nnodes)
    low, _, high = nnodes.partition(":")  # torchrun's default is "1:1"
    nnodes = low if high in ("", low) else "elastic"
    if nproc in ("gpu", "auto", "cpu"):
        gpus = torch.cuda.device_count()
        nproc = str(gpus if nproc == "gpu" or (nproc == "auto" and gpus) else os.cpu_count())
    return int(nproc) * int(nnodes) if nproc.isdigit() and nnodes.isdigit() else None


def job_overrides(script_args: list[str]) -> list[list[str]] | None:
    """The overrides of each job the training command runs (one, or every combination of a `-m` sweep), or None
    when it only prints (`--cfg`, `--help`, `--info`)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_intermixed_args(script_args)
    if any(getattr(args, flag) for flag in _INSPECTING_FLAGS):
        return None
    if not args.multirun:
        return [list(args.overrides)]
    parsed = OverridesParser.create().parse_overrides(list(args.overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_training_command(argv: list[str]) -> str | None:
    """The config error of the first job of `argv` that has one (its overrides named when it is a sweep's), or
    None when every job can start."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from novograd.engine.compose import added_keys, compose_run_config, describe_composition_error
    from novograd.engine.config_checks import config_errors, data_problems, format_problems, missing_launcher_plugin
    from novograd.engine.lazy_dynamo import dynamo_import_skipped

    split = _training_args(argv)
    jobs = job_overrides(split[1]) if split else None
    if not jobs:
        return None
    if problem := missing_launcher_plugin(split[1]):
        return problem
    world_size = _world_size(split[0])
    for overrides in jobs:
        which = f"Job {' '.join(overrides)}: " if len(jobs) > 1 else ""
        try:
            cfg, _ = compose_run_config(overrides)
        except (HydraException, OmegaConfBaseException) as error:
            return which + describe_composition_error(error, overrides)
        with dynamo_import_skipped():  # the checks' stand-in optimizers compile nothing
            problems = config_errors(cfg, world_size, added_keys(overrides))
        if problems:
            return which + format_problems(problems)
        if problems := data_problems(cfg):
            return which + format_problems(problems, "Dataset not found")
    return None


def without_max_restarts(argv: list[str]) -> tuple[list[str], int]:
    """`argv` with `--max-restarts=0` for torchrun itself, and the restarts it asked for, as torchrun's parser reads
    them (the command line, else `PET_MAX_RESTARTS`)."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.max_restarts < 0:
        raise SystemExit(f"--max-restarts must be a whole number >= 0, got {args.max_restarts}.")
    end = len(argv) - len(args.training_script_args) - 1  # torchrun's options end where the script begins
    return [*argv[:end], "--max-restarts=0", *argv[end:]], args.max_restarts  # the last occurrence wins


def describe_failure(failure: Any) -> str:
    """`rank 1 (pid 4242) was killed by SIGKILL` or `rank 0 (pid 4242) exited with status 1`, from torchrun's
    ChildFailedError."""
    rank, process = failure.get_first_failure()
    how = (f"was killed by {process.signal_name()}" if process.exitcode < 0
           else f"exited with status {process.exitcode}")
    return f"rank {rank} (pid {process.pid}) {how}"


def run_with_restarts(torchrun: Callable[[list[str]], None], argv: list[str], max_restarts: int) -> int:
    """Run torchrun on `argv`; restart it after a crash that a restart can fix, at most `max_restarts` times."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for restart in range(max_restarts + 1):
        with tempfile.TemporaryDirectory(prefix="novograd-launcher-") as scratch:
            outcome_file = Path(scratch) / "outcome.json"
            os.environ[OUTCOME_FILE_ENV] = str(outcome_file)  # inherited by the workers
            try:
                torchrun(argv)
                return 0
            except SignalException as stop:
                return exit_status(stop.sigval, outcome_file)
            except ChildFailedError as failure:
                status = failure.get_first_failure()[1].exitcode
                if status in NOT_RESTARTED:  # the workers said why; a restart would end the same way
                    log.error("The workers ended with status %d (%s): not restarted.", status, NOT_RESTARTED[status])
                    return status
                if restart == max_restarts:
                    log.error("%s; no restart left (--max-restarts=%d). Re-run the same command to resume from "
                              "the last checkpoint.", describe_failure(failure), max_restarts)
                    return 1
                log.warning("%s; restart %d of %d: the workers resume from the last checkpoint.",
                            describe_failure(failure), restart + 1, max_restarts)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import main as torchrun

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # torchrun's agent reports each failure, signal and shutdown in several lines; this launcher says it in one.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    split = _training_args(argv)
    if split:
        argv = split[0] + hydra_flags_first(split[1])
    problem = check_training_command(argv)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 2
    for name, value in (DEFAULTS | thread_defaults(argv)).items():
        os.environ.setdefault(name, value)
    argv, max_restarts = without_max_restarts(argv)
    status = run_with_restarts(torchrun, argv, max_restarts)
    # The job's end is decided: a late signal (a scheduler's second SIGTERM) would otherwise meet torchrun's
    # handler, still installed, and raise inside the interpreter's shutdown, printing a traceback after the verdict.
    for name in DEFAULTS["PET_SIGNALS_TO_HANDLE"].split(","):
        signal.signal(signal.Signals[name], signal.SIG_IGN)
    return status


if __name__ == "__main__":
    sys.exit(main())
