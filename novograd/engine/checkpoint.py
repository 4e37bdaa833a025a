"""Checkpoints: `last.pt`, the one before it (`previous.pt`), `best.pt` and the last k step checkpoints.

A checkpoint is one file holding everything a resumed run needs to continue bit-for-bit: model, optimizer,
scheduler and loss-scaler states, the position (step, epoch, step within the epoch), every rank's generator
states (gathered to rank 0, so one file is the whole truth and a preemption can never leave per-rank files out of
step), best metrics and the W&B run id.

What a save survives:
- a kill during the save: the state goes to a temporary file that is renamed over `last.pt` only once complete;
- a power loss after the save: the temporary file is fsynced before the rename and the directory after it, so the
  rename never reaches the disk ahead of the data (a rename alone can, and leave a truncated `last.pt`);
- damage found later (a truncated or unreadable `last.pt`): the previous checkpoint is kept as `previous.pt`
  until the next one is durable, and `load_last` falls back to it, naming both files and their steps;
- a full disk: `CheckpointSpaceError` names the directory, the bytes needed and free; the temporary file is
  removed and the previous checkpoints are untouched.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from novograd.engine.batches import tensors_in

LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_TEMPORARY_FILE = re.compile(r"^\..+\.tmp\d+$")  # `.last.pt.tmp<pid>`: what `atomic_save` writes before the rename
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


class CheckpointSpaceError(OSError):
    """The disk holding the checkpoints is full (or over quota); the message says what to free."""


class CheckpointUnreadableError(RuntimeError):
    """Neither `last.pt` nor `previous.pt` of a run could be read."""


def _fsync_directory(directory: Path) -> None:
    """Make the renames and links in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tensor_bytes(state: Any) -> int:
    """Bytes of the tensors of `state` (what a checkpoint of it needs on disk, to within its metadata)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors_in(state))


def _is_no_space(error: BaseException) -> bool:
    # torch.save reports a failed write of its zip writer as a RuntimeError that names no errno.
    return getattr(error, "errno", None) in _NO_SPACE or "No space left on device" in str(error)


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file in the same directory, fsync, rename, fsync the directory: readers never
    see a partial file, and after a power loss the file is either the old one or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        if _is_no_space(error):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointSpaceError(
                errno.ENOSPC,
                f"No space left to write {path.name} in {path.parent}: a checkpoint needs about "
                f"{_tensor_bytes(obj):,} bytes and {free:,} are free. The checkpoints already there are intact. "
                "Free some space (or move trainer.output_dir to a larger disk), then re-run the same command to "
                "resume from the last checkpoint.",
            ) from error
        raise
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _atomic_link(source: Path, target: Path) -> None:
    """`target` becomes the same file as `source` (a hard link, or a copy where links are not supported)."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: the file holds numpy and python generator states; it is this run's own output.
    return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointManager:
    """Writes and finds the checkpoints of one output directory (call `save` on rank 0 only)."""

    def __init__(self, directory: Path, keep_last_k: int) -> None:
        if keep_last_k < 0:
            raise ValueError(f"trainer.keep_last_k must be >= 0, got {keep_last_k}.")
        self.directory = directory
        self.keep_last_k = keep_last_k
        # The newest readable checkpoint this process wrote or read, and its step: last.pt, or previous.pt when
        # last.pt was damaged; None before either.
        self.latest: tuple[Path, int] | None = None
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

    @property
    def previous_path(self) -> Path:
        return self.directory / PREVIOUS

    def save(self, state: dict[str, Any], step: int, is_best: bool) -> Path:
        """Write `state` as `last.pt`, keeping the checkpoint it replaces as `previous.pt`; link it as `best.pt`
        and `step_<step>.pt` when asked; prune old steps."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # Only a last.pt known to be good, of another step, becomes previous.pt: not a damaged one a resume fell back
        # from, not one of an earlier run started afresh, not the same step saved twice. Linked before the new file
        # exists, so a failed save leaves last.pt as it was and a successful one leaves both.
        if self.latest is not None and self.latest[0] == self.last_path and self.latest[1] != step:
            _atomic_link(self.last_path, self.previous_path)
        atomic_save(state, self.last_path)
        self.latest = (self.last_path, step)
        if is_best:
            _atomic_link(self.last_path, self.directory / BEST)
        if self.keep_last_k:
            _atomic_link(self.last_path, self.directory / f"step_{step:08d}.pt")
            self._prune()
        if is_best or self.keep_last_k:
            _fsync_directory(self.directory)  # the links (atomic_save made last.pt's rename durable)
        return self.last_path

    def _prune(self) -> None:
        steps = sorted(p for p in self.directory.iterdir() if _STEP_FILE.match(p.name))
        for old in steps[: -self.keep_last_k]:
            old.unlink()

    def load_last(self) -> dict[str, Any] | None:
        """The state of `last.pt`, or of `previous.pt` when `last.pt` cannot be read (with a warning naming both
        and their steps), or None when there is no checkpoint (a fresh run)."""
        self.latest = None
        if not self.last_path.exists():
            return None
        try:
            state = load_checkpoint(self.last_path)
        except Exception as damage:  # torch.load's errors for a damaged file range from EOFError to RuntimeError
            if not self.previous_path.exists():
                raise CheckpointUnreadableError(
                    f"{self.last_path} cannot be read ({type(damage).__name__}: {damage}) and there is no "
                    f"{PREVIOUS} to fall back to. Move the file away to start the run afresh, or give another "
                    "trainer.output_dir."
                ) from damage
            try:
                state = load_checkpoint(self.previous_path)
            except Exception as second:
                raise CheckpointUnreadableError(
                    f"Neither {self.last_path} ({type(damage).__name__}: {damage}) nor {self.previous_path} "
                    f"({type(second).__name__}: {second}) can be read. Move them away to start the run afresh, "
                    "or give another trainer.output_dir."
                ) from second
            log.warning(
                "%s is damaged (%s: %s); resuming from %s (step %d) instead, so the steps after it are trained "
                "again, exactly as before.", self.last_path, type(damage).__name__, damage, self.previous_path,
                state["progress"]["step"],
            )
            self.latest = (self.previous_path, state["progress"]["step"])
            return state
        self.latest = (self.last_path, state["progress"]["step"])
        return state
