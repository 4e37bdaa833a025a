"""Reading per-example data files under `data.skip_corrupt`: an unreadable file stops the run with its name, or is
replaced, flagged and counted.

The image and audio datasets decode one file per example, and one bad file among a million must not end a 100-epoch
run unless the user wants it to. With skipping off, the dataset's own error (an `UnreadableFileError` that names the
file and what to do) propagates. With skipping on, `SkipPolicy.read` returns the next readable example in its place,
flagged `skipped`: the flag travels through collate, so training keeps its batch (and the plan's normalising count)
exact while the workload counts the substitutions, and evaluation leaves the flagged examples unscored, so no example
is scored twice. The engine records both counts (`skipped_train`, `skipped_<set>`).

This module imports nothing of the project: both `data/imagenet.py` and `data/librispeech.py` build on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

Sample = TypeVar("Sample")


class UnreadableFileError(OSError):
    """A data file that cannot be decoded; the message names the file and says what to do.

    Takes a single message argument so that a DataLoader worker can re-raise it in the main process as itself.
    """


class CorruptFileWarning(UserWarning):
    """An unreadable file was skipped (`data.skip_corrupt=true`); the message names it."""


class SkipPolicy:
    """Which examples of a dataset of `size` examples were found unreadable, and what to read instead.

    The flags live in a shared-memory tensor that DataLoader workers (forked or spawned) write into, so a file found
    unreadable by one worker is not decoded again by any process, and its warning is given once.
    """

    def __init__(self, size: int, skip: bool) -> None:
        self.skip = skip
        self._unreadable = torch.zeros(size, dtype=torch.bool).share_memory_()

    def read(self, index: int, read: Callable[[int], Sample]) -> tuple[Sample, bool]:
        """`(read(index), False)`; or, when skipping and `index` is unreadable, the next readable example (wrapping
        around) and True. Without skipping, `read`'s `UnreadableFileError` propagates."""
        if not self.skip:
            return read(index), False
        size = len(self._unreadable)
        for offset in range(size):
            candidate = (index + offset) % size
            if self._unreadable[candidate]:
                continue
            try:
                return read(candidate), offset > 0
            except UnreadableFileError as error:
                self._unreadable[candidate] = True
                warnings.warn(f"skipping an unreadable file (data.skip_corrupt=true): {error}", CorruptFileWarning,
                              stacklevel=2)
        raise UnreadableFileError(f"no readable example among all {size}: every file failed to decode")

    @property
    def unreadable_indices(self) -> list[int]:
        """Indices found unreadable so far, in this process and its DataLoader workers."""
        return torch.nonzero(self._unreadable).flatten().tolist()
