"""The one interface between the training engine and a task.

The engine knows nothing about images, speech or text: it asks a `Workload` for a model, datasets, a batch plan,
a collate function, a loss and an evaluation, and does everything else (accumulation, precision, DDP, checkpoints, logging)
itself. A new paper workload is a subclass of `Workload` in `novograd/workloads/`, a model in `models/`, a dataset
module in `data/`, and configs: nothing in the engine changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from novograd.engine.plans import BatchPlan, CountPlan


class Workload(ABC):
    """A paper task as the engine sees it.

    Batching: the workload owns it (as fairseq's tasks do). `batch_plan` says which examples make each optimizer
    step and how a step is cut into micro-batches (novograd/engine/plans.py: a count of examples, a token budget,
    length buckets); the engine streams the micro-batches through a DataLoader and normalises by the plan's count.

    Loss contract: `loss` returns the *sum* of per-example (or per-token) losses, never a mean. The engine divides
    by the plan's count of the whole global batch (all micro-batches on all ranks), so accumulating k micro-batches
    gives the same update as one batch k times larger.

    Evaluation contract: `eval_step` returns *sums* (correct predictions, edit distances, n-gram matches, ...),
    which the engine adds up over batches and ranks; `eval_metrics` turns the totals of one named evaluation set
    into the paper's columns. Sums make distributed evaluation exact without gathering predictions.

    State carried between steps (Transformer-XL's memory) lives in the workload: `state_dict`/`load_state_dict`
    put it in checkpoints, `start_epoch` resets it.
    """

    #: The paper's metrics and whether higher or lower is better; the engine tracks the best of each and tells
    #: W&B how to summarise them (e.g. {"top1": "max", "top5": "max"} or {"wer_dev_clean": "min"}).
    metric_goals: dict[str, Literal["max", "min"]] = {}
    #: The columns of the paper's table (results/paper/tables.yaml), the metrics the run's final line shows
    #: (summary.json holds every one); empty: those of `metric_goals`.
    paper_columns: tuple[str, ...] = ()
    #: The metric that decides the "best" checkpoint.
    primary_metric: str = ""
    #: Whether `trainer.batch_size` is a count (examples, streams) cut into micro-batches of
    #: `trainer.micro_batch_size` on every rank, so that it must be a whole multiple of micro-batch x ranks (checked
    #: before any work, novograd/engine/config_checks.py); False for a budget such as WMT14's tokens per step.
    batch_is_a_count: bool = True
    #: What the batch plan's `count` counts, for the throughput in the logs (`images`/s, `tokens`/s).
    count_unit: str = "examples"
    #: Convolutional models run faster in channels-last memory format on GPUs (the engine converts model and inputs).
    channels_last: bool = False
    #: The run's output directory on the main rank (None on the others), set by the engine: where a workload may
    #: write files of its own, such as the hypotheses of an evaluation.
    output_dir: Path | None = None

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """`paper_columns`, else the metrics of `metric_goals`."""
        return cls.paper_columns or tuple(cls.metric_goals)

    @classmethod
    def check_data(cls, data: Mapping[str, Any]) -> None:
        """Raise the data module's error (FileNotFoundError or ValueError, naming the make target that prepares the
        dataset) when the dataset the data config `data` reads is not there; a synthetic twin needs nothing. The
        launcher calls it before any worker starts (novograd/engine/config_checks.py); `build_datasets` makes the
        same check through the same function. The default: a workload without files."""

    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        """The training set and the named evaluation sets. A missing dataset raises an error naming its prepare target.

        An evaluation set with a `lengths` array is evaluated in batches of similar length.
        """

    def batch_plan(self, train_set: Dataset, batch_size: int, micro_batch_size: int, seed: int) -> BatchPlan:
        """How training batches are formed; the default: `batch_size` random examples per step."""
        return CountPlan(len(train_set), batch_size, micro_batch_size, seed)  # type: ignore[arg-type]

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch; the default stacks tensors."""
        return torch.utils.data.default_collate(samples)

    def on_device(self, batch: Any) -> Any:
        """`batch` just copied to the device, made ready for the model: the work a GPU does more cheaply than the
        loader's CPU workers (e.g. uint8 images to normalised floats). On CUDA it runs on the side stream that
        copies the batch, one batch ahead of the computation (novograd/engine/batches.py). The default: unchanged."""
        return batch

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The summed (not averaged) training loss of `batch`; the plan's `count` of terms over the whole step."""

    def pop_train_stats(self) -> dict[str, float]:
        """Sums the workload gathered in training since the last call (e.g. skipped infinite losses, padded frames);
        the engine adds them over ranks and logs `train_metrics` of the totals as `train/<name>`. The sum
        "skipped" (examples that stood in for unreadable files) the engine keeps as the run's `skipped_train`."""
        return {}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """What to log from the totals of `pop_train_stats` (e.g. a padding fraction from two sums)."""
        return sums

    def begin_evaluation(self, eval_set: str, final: bool) -> bool:
        """Called before evaluating `eval_set` (`final`: the evaluation at the end of training); False skips the
        set this time (e.g. a test set scored only at the end)."""
        return True

    @abstractmethod
    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Sums of evaluation statistics over `batch` (including the number of examples scored). A workload whose
        files may be unreadable adds "skipped": the examples of the batch it did not score, recorded by the engine
        as `skipped_<set>`."""

    @abstractmethod
    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        """The paper's metrics of evaluation set `eval_set` from statistics summed over the whole set."""

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (not when a run resumes mid-epoch); resets per-epoch state."""

    def state_dict(self) -> dict[str, Any]:
        """This rank's state carried between steps (saved in checkpoints); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
