"""Preemption: SIGTERM or SIGUSR1 asks for a checkpoint at the next optimizer-step boundary and a clean exit.

SLURM sends SIGTERM (or the `--signal` of the job, often SIGUSR1) before it kills a job; torchrun forwards
SIGTERM to its workers. The handler only sets a flag: checkpointing inside a signal handler could interrupt a
collective or a half-written step. Ranks agree on stopping through the per-step all-reduce of the trainer.

When the signal had a Python handler before (submitit's, which requeues a SLURM job under
`launcher=slurm`), the signal is delivered to it again on leaving the context, after the checkpoint is written,
so the job is requeued and resumes from it.
"""

from __future__ import annotations

import signal
from types import FrameType

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Context manager that turns preemption signals into `requested = True` and restores the old handlers."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}
        self._received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._received = signum

    def __enter__(self) -> PreemptionFlag:
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._received is not None and callable(self._previous[self._received]):
            signal.raise_signal(self._received)
