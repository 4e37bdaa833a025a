"""The training engine: distributed, accumulating, mixed-precision, resumable, workload-agnostic.

`run(cfg)` trains and evaluates the workload a composed Hydra config describes (see `novograd/train.py`).
"""

from novograd.engine.trainer import Trainer, run

__all__ = ["Trainer", "run"]
