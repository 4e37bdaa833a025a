"""Generated datasets cached on disk: one folder per set of generation parameters, written atomically.

The synthetic twins of every dataset are made on the fly by tests, smoke and learn runs, often by several ranks or
test processes at once. Each is written into a private staging folder and renamed into place, so no reader ever
sees a half-written dataset and a concurrent writer that loses the race just uses the winner's copy; the folder's
name hashes the parameters (with a format version), so a change of either never reuses a stale copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def cached_directory(
    name: str, params: Mapping[str, Any], write: Callable[[Path], None], directory: str | os.PathLike[str] | None,
    prefix: str = "",
) -> Path:
    """`<directory>/<prefix><hash of params>`, made by `write(staging_folder)` unless it exists already.

    `directory` defaults to `$TMPDIR/novograd-synthetic-<name>`; `params.json` records what the folder holds.
    """
    key = prefix + hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:16]
    base = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / f"novograd-synthetic-{name}"
    root = base / key
    if (root / "params.json").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{key}.{os.getpid()}.{uuid.uuid4().hex}"
    try:
        write(staging)
        (staging / "params.json").write_text(json.dumps(dict(params), indent=2))  # written last: marks it complete
        try:
            staging.rename(root)
        except OSError:
            if not (root / "params.json").is_file():  # not a lost race with another writer: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
