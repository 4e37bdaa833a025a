"""Progress of a long prepare step (reading a 515 MB text, extracting a 6 GB archive, training a BPE): a tqdm bar
when stderr is a terminal, otherwise a `log` line at most every `INTERVAL_S` seconds, so a batch log shows the step
is alive, and a summary at the end.

    with Progress("train: extracting", unit="B", files=True) as progress:
        for member in archive:
            progress.update(member.size, files=1)
    print(f"train: extracted {progress.summary()}")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

#: Seconds between two progress lines when stderr is not a terminal (a log file, a batch job). Read when a
#: `Progress` starts, so a test may patch it.
INTERVAL_S = 60.0

Item = TypeVar("Item")


def quiet(message: str) -> None:
    """A `log` that says nothing; a `Progress` logging to it shows no bar either (the synthetic twins)."""


def _print(message: str) -> None:
    print(message, flush=True)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class Progress:
    """Counts what a long step has done: items, or bytes (`unit="B"`), optionally with the number of files.

    Args:
        description: starts every line, e.g. "train: pairs encoded".
        log: where the lines go (`quiet`: nowhere, and no bar).
        total: the amount expected, when known ("120 of 515 MB").
        unit: "B" counts bytes, shown in MB; anything else counts items.
        files: also count and show files (`update(..., files=1)`).
        bar: a tqdm bar instead of lines; by default when stderr is a terminal.
        interval: seconds between two lines; by default `INTERVAL_S`.
    """

    def __init__(
        self,
        description: str,
        log: Callable[[str], None] = _print,
        *,
        total: int | None = None,
        unit: str = "items",
        files: bool = False,
        bar: bool | None = None,
        interval: float | None = None,
    ) -> None:
        self.description, self.log, self.total, self.unit, self.show_files = description, log, total, unit, files
        self.interval = INTERVAL_S if interval is None else interval
        self.count = self.files = 0
        self.start = self.last_line = time.monotonic()
        self.bar = None
        if log is not quiet and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm  # only here: a log-only run never needs it

            self.bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", dynamic_ncols=True)

    def update(self, amount: int = 1, files: int = 0) -> None:
        self.count += amount
        self.files += files
        if self.bar is not None:
            self.bar.update(amount)
            if self.show_files:
                self.bar.set_postfix(files=self.files, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval and self.log is not quiet:
            self.last_line = now
            self.log(f"{self.description}: {self.summary(now)}")

    def counted(self, items: Iterable[Item]) -> Iterator[Item]:
        """`items`, each counted as it passes (for a library that consumes an iterator and reports nothing)."""
        for item in items:
            self.update()
            yield item

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def summary(self, now: float | None = None) -> str:
        """What was done and how fast: "3 files, 120 of 515 MB (4.2 MB/s, 28 s)", "12,000 (400/s, 30 s)"."""
        seconds = (time.monotonic() if now is None else now) - self.start
        rate = self.count / max(seconds, 1e-9)
        if self.unit == "B":
            done, rate_text = f"{self.count / 1e6:,.0f}", f"{rate / 1e6:,.1f} MB/s"
            total = f" of {self.total / 1e6:,.0f}" if self.total is not None else ""
            amount = f"{done}{total} MB"
        else:
            amount = f"{self.count:,}" + (f" of {self.total:,}" if self.total is not None else "")
            rate_text = f"{rate:,.0f}/s"
        files = f"{self.files:,} files, " if self.show_files else ""
        return f"{files}{amount} ({rate_text}, {format_duration(seconds)})"

    def close(self) -> str:
        """Close the bar; the summary."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return self.summary()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
