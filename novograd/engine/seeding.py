"""One `seed` for everything: model initialisation, per-rank randomness, per-sample data augmentation.

* The model is initialised from `seed` alone, so every rank (and every layout) starts from the same weights.
* Each rank's global generators (python, numpy, torch, cuda: dropout and the like) run from `seed + rank`.
* Data augmentation is seeded per sample from (seed, epoch, index) by `data.PerSampleSeeded`, so it does not
  depend on the number of ranks, workers or on where a resumed run picked up.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) generators of this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Bitwise-reproducible kernels when asked (slower); otherwise let cuDNN pick the fastest algorithms."""
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, for the checkpoint."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sample_seeds(seed: int, epoch: int, size: int) -> np.ndarray:
    """The augmentation seeds of samples `0 .. size-1` in epoch `epoch`: a pure function of (seed, epoch, index).

    One table per epoch, drawn from a generator seeded with (seed, epoch): a lookup per sample instead of hashing
    (seed, epoch, index) each time (~30 us per sample on the loading path), and ~30 ms per ImageNet epoch.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}.")
    return np.random.default_rng([seed, epoch]).integers(0, 2**63 - 1, size=size, dtype=np.int64)
