"""The run's output directory: named by what is trained, usable before anything heavy starts, never left empty.

The default directory is `results/runs/<experiment>/<settings>` (configs/config.yaml), where `<settings>` is the
command line's training overrides (`run_directory`): the same command, after a crash, a preemption or a requeue,
finds the same directory and resumes it; another training setting, a seed or a `run_name` gets a directory of its
own. Keys that do not change what is trained (`RESUME_MAY_CHANGE`: logging, evaluation and checkpoint frequency,
workers, `stop_at_step`, paths, the logger) are left out of the name, so the command that resumes a run may change
them: the directory name and the resume check read the same list.

Building the datasets can take minutes (scanning ImageNet's 1.28M files), so a directory that cannot be written
must be found out first, with an error that names `trainer.output_dir`, not an errno at the first checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from novograd.engine.run_config import RESUME_MAY_CHANGE, is_covered

# Overrides left out of the directory name: bookkeeping (what a resume may change), and the choices that are not
# settings of the run: the experiment (it is the directory above) and the launcher (how the job is submitted).
NOT_IN_DIRECTORY_NAME = (*RESUME_MAY_CHANGE, "experiment", "launcher")
NO_EXPERIMENT = "no_experiment"  # the directory of runs that choose no experiment (`debug=regression`)
NO_SETTINGS = "default"  # the directory of a row run as it is: no training override on the command line
MAX_NAME_LENGTH = 120  # characters of `<settings>`; longer lists are cut and made unique by a hash
_SAFE = "=,.+-_[]:@~"  # kept as they are in a name (beside letters and digits); the rest is %-escaped


def settings_name(overrides: Iterable[str]) -> str:
    """The directory name of a run's command-line overrides: the training ones (not `NOT_IN_DIRECTORY_NAME`),
    sorted (their order on the command line does not matter), joined by `,`, as Hydra's `override_dirname`;
    `default` when there are none. `/`, spaces and quotes are %-escaped, so distinct overrides give distinct
    names; a name longer than `MAX_NAME_LENGTH` keeps its first whole overrides and ends with a hash of all."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    kept = sorted(o.input_line for o in parsed if not is_covered(o.key_or_group, NOT_IN_DIRECTORY_NAME))
    if not kept:
        return NO_SETTINGS
    items = [urllib.parse.quote(line, safe=_SAFE) for line in kept]
    name = ",".join(items)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha1("\n".join(kept).encode()).hexdigest()[:10]
    head: list[str] = []
    for item in items:  # as many whole overrides as fit beside the suffix that counts the others
        if len(",".join([*head, item, f"+{len(items) - len(head) - 1}_more-{digest}"])) > MAX_NAME_LENGTH:
            break
        head.append(item)
    return ",".join([*head, f"+{len(items) - len(head)}_more-{digest}"])


def run_directory(experiment: str | None, overrides: Iterable[str]) -> str:
    """`<experiment>/<settings>` (relative to `results/runs/`): a pure function of the command line."""
    return f"{experiment or NO_EXPERIMENT}/{settings_name(overrides)}"


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


@contextmanager
def no_empty_directories_left(paths: Iterable[Path]) -> Iterator[None]:
    """Whatever happens inside (a finished run, a stop, an exception before or during training), remove each of
    `paths` that is left empty: Hydra creates the run directory before the run starts, and a run that failed
    before writing anything, or that was told to write elsewhere (`trainer.output_dir`), must not leave it behind.
    Empty parents go too, up to the working directory (`results/runs/<experiment>/`)."""
    try:
        yield
    finally:
        cwd = Path.cwd()
        for path in dict.fromkeys(Path(p).absolute() for p in paths):
            remove_empty_directories(path, stop_at=cwd if path.is_relative_to(cwd) else path.parent)


def remove_empty_directories(path: Path, stop_at: Path) -> None:
    """Remove `path` and then each parent below `stop_at` as long as they are empty (Hydra's unused run folder)."""
    path, stop_at = path.absolute(), stop_at.absolute()
    while path != stop_at and path.is_relative_to(stop_at):
        try:
            path.rmdir()  # only succeeds on an empty directory
        except OSError:  # not empty, already gone (another rank), or not ours to remove
            return
        path = path.parent
