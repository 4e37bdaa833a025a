"""Compose the training config in-process (Hydra's compose API), as `python -m novograd.train` would.

For tests, benchmarks and notebooks that call `novograd.engine.run(cfg)` directly. Hydra's `${hydra:...}`
resolvers do not exist outside `@hydra.main`, so the caller names the output directory.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    """The primary config with `overrides` (command-line syntax); `trainer.output_dir` set when given."""
    from hydra import compose, initialize_config_dir

    if output_dir is not None:
        overrides = [*overrides, f"trainer.output_dir={Path(output_dir).absolute()}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
