"""Checkpoints: `last.pt`, `best.pt` and the last k step checkpoints, written atomically.

A checkpoint is one file holding everything a resumed run needs to continue bit-for-bit: model, optimizer,
scheduler and loss-scaler states, the position (step, epoch, step within the epoch), every rank's generator
states (gathered to rank 0, so one file is the whole truth and a preemption can never leave per-rank files out of
step), best metrics and the W&B run id.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_TEMPORARY_FILE = re.compile(r"^\..+\.tmp\d+$")  # `.last.pt.tmp<pid>`: what `atomic_save` writes before the rename

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file in the same directory, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_link(source: Path, target: Path) -> None:
    """`target` becomes the same file as `source` (a hard link, or a copy where links are not supported)."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        import shutil

        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class CheckpointManager:
    """Writes and finds the checkpoints of one output directory (call `save` on rank 0 only)."""

    def __init__(self, directory: Path, keep_last_k: int) -> None:
        if keep_last_k < 0:
            raise ValueError(f"trainer.keep_last_k must be >= 0, got {keep_last_k}.")
        self.directory = directory
        self.keep_last_k = keep_last_k
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries of saves that were killed before their rename (each as large as a checkpoint).

        Safe at construction: no rank saves before the trainer's first collective, which every rank reaches only
        after building its CheckpointManager."""
        if not self.directory.is_dir():
            return
        for stale in self.directory.iterdir():
            if _TEMPORARY_FILE.match(stale.name):
                log.info("Removing %s, left by an interrupted checkpoint save.", stale)
                stale.unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    def save(self, state: dict[str, Any], step: int, is_best: bool) -> Path:
        """Write `state` as `last.pt`; link it as `best.pt` and `step_<step>.pt` when asked; prune old steps."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_save(state, self.last_path)
        if is_best:
            _atomic_link(self.last_path, self.directory / BEST)
        if self.keep_last_k:
            _atomic_link(self.last_path, self.directory / f"step_{step:08d}.pt")
            self._prune()
        return self.last_path

    def _prune(self) -> None:
        steps = sorted(p for p in self.directory.iterdir() if _STEP_FILE.match(p.name))
        for old in steps[: -self.keep_last_k]:
            old.unlink()

    def load_last(self) -> dict[str, Any] | None:
        """The state of `last.pt`, or None when there is none (a fresh run)."""
        if not self.last_path.exists():
            return None
        # weights_only=False: the file holds numpy and python generator states; it is this run's own output.
        return torch.load(self.last_path, map_location="cpu", weights_only=False)
