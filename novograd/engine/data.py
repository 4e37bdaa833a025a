"""Samplers and loaders: layout-independent global batches, exact resume, unpadded evaluation shards.

The training order is a function of (seed, epoch) only: each epoch is a permutation of the dataset cut into global
batches of `trainer.batch_size`, and every rank takes its micro-batches out of each global batch. Any split into
micro-batches and ranks therefore sees the same global batches (what makes accumulation exact), and a resumed run
skips the consumed steps inside the sampler, without loading them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from novograd.engine.seeding import sample_seeds


class StepAlignedSampler(Sampler[tuple[int, int]]):
    """This rank's `(epoch, index)` pairs for one epoch, in micro-batch order, from step `start_step` on.

    Global batch `s` is `perm[s*B:(s+1)*B]` of the epoch's permutation; micro-batch `i` of rank `r` within it is
    the slice starting at `(i * world_size + r) * micro_batch_size`. The tail of the permutation that does not
    fill a global batch is dropped (as DistributedSampler's drop_last), so every rank runs the same number of steps.
    """

    def __init__(
        self, dataset_size: int, batch_size: int, micro_batch_size: int, rank: int, world_size: int, seed: int
    ) -> None:
        if dataset_size < batch_size:
            raise ValueError(
                f"The training set has {dataset_size} examples, fewer than one global batch "
                f"(trainer.batch_size={batch_size}); lower the batch size or use a larger dataset."
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_epoch = dataset_size // batch_size
        self.epoch = 0
        self.start_step = 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from optimizer step `start_step` (0 for a fresh epoch)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside the epoch's {self.steps_per_epoch} steps.")
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * (self.batch_size // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator)
        order = order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, -1, self.micro_batch_size)
        # [steps, micro-batches of all ranks, micro] -> this rank's micro-batches: every world_size-th from rank.
        mine = order[self.start_step :, self.rank :: self.world_size].reshape(-1)
        for index in mine.tolist():
            yield self.epoch, index


class ShardSampler(Sampler[tuple[int, int]]):
    """Evaluation indices `rank, rank + world, ...`: every example on exactly one rank, none padded or repeated."""

    def __init__(self, dataset_size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, dataset_size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices:
            yield 0, index


class PerSampleSeeded(Dataset):
    """Reads `(epoch, index)` keys and runs the inner dataset's `__getitem__` with generators seeded from them.

    Random augmentations become a pure function of (seed, epoch, index) whichever global generator they draw from
    (torchvision's v2 transforms use torch's; v1's RandomChoice/RandomOrder python's; other libraries numpy's),
    independent of workers, ranks, resumption and of the other samples of the batch. In the main process
    (`num_workers=0`) the caller's generator states are saved before a batch and restored after it, so the training
    loop's own randomness is untouched; DataLoader workers skip that, their global generators serve nothing else.
    Saving and restoring (about 50 us, mostly numpy's state) is done once per batch (`__getitems__`, which the
    DataLoader's fetcher calls) and only the seeding (a few us) once per sample; the seeds themselves are looked up
    in a table computed once per epoch (in each process that loads).
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
        seed = int(self._seeds[index])
        # The CPU generator only: transforms run on the CPU, and torch.manual_seed would also queue a lazy CUDA
        # seeding (with a captured stack trace) on every sample.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]


def build_loader(
    dataset: Dataset,
    sampler: Sampler[tuple[int, int]],
    batch_size: int,
    collate: Callable[[list[Any]], Any],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader over `PerSampleSeeded(dataset)`; workers persist across epochs when there are any."""
    return DataLoader(
        PerSampleSeeded(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator would otherwise draw from the global torch generator and shift
        # the model's randomness whenever an evaluation or a resume creates one more iterator.
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
