"""The training engine: distributed, accumulating, mixed-precision, resumable, workload-agnostic.

`run(cfg)` trains and evaluates the workload a composed Hydra config describes (see `novograd/train.py`). The
import of the trainer (and torch) is lazy, so that composing a config (`--cfg job`, the launcher's checks) stays
quick; importing this package registers the resolvers `configs/config.yaml` uses (novograd/engine/resolvers.py),
so every caller that composes the config has them.
"""

from typing import Any

from novograd.engine.resolvers import register_resolvers

register_resolvers()

__all__ = ["Trainer", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from novograd.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'novograd.engine' has no attribute {name!r}")
