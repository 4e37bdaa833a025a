"""Preemption: SIGTERM or SIGUSR1 asks for a checkpoint at the next optimizer-step boundary and a clean exit.

SLURM sends SIGTERM (or the `--signal` of the job, often SIGUSR1) before it kills a job; the launcher
(`novograd.engine.launcher`, torchrun underneath) forwards both to its workers. The handler only sets a flag:
checkpointing inside a signal handler could interrupt a collective or a half-written step. Ranks agree on stopping
through the trainer's vote (`distributed.DeferredVote`): cast at one step boundary, read at the next, so every rank
stops after the same step, at most two steps after the signal.

When the signal had a Python handler before (submitit's, which requeues a SLURM job under `launcher=slurm`),
`hand_on_signal` delivers the signal to it once the run has ended: after the checkpoint, the last metrics and the
W&B run are written, because submitit's handler requeues the job (SLURM then ends this one) and exits.
How each launch path ends after a preemption: docs/preemption.md.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Ctrl-C stops like a preemption (at the next step boundary, with a checkpoint); a second one aborts at once.
STOP_SIGNALS = (*PREEMPTION_SIGNALS, signal.SIGINT)

# Set by `novograd.engine.launcher` for its workers: where local rank 0 records how the run ended, so that the
# launcher can tell a run that checkpointed after the signal from one that was killed.
OUTCOME_FILE_ENV = "NOVOGRAD_RUN_OUTCOME_FILE"


class PreemptionFlag:
    """Context manager that turns stop signals into `requested = True` and restores the old handlers. A second
    SIGINT raises KeyboardInterrupt: Ctrl-C twice aborts without waiting for the step boundary."""

    def __init__(self) -> None:
        self.signal_number = 0  # of the last preemption signal received; 0: none

    @property
    def requested(self) -> bool:
        return self.signal_number != 0

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self.signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            if os.environ.get("RANK", "0") == "0":  # os.write: logging is not safe inside a signal handler
                os.write(2, b"Ctrl-C: stopping after the next step, with a checkpoint (Ctrl-C again aborts now).\n")
        self.signal_number = signum

    def __enter__(self) -> PreemptionFlag:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def resume_instructions(stop_reason: str, step: int, total_steps: int, checkpoint: Path) -> str:
    """What to run next after a stop. The same command finds the same output directory (its name leaves
    `trainer.stop_at_step` out), but a planned stop would stop again at once if repeated."""
    if stop_reason.startswith("trainer.stop_at_step"):
        how = "re-run the command without trainer.stop_at_step (or with a later step)"
    else:
        how = "re-run the same command"
    return f"Stopped by {stop_reason} at step {step}/{total_steps}; checkpoint {checkpoint}. To resume, {how}."


def record_outcome(summary: dict[str, Any]) -> None:
    """On local rank 0 of a launcher's workers: write how the run ended (finished, or stopped with a checkpoint)."""
    path = os.environ.get(OUTCOME_FILE_ENV)
    if not path or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    outcome = {key: summary.get(key) for key in ("steps", "preempted", "stop_reason", "output_dir", "diverged")}
    Path(path).write_text(json.dumps(outcome) + "\n")


def hand_on_signal(summary: dict[str, Any]) -> None:
    """After a run stopped by a signal: deliver it to the Python handler that was installed before the run's."""
    name = summary.get("stop_reason", "")
    if name not in {sig.name for sig in PREEMPTION_SIGNALS}:
        return
    sig = signal.Signals[name]
    if callable(signal.getsignal(sig)):
        signal.raise_signal(sig)
