"""Samplers and loaders: the workload's batch plan as streamed micro-batches, exact resume, unpadded evaluation.

The training order is the workload's `BatchPlan`, a function of (seed, epoch) only: every rank takes its
micro-batches out of each global batch, so any split into micro-batches and ranks sees the same global batches
(what makes accumulation exact), and a resumed run skips the consumed steps inside the sampler, without loading them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from novograd.engine.plans import BatchPlan
from novograd.engine.seeding import sample_seeds


class PlannedBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's micro-batches of one epoch, as lists of `(epoch, index)` keys, from step `start_step` on.

    The steps and their micro-batches come from the workload's `BatchPlan`; micro-batch `i` of a step runs on rank
    `i % world_size`. A resumed run skips the consumed steps here, without loading them. The DataLoader draws
    micro-batches from this sampler one at a time, so a step is never held in memory at once.
    """

    def __init__(self, plan: BatchPlan, rank: int, world_size: int) -> None:
        plan.check_layout(world_size)
        self.plan = plan
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0
        self._schedule_epoch: int | None = None
        self._schedule: list[tuple[list[np.ndarray], float]] = []

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from optimizer step `start_step` (0 for a fresh epoch)."""
        steps = self.plan.steps_per_epoch(epoch)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} outside the epoch's {steps} steps.")
        self.epoch = epoch
        self.start_step = start_step

    def steps(self) -> list[tuple[int, float]]:
        """For each remaining step of the epoch: (this rank's number of micro-batches, the step's global count)."""
        return [(len(micro), count) for micro, count in self._epoch_schedule()[self.start_step :]]

    def _epoch_schedule(self) -> list[tuple[list[np.ndarray], float]]:
        if self._schedule_epoch != self.epoch:
            plan, rank, world = self.plan, self.rank, self.world_size
            self._schedule = [
                (plan.micro_batches(step, world)[rank::world], plan.count(step)) for step in plan.epoch_steps(self.epoch)
            ]
            self._schedule_epoch = self.epoch
        return self._schedule

    def __len__(self) -> int:
        return sum(len(micro) for micro, _ in self._epoch_schedule()[self.start_step :])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for micro_batches, _ in self._epoch_schedule()[self.start_step :]:
            for micro_batch in micro_batches:
                yield [(epoch, index) for index in micro_batch.tolist()]


class EvalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's evaluation batches: every example on exactly one rank, none padded or repeated.

    With `lengths` (durations, token counts) the set is sorted by length before it is cut into batches of
    `batch_size`, so a batch holds examples of similar length; batch `j` runs on rank `j % world_size`.
    """

    def __init__(
        self, dataset_size: int, batch_size: int, rank: int, world_size: int, lengths: np.ndarray | None = None
    ) -> None:
        order = np.arange(dataset_size) if lengths is None else np.argsort(lengths, kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, dataset_size, batch_size)]
        self.batches = batches[rank::world_size]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(0, index) for index in batch.tolist()]


class PerSampleSeeded(Dataset):
    """Reads `(epoch, index)` keys and runs the inner dataset's `__getitem__` with generators seeded from them.

    Random augmentations become a pure function of (seed, epoch, index) whichever global generator they draw from
    (torchvision's v2 transforms use torch's; v1's RandomChoice/RandomOrder python's; other libraries numpy's),
    independent of workers, ranks, resumption and of the other samples of the batch. In the main process
    (`num_workers=0`) the caller's generator states are saved before a batch and restored after it, so the training
    loop's own randomness is untouched; DataLoader workers skip that, their global generators serve nothing else.
    Saving and restoring (about 50 us, mostly numpy's state) is done once per batch (`__getitems__`, which the
    DataLoader's fetcher calls) and only the seeding (a few us) once per sample; the seeds themselves are looked up
    in a table computed once per epoch (in each process that loads). A dataset with a `set_epoch(epoch)` method is
    told the epoch of the keys it is about to read, in each process that loads, so samples may depend on it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._seeds_epoch: int | None = None
        self._seeds = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        if get_worker_info() is not None:
            return [self._seeded_sample(epoch, index) for epoch, index in keys]
        python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._seeded_sample(epoch, index) for epoch, index in keys]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)

    def _seeded_sample(self, epoch: int, index: int) -> Any:
        if epoch != self._seeds_epoch:
            self._seeds, self._seeds_epoch = sample_seeds(self.seed, epoch, len(self)), epoch
            if hasattr(self.dataset, "set_epoch"):  # samples that depend on the epoch (rolled text streams)
                self.dataset.set_epoch(epoch)
        seed = int(self._seeds[index])
        # The CPU generator only: transforms run on the CPU, and torch.manual_seed would also queue a lazy CUDA
        # seeding (with a captured stack trace) on every sample.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]


def build_loader(
    dataset: Dataset,
    batch_sampler: Sampler[list[tuple[int, int]]],
    collate: Callable[[list[Any]], Any],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader over `PerSampleSeeded(dataset)`; workers persist across epochs when there are any."""
    return DataLoader(
        PerSampleSeeded(dataset, seed),
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator would otherwise draw from the global torch generator and shift
        # the model's randomness whenever an evaluation or a resume creates one more iterator.
        generator=torch.Generator().manual_seed(seed),
    )
