"""The one interface between the training engine and a task.

The engine knows nothing about images, speech or text: it asks a `Workload` for a model, datasets, a collate
function, a loss and an evaluation, and does everything else (accumulation, precision, DDP, checkpoints, logging)
itself. A new paper workload is a subclass of `Workload` in `novograd/workloads/`, a model in `models/`, a dataset
module in `data/`, and configs: nothing in the engine changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset


class Workload(ABC):
    """A paper task as the engine sees it.

    Loss contract: `loss` returns the *sum* of per-example (or per-token) losses and the count they were summed
    over, never a mean. The engine divides by the count of the whole global batch (all micro-batches on all
    ranks), so accumulating k micro-batches gives the same update as one batch k times larger.

    Evaluation contract: `eval_step` returns *sums* (correct predictions, edit distances, n-gram matches, ...),
    which the engine adds up over batches and ranks; `eval_metrics` turns the totals into the paper's columns.
    Sums make distributed evaluation exact without gathering predictions.
    """

    #: The paper's metrics and whether higher or lower is better; the engine tracks the best of each and tells
    #: W&B how to summarise them (e.g. {"top1": "max", "top5": "max"} or {"wer_dev_clean": "min"}).
    metric_goals: dict[str, Literal["max", "min"]] = {}
    #: The metric that decides the "best" checkpoint.
    primary_metric: str = ""
    #: Convolutional models run faster in channels-last memory format on GPUs (the engine converts model and inputs).
    channels_last: bool = False

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, eval) datasets. A missing dataset raises an error that names the prepare script."""

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch; the default stacks tensors."""
        return torch.utils.data.default_collate(samples)

    @abstractmethod
    def count(self, batch: Any) -> int:
        """How many loss terms `loss` sums over for this batch (examples, or target tokens), known before forward."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The summed (not averaged) training loss of `batch`; `count(batch)` terms."""

    @abstractmethod
    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Sums of evaluation statistics over `batch` (including the number of examples)."""

    @abstractmethod
    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """The paper's metrics from statistics summed over the whole evaluation set."""
