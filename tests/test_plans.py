"""Batch plans: each example once per epoch, steps independent of ranks and micro-batch size, budgets kept."""

from __future__ import annotations

import numpy as np
import pytest

from novograd.engine.data import PlannedBatchSampler
from novograd.engine.plans import CountPlan, TokenBudgetPlan


def global_steps(plan, world: int, epoch: int = 0, start_step: int = 0) -> list[list[int]]:
    """Each step's indices gathered over the ranks' samplers, sorted: what the whole job trains on."""
    per_rank = []
    for rank in range(world):
        sampler = PlannedBatchSampler(plan, rank, world)
        sampler.set_position(epoch, start_step)
        micro = iter(sampler)
        per_rank.append([
            [index for _ in range(n) for _, index in next(micro)] for n, _ in sampler.steps()
        ])
        assert next(micro, None) is None  # the sampler yields exactly the micro-batches the steps announce
    return [sorted(sum((rank[step] for rank in per_rank), [])) for step in range(len(per_rank[0]))]


def test_count_plan_sorted_by_length_keeps_the_steps_and_groups_similar_lengths() -> None:
    lengths = np.random.default_rng(0).uniform(1.0, 16.7, size=100)
    plain, sorted_plan = CountPlan(100, 16, 4, seed=1), CountPlan(100, 16, 4, seed=1, lengths=lengths)
    assert global_steps(sorted_plan, 1) == global_steps(plain, 1) == global_steps(sorted_plan, 2)
    step = sorted_plan.epoch_steps(0)[0]
    micro = sorted_plan.micro_batches(step, 1)
    assert [len(m) for m in micro] == [4, 4, 4, 4]
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(micro, micro[1:]))  # ordered by length
    padded = sum(len(m) * lengths[m].max() for m in micro)
    unsorted = sum(len(m) * lengths[m].max() for m in plain.micro_batches(step, 1))
    assert padded < unsorted  # less padding than random micro-batches


def lengths_for(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    source = rng.integers(1, 60, size=n)
    return source, np.clip(source + rng.integers(-5, 6, size=n), 1, None)


@pytest.mark.parametrize("world, micro_tokens", [(1, 400), (1, 200), (2, 200), (3, 250)])
def test_token_plan_steps_do_not_depend_on_the_layout(world: int, micro_tokens: int) -> None:
    source, target = lengths_for(500)
    reference = global_steps(TokenBudgetPlan(source, target, 2000, 400, seed=5, chunk_tokens=300), 1)
    plan = TokenBudgetPlan(source, target, 2000, micro_tokens, seed=5, chunk_tokens=300)
    assert global_steps(plan, world) == reference
    assert global_steps(plan, world, start_step=3) == reference[3:]  # resume skips whole steps
    flat = sorted(i for step in reference for i in step)
    assert flat == list(range(500))  # every pair exactly once per epoch
    for step in plan.epoch_steps(0):
        assert (source[step] + target[step]).sum() <= 2000
        micro = plan.micro_batches(step, world)
        assert len(micro) % world == 0 and all(len(m) for m in micro)
        for m in micro:  # padded tokens within the micro budget
            assert len(m) * (source[m].max() + target[m].max()) <= micro_tokens
        assert plan.count(step) == target[step].sum()


def test_token_plan_epochs_differ_and_are_reproducible() -> None:
    source, target = lengths_for(300)
    plan = TokenBudgetPlan(source, target, 1500, 300, seed=2, chunk_tokens=200)
    again = TokenBudgetPlan(source, target, 1500, 300, seed=2, chunk_tokens=200)
    assert [s.tolist() for s in plan.epoch_steps(1)] == [s.tolist() for s in again.epoch_steps(1)]
    assert [s.tolist() for s in plan.epoch_steps(0)] != [s.tolist() for s in plan.epoch_steps(1)]
    # Steps hold sentences of mixed lengths (chunks are shuffled), and micro-batches of similar ones.
    assert plan.total_steps(2) == plan.steps_per_epoch(0) + plan.steps_per_epoch(1)


def test_token_plan_errors_name_the_setting() -> None:
    source, target = lengths_for(50)
    with pytest.raises(ValueError, match="trainer.micro_batch_size=50 tokens cannot hold the longest"):
        TokenBudgetPlan(source, target, 2000, 50, seed=0)
    with pytest.raises(ValueError, match="trainer.batch_size=100 tokens is smaller"):
        TokenBudgetPlan(source, target, 100, 400, seed=0, chunk_tokens=50)
    with pytest.raises(ValueError, match="as many source as target lengths"):
        TokenBudgetPlan(source, target[:-1], 2000, 400, seed=0)


def test_count_plan_layout_errors_before_training() -> None:
    with pytest.raises(ValueError, match=r"batch_size=10 .* trainer.micro_batch_size=4"):
        PlannedBatchSampler(CountPlan(40, 10, 4, seed=0), rank=0, world_size=1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        CountPlan(5, 8, 4, seed=0)


def test_stream_plan_takes_the_next_window_of_every_stream_in_fixed_groups() -> None:
    from novograd.engine.plans import StreamPlan

    plan = StreamPlan(num_windows=5, num_streams=8, micro_streams=2, tokens_per_window=16)
    steps = plan.epoch_steps(3)
    assert steps.tolist() == [[s * 8 + b for b in range(8)] for s in range(5)] == plan.epoch_steps(0).tolist()
    assert plan.count(steps[0]) == 8 * 16
    # Each rank always runs the same two groups of streams: their carried memory stays on it.
    for step in steps:
        micro = plan.micro_batches(step, 2)
        assert [(m % 8).tolist() for m in micro[0::2]] == [[0, 1], [4, 5]]
        assert [(m % 8).tolist() for m in micro[1::2]] == [[2, 3], [6, 7]]
    assert global_steps(plan, 2) == global_steps(plan, 1)
