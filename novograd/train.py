"""The Hydra entry point: `python -m novograd.train experiment=table1/novograd_100ep [key=value ...]`.

Launch several processes with torchrun (`torchrun --nproc-per-node=8 -m novograd.train ...`); one process works
without it. Nothing heavy is imported before Hydra has composed the config, so `--cfg job` and `--help` are quick.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")  # the repository's configs/

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Any:
    """Train the configured experiment; returns the summary's primary metric so Hydra sweepers can optimise it."""
    from novograd.engine import run

    summary = run(cfg)
    return summary


if __name__ == "__main__":
    main()
