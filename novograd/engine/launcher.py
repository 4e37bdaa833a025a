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
Any other failure ends as torchrun's does. Options given on the command line or in the environment win.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from novograd.engine.preemption import OUTCOME_FILE_ENV, PREEMPTION_SIGNALS

log = logging.getLogger("novograd.launcher")

DEFAULTS = {
    "PET_SIGNALS_TO_HANDLE": ",".join(["SIGINT", "SIGHUP", "SIGQUIT", *(sig.name for sig in PREEMPTION_SIGNALS)]),
    "PET_SHUTDOWN_TIMEOUT": "600",
}


def exit_status(received: signal.Signals, outcome_file: Path) -> int:
    """0 when the workers recorded a clean end of the run after `received`, else 128 + its number."""
    if not outcome_file.is_file():
        log.error("%s: the workers ended without recording a checkpoint; exiting %d.", received.name, 128 + received)
        return 128 + received
    outcome = json.loads(outcome_file.read_text())
    if outcome.get("preempted"):
        log.warning("%s: the workers stopped at step %s with a checkpoint in %s; exiting 0 (resume from there).",
                    received.name, outcome["steps"], outcome["output_dir"])
    else:
        log.warning("%s arrived as the run finished (step %s); exiting 0.", received.name, outcome["steps"])
    return 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="novograd-launcher-") as scratch:
        outcome_file = Path(scratch) / "outcome.json"
        os.environ[OUTCOME_FILE_ENV] = str(outcome_file)  # inherited by the workers
        try:
            torchrun(argv)
        except SignalException as stop:
            return exit_status(stop.sigval, outcome_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
