"""Distributed evaluation that counts every example exactly once, on every named evaluation set.

Each rank evaluates its unpadded shard of a set (`data.EvalBatchSampler`), sums the workload's per-batch
statistics, and one all-reduce adds the sums of all ranks; the workload turns the totals into the paper's metrics.

A workload whose examples are files that may be unreadable (`data.skip_corrupt=true`, data/corrupt.py) scores only
the readable ones and adds the others up under `SKIPPED`; that count is recorded beside the set's metrics as
`skipped_<set>` (`eval/skipped_val` in metrics.jsonl, `skipped_val` in summary.json).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from novograd.engine.distributed import all_reduce_sum, gather_objects

#: The sum (of `eval_step`) and the training statistic (of `pop_train_stats`) counting the examples of unreadable
#: files: not scored in evaluation, replaced by readable ones in training.
SKIPPED = "skipped"

if TYPE_CHECKING:
    from novograd.engine.precision import Precision
    from novograd.workload import Workload


def evaluate(
    workload: Workload,
    model: nn.Module,
    loaders: dict[str, DataLoader],
    device_batches: Callable[[Iterable[Any]], Iterable[Any]],
    precision: Precision,
    device: torch.device,
    final: bool = False,
) -> dict[str, float]:
    """The workload's metrics over every evaluation set it asks for now (`final`: at the end of training), merged
    (each set's metrics carry its name where the workload names them so, e.g. `wer_dev_clean`), with the count of
    examples it could not score, `skipped_<set>`, where it reports one."""
    metrics: dict[str, float] = {}
    for name, loader in loaders.items():
        if workload.begin_evaluation(name, final):
            totals = evaluate_set(workload, model, loader, device_batches, precision, device)
            skipped = totals.pop(SKIPPED, None)
            metrics |= workload.eval_metrics(totals, name)
            if skipped is not None:
                metrics[f"{SKIPPED}_{name}"] = round(skipped)
    return metrics


@torch.no_grad()
def evaluate_set(
    workload: Workload,
    model: nn.Module,
    loader: DataLoader,
    device_batches: Callable[[Iterable[Any]], Iterable[Any]],
    precision: Precision,
    device: torch.device,
) -> dict[str, float]:
    """The workload's statistics summed over one whole evaluation set and all ranks. `model` is the bare module
    (no DDP hooks: ranks may run different numbers of batches); `device_batches` turns the loader's batches into the
    model's (novograd/engine/batches.py)."""
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for batch in device_batches(loader):
        with precision.autocast():
            stats = workload.eval_step(model, batch)
        for name, value in stats.items():
            value = value.detach().to(device=device, dtype=torch.float64)
            totals[name] = totals[name] + value if name in totals else value
    model.train(was_training)
    # A rank whose shard is empty has no keys; agree on the union so the all-reduce matches across ranks.
    names = sorted(set().union(*gather_objects(sorted(totals))))
    if not names:
        raise ValueError("The evaluation set is empty: there is nothing to evaluate.")
    stacked = torch.stack([totals.get(name, torch.zeros((), dtype=torch.float64, device=device)) for name in names])
    return dict(zip(names, all_reduce_sum(stacked).tolist()))
