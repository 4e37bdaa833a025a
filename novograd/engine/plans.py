"""Batch plans: which examples make each optimizer step, and how a step is cut into micro-batches.

A workload owns its batching (as fairseq's tasks do) by choosing a plan; the engine only runs it. Every plan keeps
the rules that make accumulation, DDP and resume exact:

1. The steps of an epoch are a pure function of (seed, epoch): `epoch_steps` never sees the number of ranks, the
   micro-batch size or where a resumed run picks up.
2. `micro_batches(step, world_size)` cuts one step into a multiple of `world_size` micro-batches (micro-batch `i`
   runs on rank `i % world_size`), so every rank runs the same number of forward passes per step (DDP's `no_sync`
   pattern hangs otherwise), and `count(step)`, the normaliser of the step's summed loss, comes from the plan
   before any data is loaded: micro-batches can stream through the DataLoader one at a time.
3. Plans read lengths (manifest durations, token counts) that the dataset computed once; they never load data.

Plans here: `CountPlan` (a fixed number of examples per step, optionally cut into micro-batches of similar
length: ImageNet, Jasper), `StreamPlan` (the next window of every one of B ordered streams: Transformer-XL) and
`TokenBudgetPlan` (steps and micro-batches filled up to a token budget, sentences of similar length together:
Transformer-big).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from novograd.engine.accumulation import accumulation_steps


class BatchPlan(ABC):
    """The global batches of every epoch and their split into micro-batches."""

    #: The unit of `trainer.batch_size` / `trainer.micro_batch_size` for this plan, for messages and logs.
    unit: str = "examples"

    @abstractmethod
    def epoch_steps(self, epoch: int) -> Sequence[np.ndarray]:
        """The dataset indices of each optimizer step of epoch `epoch`; pure in (seed, epoch)."""

    @abstractmethod
    def micro_batches(self, step: np.ndarray, world_size: int) -> list[np.ndarray]:
        """`step` cut into micro-batches, as many as a multiple of `world_size`; `i` runs on rank `i % world_size`."""

    def check_layout(self, world_size: int) -> None:
        """Raise a ValueError that says what to change if this plan cannot run on `world_size` ranks."""

    def count(self, step: np.ndarray) -> float:
        """How many loss terms the whole step sums over (the engine divides the summed loss by it)."""
        return float(len(step))

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_steps(epoch))

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps in `epochs` epochs (plans whose epochs differ in length add them up)."""
        return sum(self.steps_per_epoch(epoch) for epoch in range(epochs))


class CountPlan(BatchPlan):
    """`batch_size` examples per step from a shuffled permutation of the dataset, in micro-batches of
    `micro_batch_size`.

    Step `s` of an epoch is `perm[s*B:(s+1)*B]` of the epoch's permutation (the tail that does not fill a step is
    dropped, as DistributedSampler's drop_last). Given `lengths` (e.g. utterance durations), a step is sorted by
    length before it is cut, so each micro-batch holds examples of similar length and little padding; the step
    itself stays a uniform random sample of the dataset.
    """

    def __init__(
        self, dataset_size: int, batch_size: int, micro_batch_size: int, seed: int,
        lengths: np.ndarray | None = None,
    ) -> None:
        if batch_size <= 0 or micro_batch_size <= 0:
            raise ValueError(
                f"trainer.batch_size ({batch_size}) and trainer.micro_batch_size ({micro_batch_size}) must be positive."
            )
        if dataset_size < batch_size:
            raise ValueError(
                f"The training set has {dataset_size} examples, fewer than one global batch "
                f"(trainer.batch_size={batch_size}); lower the batch size or use a larger dataset."
            )
        if lengths is not None and len(lengths) != dataset_size:
            raise ValueError(f"{len(lengths)} lengths for a dataset of {dataset_size} examples.")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.lengths = lengths

    def epoch_steps(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.dataset_size, generator=generator).numpy()
        steps = self.dataset_size // self.batch_size
        return order[: steps * self.batch_size].reshape(steps, self.batch_size)

    def check_layout(self, world_size: int) -> None:
        accumulation_steps(self.batch_size, self.micro_batch_size, world_size)

    def micro_batches(self, step: np.ndarray, world_size: int) -> list[np.ndarray]:
        if self.lengths is not None:
            step = step[np.argsort(self.lengths[step], kind="stable")]
        return np.split(step, len(step) // self.micro_batch_size)

    def steps_per_epoch(self, epoch: int) -> int:
        return self.dataset_size // self.batch_size

    def total_steps(self, epochs: int) -> int:
        return epochs * self.steps_per_epoch(0)


class StreamPlan(CountPlan):
    """Step `s` is window `s` of each of `num_streams` ordered streams: example `s * num_streams + b` is the window
    of stream `b`. No shuffling (the streams are one text in order), the same steps every epoch, and a micro-batch
    is a fixed contiguous group of `micro_streams` streams, so each stream always runs in the same micro-batch slot
    of the same rank and its carried state (Transformer-XL's memory) stays where it is used. `count` is the step's
    target tokens (`tokens_per_window` per stream).
    """

    unit = "streams"

    def __init__(self, num_windows: int, num_streams: int, micro_streams: int, tokens_per_window: int) -> None:
        super().__init__(num_windows * num_streams, num_streams, micro_streams, seed=0)
        self.num_windows = num_windows
        self.tokens_per_window = tokens_per_window

    def epoch_steps(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_windows * self.batch_size).reshape(self.num_windows, self.batch_size)

    def count(self, step: np.ndarray) -> float:
        return float(len(step) * self.tokens_per_window)


class TokenBudgetPlan(BatchPlan):
    """Steps of up to `batch_tokens` source + target tokens, cut into micro-batches of up to `micro_tokens` padded
    tokens, sentences of similar length together (fairseq's `batch_by_size`, made independent of the layout).

    An epoch: a random permutation, stably sorted by (target, source) length, so equal lengths stay in random order;
    cut into chunks of about `chunk_tokens` (a fixed constant, not the micro-batch size); the chunks shuffled; and
    consecutive chunks gathered into steps while the step stays within `batch_tokens`. A step therefore mixes
    lengths like fairseq's shuffled batches, and its sentences depend on (seed, epoch) only. A step is cut into
    micro-batches by sorting it by length and filling each up to `micro_tokens` padded tokens (n x the longest
    source + n x the longest target); the largest micro-batches are halved until their number is a multiple of
    the world size. `count` is the step's target tokens: the loss is normalised per target token.
    """

    unit = "tokens"

    def __init__(
        self, source_lengths: np.ndarray, target_lengths: np.ndarray, batch_tokens: int, micro_tokens: int,
        seed: int, chunk_tokens: int = 16384,
    ) -> None:
        self.source_lengths = np.asarray(source_lengths, dtype=np.int64)
        self.target_lengths = np.asarray(target_lengths, dtype=np.int64)
        if len(self.source_lengths) != len(self.target_lengths) or len(self.source_lengths) == 0:
            raise ValueError("TokenBudgetPlan needs as many source as target lengths, and at least one pair.")
        longest = int((self.source_lengths + self.target_lengths).max())
        pair_max = int(self.source_lengths.max() + self.target_lengths.max())
        if micro_tokens < pair_max:
            raise ValueError(
                f"trainer.micro_batch_size={micro_tokens} tokens cannot hold the longest sentence pair (up to "
                f"{pair_max} padded source + target tokens): raise it, or filter long pairs in the data config."
            )
        if batch_tokens < max(micro_tokens, chunk_tokens, longest):
            raise ValueError(
                f"trainer.batch_size={batch_tokens} tokens is smaller than trainer.micro_batch_size={micro_tokens} "
                f"or the planning chunk of {chunk_tokens} tokens: a step must hold at least one micro-batch."
            )
        self.batch_tokens = batch_tokens
        self.micro_tokens = micro_tokens
        self.seed = seed
        self.chunk_tokens = chunk_tokens
        self._epoch_steps = lru_cache(maxsize=2)(self._plan_epoch)

    def epoch_steps(self, epoch: int) -> list[np.ndarray]:
        return self._epoch_steps(epoch)

    def _plan_epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.source_lengths))
        order = order[np.lexsort((self.source_lengths[order], self.target_lengths[order]))]
        tokens = (self.source_lengths + self.target_lengths)[order]
        chunks = _cut_by_budget(order, tokens, self.chunk_tokens)
        chunk_tokens = np.array([(self.source_lengths[c] + self.target_lengths[c]).sum() for c in chunks])
        shuffled = rng.permutation(len(chunks))
        steps, current, current_tokens = [], [], 0
        for index in shuffled:
            if current and current_tokens + chunk_tokens[index] > self.batch_tokens:
                steps.append(np.concatenate(current))
                current, current_tokens = [], 0
            current.append(chunks[index])
            current_tokens += chunk_tokens[index]
        if current:
            steps.append(np.concatenate(current))
        return steps

    def micro_batches(self, step: np.ndarray, world_size: int) -> list[np.ndarray]:
        step = step[np.lexsort((self.source_lengths[step], self.target_lengths[step]))]
        micro, start = [], 0
        longest_source = longest_target = 0
        for position, index in enumerate(step):
            longest_source = max(longest_source, self.source_lengths[index])
            longest_target = max(longest_target, self.target_lengths[index])
            if (position + 1 - start) * (longest_source + longest_target) > self.micro_tokens:
                micro.append(step[start:position])
                start = position
                longest_source, longest_target = self.source_lengths[index], self.target_lengths[index]
        micro.append(step[start:])
        while len(micro) % world_size:
            largest = max(range(len(micro)), key=lambda i: len(micro[i]))
            if len(micro[largest]) < 2:
                raise ValueError(
                    f"A step of {len(step)} sentence pairs cannot be cut into a multiple of {world_size} "
                    "micro-batches: raise trainer.batch_size or run fewer processes."
                )
            half = len(micro[largest]) // 2
            micro[largest : largest + 1] = [micro[largest][:half], micro[largest][half:]]
        return micro

    def count(self, step: np.ndarray) -> float:
        return float(self.target_lengths[step].sum())


def _cut_by_budget(order: np.ndarray, tokens: np.ndarray, budget: int) -> list[np.ndarray]:
    """`order` cut into consecutive pieces of at most `budget` tokens (a longer single item is a piece alone)."""
    cumulative = np.cumsum(tokens)
    pieces, start, base = [], 0, 0
    while start < len(order):
        end = int(np.searchsorted(cumulative, base + budget, side="right"))
        end = max(end, start + 1)
        pieces.append(order[start:end])
        base = cumulative[end - 1]
        start = end
    return pieces
