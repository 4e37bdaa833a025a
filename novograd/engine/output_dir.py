"""The run's output directory: usable before anything heavy starts, and no empty directories left behind.

Building the datasets can take minutes (scanning ImageNet's 1.28M files), so a directory that cannot be written
must be found out first, with an error that names `trainer.output_dir`, not an errno at the first checkpoint.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def ensure_writable_output_dir(path: Path) -> None:
    """Create `path` if needed and write (then remove) a small file in it; a clear error when that fails."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"trainer.output_dir={path} is a file, not a directory: choose another trainer.output_dir.")
    probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"  # one per rank: ranks may share the dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename and Path(error.filename) != path else ""
        raise ValueError(
            f"trainer.output_dir={path} cannot be written: {reason}{where}. Choose a directory this process can "
            f"create and write, e.g. trainer.output_dir=results/runs/<name>."
        ) from error


def remove_empty_directories(path: Path, stop_at: Path) -> None:
    """Remove `path` and then each parent below `stop_at` as long as they are empty (Hydra's unused run folder)."""
    path, stop_at = path.absolute(), stop_at.absolute()
    while path != stop_at and path.is_relative_to(stop_at):
        try:
            path.rmdir()  # only succeeds on an empty directory
        except OSError:  # not empty, already gone (another rank), or not ours to remove
            return
        path = path.parent
