"""data/progress.py, the progress report of every prepare step: lines at the interval with counts and rates when
stderr is no terminal, a bar only on one, nothing at all for a quiet log, and the end-of-step summary."""

from __future__ import annotations

import sys

import pytest

import data.progress
from data.progress import Progress, format_duration, quiet


@pytest.fixture
def clock(monkeypatch):
    """Make time.monotonic in data.progress return the given readings, one per call."""

    def set_readings(*readings: float) -> None:
        values = iter(readings)
        monkeypatch.setattr(data.progress.time, "monotonic", lambda: next(values))

    return set_readings


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)


def test_a_line_per_interval_with_files_bytes_and_rate(clock, no_terminal):
    clock(0.0, 30.0, 61.0, 62.0, 125.0)  # the start, then one reading per update
    lines: list[str] = []
    progress = Progress("x: extracting", lines.append, unit="B", files=True, interval=60.0)
    for _ in range(4):
        progress.update(2_000_000, files=1)
    assert progress.bar is None
    assert lines == ["x: extracting: 2 files, 4 MB (0.1 MB/s, 1 min 1 s)",
                     "x: extracting: 4 files, 8 MB (0.1 MB/s, 2 min 5 s)"]


def test_counted_items_of_a_known_total_and_the_default_interval(clock, no_terminal, monkeypatch):
    monkeypatch.setattr(data.progress, "INTERVAL_S", 0.0)  # the knob the prepare tests turn: a line per update
    clock(0.0, 0.5, 1.0, 1.5)
    lines: list[str] = []
    progress = Progress("train: pairs encoded", lines.append, total=3)
    assert list(progress.counted("abc")) == ["a", "b", "c"]
    assert lines == ["train: pairs encoded: 1 of 3 (2/s, 0 s)", "train: pairs encoded: 2 of 3 (2/s, 1 s)",
                     "train: pairs encoded: 3 of 3 (2/s, 1 s)"]
    assert progress.count == 3


def test_a_bar_only_on_a_terminal_and_never_for_a_quiet_log(monkeypatch, capsys):
    lines: list[str] = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    on_terminal = Progress("counting", lines.append, unit="B", interval=0.0)
    assert on_terminal.bar is not None  # the control: the same Progress as below, on a terminal
    on_terminal.update(10)
    on_terminal.close()
    assert lines == [] and on_terminal.bar is None  # the bar, not lines; closed
    silent = Progress("counting", quiet, unit="B", interval=0.0)
    silent.update(10)
    assert silent.bar is None and silent.close().startswith("0 MB")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert Progress("counting", lines.append).bar is None
    assert Progress("counting", lines.append, bar=False).bar is None


def test_summary_after_the_context_manager(clock, no_terminal):
    clock(0.0, 1.0, 2.0, 100.0, 125.0)  # start, two updates, closing, the summary
    lines: list[str] = []
    with Progress("train: indexing", lines.append, unit="B", files=True, total=5_000_000) as progress:
        progress.update(1_500_000, files=1)
        progress.update(1_500_000, files=1)
    assert lines == []  # the interval (60 s) was never reached
    assert progress.summary() == "2 files, 3 of 5 MB (0.0 MB/s, 2 min 5 s)"


def test_durations_read_as_minutes_and_seconds():
    assert [format_duration(s) for s in (0.4, 59.9, 60.0, 3725.0)] == ["0 s", "59 s", "1 min 0 s", "62 min 5 s"]
