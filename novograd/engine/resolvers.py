"""The OmegaConf resolvers `configs/config.yaml` uses, registered on import of `novograd.engine`.

- `run_directory`: the default output directory's `<experiment>/<settings>` (novograd/engine/output_dir.py), from
  Hydra's experiment choice and the command line's overrides (`hydra.overrides.task`, per job in a `-m` sweep);
- `rank_log_level`: INFO on rank 0 (or alone), WARNING on the other ranks, for Hydra's logging configs: under
  torchrun every rank runs Hydra, and only one should print its lines and the run's header.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from novograd.engine.output_dir import run_directory


def process_rank() -> int:
    """This process's rank as torchrun (RANK) or SLURM (SLURM_PROCID, launcher=slurm) set it; 0 alone."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def rank_log_level() -> str:
    return "INFO" if process_rank() == 0 else "WARNING"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("run_directory", run_directory, replace=True)
    OmegaConf.register_new_resolver("rank_log_level", rank_log_level, replace=True)
