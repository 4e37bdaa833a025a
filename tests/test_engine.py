"""The engine on the regression workload (no BatchNorm): accumulation, resume, precision, checkpoints, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from novograd.engine import run
from novograd.engine.accumulation import accumulation_steps
from novograd.engine.compose import compose_config
from novograd.engine.data import EvalBatchSampler, PlannedBatchSampler
from novograd.engine.plans import CountPlan

REGRESSION = ["debug=regression", "logger=none"]


def train(output_dir: Path, *overrides: str) -> dict:
    return run(compose_config([*REGRESSION, *overrides], output_dir))


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_accumulation_steps_divides_the_global_batch() -> None:
    assert accumulation_steps(1024, 128, 8) == 1
    assert accumulation_steps(32768, 128, 8) == 32
    with pytest.raises(ValueError, match=r"batch_size=1000 .* trainer.micro_batch_size=128 x world size 8 = 1024"):
        accumulation_steps(1000, 128, 8)
    with pytest.raises(ValueError, match="divisor of 125"):
        accumulation_steps(1000, 64, 8)


def _global_batches(batch: int, micro: int, world: int, start_step: int = 0) -> list[list[int]]:
    """Indices of each optimizer step's global batch, gathered over ranks, as sorted lists."""
    per_rank = []
    for rank in range(world):
        sampler = PlannedBatchSampler(CountPlan(50, batch, micro, seed=3), rank, world)
        sampler.set_position(epoch=2, start_step=start_step)
        micro_batches = list(sampler)
        assert len(micro_batches) == len(sampler) == sum(n for n, _ in sampler.steps())
        assert all(count == batch for _, count in sampler.steps())
        indices = [index for micro_batch in micro_batches for epoch, index in micro_batch]
        per_rank.append([indices[i : i + batch // world] for i in range(0, len(indices), batch // world)])
    return [sorted(sum((rank[step] for rank in per_rank), [])) for step in range(len(per_rank[0]))]


def test_sampler_global_batches_do_not_depend_on_the_layout_and_resume_skips() -> None:
    single = _global_batches(batch=8, micro=8, world=1)
    assert len(single) == 50 // 8
    assert _global_batches(batch=8, micro=4, world=1) == single
    assert _global_batches(batch=8, micro=2, world=2) == single
    assert _global_batches(batch=8, micro=4, world=2, start_step=4) == single[4:]
    assert len({i for step in single for i in step}) == 6 * 8  # a permutation: no index twice in an epoch


@pytest.mark.parametrize("lengths", [None, [5, 3, 9, 1, 1, 7, 2, 8, 6, 4, 0]])
def test_eval_sampler_counts_every_example_once(lengths) -> None:
    shards = [
        [index for batch in EvalBatchSampler(11, 2, rank, 4, None if lengths is None else np.array(lengths))
         for _, index in batch]
        for rank in range(4)
    ]
    assert sorted(sum(shards, [])) == list(range(11))
    if lengths is not None:  # batches of similar length: the two shortest examples together
        first = next(iter(EvalBatchSampler(11, 2, 0, 4, np.array(lengths))))
        assert sorted(index for _, index in first) == [3, 10]


def test_accumulated_micro_batches_match_one_big_batch(tmp_path: Path) -> None:
    train(tmp_path / "big", "trainer.micro_batch_size=8")
    train(tmp_path / "accumulated", "trainer.micro_batch_size=4")
    train(tmp_path / "micro2", "trainer.micro_batch_size=2")
    big = final_weights(tmp_path / "big")
    for name in ("accumulated", "micro2"):
        for key, value in final_weights(tmp_path / name).items():
            torch.testing.assert_close(value, big[key], rtol=0, atol=1e-6)
    # Equality is not the trivial one of untrained models: the weights moved away from the initial ones.
    assert any((value - big[key]).abs().max() > 1e-3 for key, value in initial_weights().items())


def initial_weights() -> dict[str, torch.Tensor]:
    from hydra.utils import instantiate

    cfg = compose_config(REGRESSION)
    torch.manual_seed(cfg.seed)  # as the trainer builds the model: from the seed alone
    return instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False).build_model().state_dict()


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    # Dropout exercises the generator states; two epochs of 4 steps exercise the in-epoch data position.
    common = ["model.dropout=0.2", "trainer.max_steps=6", "data.train_size=32", "trainer.eval_every_steps=2",
              "optimizer=novograd"]
    straight = train(tmp_path / "straight", *common)
    stopped = train(tmp_path / "resumed", *common, "trainer.stop_at_step=3")
    assert stopped["preempted"] and stopped["steps"] == 3
    resumed = train(tmp_path / "resumed", *common)
    assert resumed["steps"] == straight["steps"] == 6
    for key, value in final_weights(tmp_path / "straight").items():
        assert torch.equal(value, final_weights(tmp_path / "resumed")[key]), key
    assert resumed["mse"] == straight["mse"]

    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    straight_records = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    losses = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    assert losses == [(r["step"], r["train/loss"]) for r in map(json.loads, straight_records) if "train/loss" in r]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path: Path, precision: str) -> None:
    summary = train(tmp_path, f"trainer.precision={precision}", "trainer.max_steps=4", "trainer.grad_clip_norm=1.0")
    assert summary["steps"] == 4 and summary["mse"] == pytest.approx(summary["mse"]) and summary["mse"] < 1e3
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert bool(state["scaler"]) == (precision == "fp16")  # only fp16 keeps a loss scale


def test_checkpoints_keep_the_last_k_and_best(tmp_path: Path) -> None:
    train(tmp_path, "trainer.max_steps=5", "trainer.checkpoint_every_steps=1", "trainer.keep_last_k=2",
          "trainer.eval_every_steps=2")
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "previous.pt", "step_00000004.pt", "step_00000005.pt"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_mse"] == min(
        json.loads(line)["eval/mse"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "eval/mse" in line
    )


def test_indivisible_batch_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"trainer.batch_size=10 .* trainer.micro_batch_size=4"):
        train(tmp_path, "trainer.batch_size=10", "trainer.micro_batch_size=4")


def test_sample_seeds_are_a_function_of_seed_epoch_and_index_only():
    from novograd.engine.seeding import sample_seeds

    table = sample_seeds(7, 3, 1000)
    assert (sample_seeds(7, 3, 10) == table[:10]).all()  # the dataset's size does not change a sample's seed
    assert len(set(table.tolist())) == 1000
    assert not (sample_seeds(7, 4, 1000) == table).any() and not (sample_seeds(8, 3, 1000) == table).any()


def test_preemption_flag_restores_a_previous_python_handler_and_hand_on_delivers_to_it():
    """submitit requeues a SLURM job from its own SIGUSR1 handler: it must still run, after the run has ended."""
    import os
    import signal

    from novograd.engine.preemption import PreemptionFlag, hand_on_signal

    received = []

    def handler(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with PreemptionFlag() as flag:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert flag.requested and flag.signal_name == "SIGUSR1" and received == []
        assert signal.getsignal(signal.SIGUSR1) is handler and received == []
        hand_on_signal({"preempted": True, "stop_reason": "SIGUSR1"})
        assert received == [signal.SIGUSR1]
        hand_on_signal({"preempted": True, "stop_reason": "trainer.stop_at_step=3"})  # no signal to hand on
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_process_that_compiles_nothing_trains_without_importing_dynamo(tmp_path: Path) -> None:
    """novograd/engine/lazy_dynamo.py: an optimizer's whole life (build, step, zero_grad, state_dict and back) runs
    without torch._dynamo inside `dynamo_import_skipped`, and imports it as before once the block is left (the
    negative control: the methods are restored)."""
    import subprocess
    import sys

    script = """
import sys, torch
from novograd.engine.lazy_dynamo import dynamo_import_skipped
from novograd.optim.factory import build_optimizer

def lifetime():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer({"name": "novograd", "lr": 0.01}, model)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    optimizer.load_state_dict(optimizer.state_dict())

with dynamo_import_skipped():
    lifetime()
print("inside:", "torch._dynamo" in sys.modules)
lifetime()
print("after:", "torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["inside:", "False", "after:", "True"], result.stdout + result.stderr[-2000:]
