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

A run sharded by FSDP2 (`trainer.parallelism=fsdp`, parallel.py) keeps its model and optimizer state out of that
file: every rank writes its own shards through `torch.distributed.checkpoint` (DCP) into a directory
`shards_<step>` (written as a temporary directory, renamed once every rank has finished and fsynced), and the file,
written after it as above, names that directory under `SHARDS`. The file stays the one point of commit: a kill
before its rename leaves the previous file naming the previous, complete directory. Directories no kept file names
are pruned. DCP stores each tensor by its fully qualified name and global shape, so another number of ranks loads
it by resharding, and `consolidated` turns it into one plain state dict.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from novograd.engine.batches import tensors_in
from novograd.engine.distributed import barrier

LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
SHARDS = "shards"  # the key naming a sharded checkpoint's directory of DCP shards (model and optimizer)
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_SHARDS_DIRECTORY = re.compile(r"^shards_\d+$")
# `.last.pt.tmp<pid>`, `.shards_<step>.tmp`: what a save writes before its rename
_TEMPORARY_FILE = re.compile(r"^\..+\.tmp\d*$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


class CheckpointSpaceError(OSError):
    """The disk holding the checkpoints is full (or over quota); the message says what to free."""


class CheckpointUnreadableError(RuntimeError):
    """Neither `last.pt` nor `previous.pt` of a run could be read."""


class CheckpointWrongLayoutError(RuntimeError):
    """A checkpoint is sharded where the run is not, or the other way round."""


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
    # torch.save reports a failed write of its zip writer as a RuntimeError that names no errno; DCP gathers every
    # rank's failure into one CheckpointException whose message holds theirs.
    return getattr(error, "errno", None) in _NO_SPACE or "No space left on device" in str(error)


def _space_error(path: Path, needed: int) -> CheckpointSpaceError:
    free = shutil.disk_usage(path.parent).free
    return CheckpointSpaceError(
        errno.ENOSPC,
        f"No space left to write {path.name} in {path.parent}: a checkpoint needs about {needed:,} bytes and "
        f"{free:,} are free. The checkpoints already there are intact. Free some space (or move "
        "trainer.output_dir to a larger disk), then re-run the same command to resume from the last checkpoint.",
    )


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
            raise _space_error(path, _tensor_bytes(obj)) from error
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


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file's state (`mmap`: its tensors read only when touched)."""
    # weights_only=False: the file holds numpy and python generator states; it is this run's own output.
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def save_shards(shards: dict[str, Any], directory: Path, is_main: bool) -> None:
    """Every rank writes its shards of `shards` (DTensors, and plain tensors one rank writes) into `directory`
    through DCP, by way of a temporary directory renamed once all ranks have written and fsynced theirs. A
    collective: call on every rank. A full disk raises CheckpointSpaceError on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    tmp = directory.with_name(f".{directory.name}.tmp")  # the same name on every rank, which DCP creates
    try:
        dcp.save(shards, checkpoint_id=tmp)  # FileSystemWriter fsyncs each file it writes
    except (Exception, CheckpointException) as error:  # every rank gets every rank's failure in one (a BaseException)
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_no_space(error):
            raise _space_error(directory, _tensor_bytes(shards) * dist.get_world_size()) from error
        raise
    if is_main:
        _fsync_directory(tmp)
        if directory.exists():  # the same step saved again: until the rename, the file names a missing directory
            shutil.rmtree(directory)  # and a resume falls back to previous.pt
        os.replace(tmp, directory)
        _fsync_directory(directory.parent)
    barrier()  # renamed before rank 0 writes the file that names it, and before any rank goes on


def load_shards(shards: dict[str, Any], directory: Path) -> None:
    """Fill `shards` (the state dict this rank's model and optimizer make, sharded for this run's ranks) from
    `directory`, resharding as needed. A collective; an unreadable shard raises on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    if not (directory / ".metadata").is_file():
        raise FileNotFoundError(f"{directory} is not a complete sharded checkpoint (no .metadata)")
    try:
        dcp.load(shards, checkpoint_id=directory)
    except CheckpointException as error:  # a BaseException: as an error, so that a resume can fall back
        raise RuntimeError(f"the shards in {directory} cannot be read: {error}") from None


def consolidated(path: Path) -> dict[str, Any]:
    """The checkpoint at `path` as one plain state, whatever wrote it: a sharded checkpoint's model and optimizer
    states gathered from its DCP directory into full tensors (no process group needed), under the keys a
    checkpoint of a DDP run has. `model` loads into the bare model with `load_state_dict`."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state = load_checkpoint(path)
    if SHARDS not in state:
        return state
    shards = path.parent / state.pop(SHARDS)
    gathered = path.parent / f".{shards.name}.consolidated.tmp{os.getpid()}"
    try:
        dcp_to_torch_save(shards, gathered)
        state |= torch.load(gathered, map_location="cpu", weights_only=False)
    finally:
        gathered.unlink(missing_ok=True)
    return state



class CheckpointManager:
    """Writes and finds the checkpoints of one output directory; `save` and `load_last` on every rank."""

    def __init__(self, directory: Path, keep_last_k: int, is_main: bool = True) -> None:
        if keep_last_k < 0:
            raise ValueError(f"trainer.keep_last_k must be >= 0, got {keep_last_k}.")
        self.directory = directory
        self.keep_last_k = keep_last_k
        self.is_main = is_main  # rank 0 writes the files; every rank writes its shards
        # The newest readable checkpoint this process wrote or read, and its step: last.pt, or previous.pt when
        # last.pt was damaged; None before either.
        self.latest: tuple[Path, int] | None = None
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries of saves that were killed before their rename (each as large as a checkpoint).

        Safe at construction: no rank saves before the trainer's first collective, which every rank reaches only
        after building its CheckpointManager."""
        if not (self.is_main and self.directory.is_dir()):
            return
        for stale in self.directory.iterdir():
            if _TEMPORARY_FILE.match(stale.name):
                log.info("Removing %s, left by an interrupted checkpoint save.", stale)
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    @property
    def previous_path(self) -> Path:
        return self.directory / PREVIOUS

    def save(self, state: dict[str, Any], step: int, is_best: bool, shards: dict[str, Any] | None = None) -> Path:
        """Write `state` as `last.pt`, keeping the checkpoint it replaces as `previous.pt`; link it as `best.pt`
        and `step_<step>.pt` when asked; prune old steps. `shards`: a sharded model's and optimizer's state, which
        every rank writes first (`save_shards`) and `state` names."""
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
        if shards is not None:
            name = f"shards_{step:08d}"
            save_shards(shards, self.directory / name, self.is_main)
            state = {**state, SHARDS: name}
        if self.is_main:
            self._save_file(state, step, is_best)
        return self.last_path

    def _save_file(self, state: dict[str, Any], step: int, is_best: bool) -> None:
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
        if SHARDS in state:
            self._prune_shards()

    def _prune(self) -> None:
        steps = sorted(p for p in self.directory.iterdir() if _STEP_FILE.match(p.name))
        for old in steps[: -self.keep_last_k]:
            old.unlink()

    def _prune_shards(self) -> None:
        """Remove the shard directories no kept checkpoint file names (each file read without its tensors)."""
        named = {load_checkpoint(file, mmap=True).get(SHARDS) for file in self.directory.glob("*.pt")}
        for directory in self.directory.iterdir():
            if _SHARDS_DIRECTORY.match(directory.name) and directory.name not in named:
                shutil.rmtree(directory)

    def load_last(self, load_sharded: Callable[[Path], None] | None = None) -> dict[str, Any] | None:
        """The state of `last.pt`, or of `previous.pt` when `last.pt` cannot be read (with a warning naming both
        and their steps), or None when there is no checkpoint (a fresh run). A sharded checkpoint's shards are
        loaded by `load_sharded(directory)` (a collective) and count as part of the file: damaged shards fall back
        the same way."""
        self.latest = None
        if not self.last_path.exists():
            return None
        try:
            state = self._read(self.last_path, load_sharded)
        except CheckpointWrongLayoutError:
            raise
        except Exception as damage:  # torch.load's errors for a damaged file range from EOFError to RuntimeError
            if not self.previous_path.exists():
                raise CheckpointUnreadableError(
                    f"{self.last_path} cannot be read ({type(damage).__name__}: {damage}) and there is no "
                    f"{PREVIOUS} to fall back to. Move the file away to start the run afresh, or give another "
                    "trainer.output_dir."
                ) from damage
            try:
                state = self._read(self.previous_path, load_sharded)
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

    def _read(self, path: Path, load_sharded: Callable[[Path], None] | None) -> dict[str, Any]:
        state = load_checkpoint(path)
        if SHARDS in state:
            if load_sharded is None:
                raise CheckpointWrongLayoutError(
                    f"{path} was written by a sharded run (trainer.parallelism=fsdp): resume it with that setting, "
                    "or export a plain state dict with `python -m novograd.export_checkpoint`.")
            load_sharded(self.directory / state[SHARDS])
        elif load_sharded is not None:
            raise CheckpointWrongLayoutError(
                f"{path} was written by an unsharded run (trainer.parallelism=ddp): resume it with that setting.")
        return state
