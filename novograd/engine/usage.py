"""What a run cost the host: peak resident memory (`resource.getrusage`) and wall seconds, printed at its end by a
Hydra callback (configs/debug/fullsize.yaml installs it)."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

from hydra.experimental.callback import Callback


def peak_host_memory_bytes() -> int:
    """The largest resident set this process has had so far (ru_maxrss: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class ReportHostUsage(Callback):
    """Prints the job's wall seconds and the process's peak host memory when the job ends."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        seconds = time.perf_counter() - self._start
        print(f"host usage: {seconds:.1f} s, peak host memory {peak_host_memory_bytes() / 2**30:.2f} GiB "
              "(ru_maxrss of this process)", flush=True)
