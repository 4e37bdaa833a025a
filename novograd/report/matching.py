"""Which runs reproduce a paper row: a run counts under its row only when everything that defines the row matches.

A row is its experiment config (`configs/experiment/<row>.yaml`) as composed by Hydra. A run's resolved
`config.yaml` reproduces the row when it has the same values for every key that defines a row:

- every key under `workload`, `model`, `data`, `optimizer`, `scheduler` (the task, the network, the dataset and
  its augmentation, the optimizer and all its hyperparameters, the schedule): new workloads' keys such as
  `model.dropout` are covered without naming them;
- and `DEFINING_TRAINER_KEYS`: the global batch, the micro-batch (BatchNorm's statistics are per micro-batch),
  the length, gradient clipping, synchronised BatchNorm;

except the keys in `NOT_DEFINING`, which say where things are or how the same computation is carried out.
`seed` does not define a row: runs with different seeds are the row's replicas, averaged together.
`trainer.precision` is a documented exception: the paper's runs used fp16 mixed precision with loss scaling, this
suite defaults to bf16 (`trainer.precision=fp16` replicates the paper), and both, or fp32, count for the row.

Any other run of the row's experiment is a variant, listed with what differs ("optimizer.lr 0.01 instead of
0.007") and never averaged into the row. `row_differences` is the rule; the tables report and a W&B source apply it
alike.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from omegaconf import OmegaConf

from novograd.engine.run_config import Difference, config_differences, is_covered

DEFINING_SECTIONS = ("workload", "model", "data", "optimizer", "scheduler")
DEFINING_TRAINER_KEYS = (
    "trainer.batch_size",
    "trainer.micro_batch_size",
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.grad_clip_norm",
    "trainer.sync_bn",
)
NOT_DEFINING: dict[str, str] = {
    "data.root": "where the dataset lives",
    "data.num_workers": "how many processes load the same data",
    "data.pin_memory": "how batches reach the GPU",
    "data.skip_corrupt": "what happens on an unreadable image or audio file (the official archives have none)",
    "data.synthetic.cache_dir": "where the synthetic dataset is written",
    "optimizer.foreach": "which implementation computes the same update",
    "optimizer.fused": "which implementation computes the same update",
}


def defines_row(key: str) -> bool:
    """Whether `key` (dotted) is one of the values a run must share with a row to reproduce it."""
    return is_covered(key, (*DEFINING_SECTIONS, *DEFINING_TRAINER_KEYS)) and not is_covered(key, NOT_DEFINING)


def row_differences(run_config: dict[str, Any], row_config: dict[str, Any]) -> list[Difference]:
    """What in a run's resolved config differs from its row's composed config, over the keys that define a row
    (empty: the run reproduces the row)."""
    return config_differences(row_config, run_config, defines_row)


@cache
def row_config(experiment: str, debug_mode: str | None = None) -> dict[str, Any] | None:
    """The resolved config `experiment=<experiment>` composes to (with `debug=<debug_mode>`: the row's debug twin,
    which a debug run reproduces), or None when there is no such experiment."""
    from hydra.errors import MissingConfigException

    from novograd.engine.compose import compose_config

    overrides = [f"experiment={experiment}", *([f"debug={debug_mode}"] if debug_mode else [])]
    try:
        cfg = compose_config(overrides, output_dir="row")  # the path is not compared
    except MissingConfigException:
        return None
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
