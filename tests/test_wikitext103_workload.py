"""The Transformer-XL workload: streams, memory carried across steps and checkpoints, evaluation that scores every
token once, and the proof that the recurrence works (lower perplexity with memory on the learnable twin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from novograd.engine import run
from novograd.engine.compose import compose_config
from novograd.workloads.wikitext103 import EvalStreams, TrainStreams, collate_streams

SMOKE = ["experiment=table6/novograd_12b", "debug=smoke", "logger=none", "model.dropout=0.0"]


def checkpoint(output_dir: Path) -> dict:
    return torch.load(output_dir / "checkpoints" / "last.pt", weights_only=False)


def test_evaluation_streams_score_every_token_but_the_first_exactly_once() -> None:
    tokens = np.arange(103, dtype=np.int32)
    streams = EvalStreams(tokens, num_streams=10)
    batch = collate_streams([streams[i] for i in range(len(streams))])
    targets = batch["targets"][batch["targets"] >= 0]
    assert sorted(targets.tolist()) == list(range(1, 103))
    inputs = batch["inputs"][batch["targets"] >= 0]
    assert torch.equal(targets, inputs + 1)  # each target is the token after its input


def test_training_windows_follow_each_stream_in_order() -> None:
    streams = TrainStreams(np.arange(100, dtype=np.int32), tgt_len=4)
    streams.cut(num_streams=3)  # 33 tokens a stream: 8 windows of 4 (+1 target)
    assert len(streams) == 8 * 3
    stream, inputs, targets = streams[1 * 3 + 2]  # window 1 of stream 2
    assert stream == 2 and inputs.tolist() == [70, 71, 72, 73] and targets.tolist() == [71, 72, 73, 74]
    with pytest.raises(ValueError, match="trainer.batch_size"):
        streams.cut(num_streams=50)


def test_warm_up_reads_the_tokens_before_each_stream_and_scores_the_same_ones() -> None:
    tokens = np.arange(103, dtype=np.int32)
    cold, warm = EvalStreams(tokens, num_streams=10), EvalStreams(tokens, num_streams=10, warm_up=8)
    for stream in range(len(cold)):
        _, cold_inputs, cold_targets = cold[stream]
        _, inputs, targets = warm[stream]
        assert torch.equal(targets[8:], cold_targets) and (targets[:8] == -1).all()  # read, not scored
        assert torch.equal(inputs[8:], cold_inputs)
        # The 8 tokens before the stream's first input; stream 0 wraps around to the set's end.
        assert inputs[:8].tolist() == [(cold_inputs[0].item() - k) % 103 for k in range(8, 0, -1)]
    batch = collate_streams([warm[i] for i in range(len(warm))])
    assert sorted(batch["targets"][batch["targets"] >= 0].tolist()) == list(range(1, 103))


def test_warm_up_covers_the_memory_in_whole_windows(tmp_path: Path) -> None:
    from novograd.workloads.wikitext103 import WikiText103Workload

    cfg = compose_config([*SMOKE, "data.eval.warm_up=true", "data.eval.tgt_len=16", "data.eval.mem_len=40"])
    _, eval_sets = WikiText103Workload(cfg.model, cfg.data).build_datasets()
    assert eval_sets["valid"].warm_up == 48  # 3 windows of 16 fill a memory of 40
    cfg = compose_config(SMOKE)
    assert WikiText103Workload(cfg.model, cfg.data).build_datasets()[1]["valid"].warm_up == 0


def rolled_windows(epoch: int, seed: int = 0, roll: bool = True) -> np.ndarray:
    """Every window of an epoch, as a (windows, streams, tgt_len + 1) array, from a fresh dataset (a rank or a
    resumed process of its own)."""
    streams = TrainStreams(np.arange(1000, dtype=np.int32), tgt_len=4, roll=roll)
    streams.cut(num_streams=3, seed=seed)
    streams.set_epoch(epoch)
    samples = [streams[i] for i in range(len(streams))]
    windows = np.array([torch.cat([inputs, targets[-1:]]).numpy() for _, inputs, targets in samples])
    return windows.reshape(streams.num_windows, streams.num_streams, -1)


def test_rolled_streams_change_each_epoch_and_depend_on_seed_and_epoch_only() -> None:
    plain = rolled_windows(epoch=0, roll=False)
    assert np.array_equal(rolled_windows(epoch=5, roll=False), plain)  # without roll every epoch is the same
    first, second = rolled_windows(epoch=0), rolled_windows(epoch=1)
    assert not np.array_equal(first, second) and not np.array_equal(first, plain)
    assert np.array_equal(rolled_windows(epoch=1), second)  # another process (rank, resumed run): the same
    assert not np.array_equal(rolled_windows(epoch=1, seed=1), second)
    # Each stream is still its own 333 tokens, rotated: consecutive windows follow on, wrapping at its end.
    for stream in range(3):
        text = second[:, stream, :-1].reshape(-1)
        own = np.arange(stream * 333, (stream + 1) * 333)
        offset = int(np.flatnonzero(own == text[0])[0])
        assert np.array_equal(text, np.roll(own, -offset)[: len(text)])
        assert np.array_equal(second[:-1, stream, -1], second[1:, stream, 0])  # a window's target starts the next


def test_resume_with_rolled_streams_continues_bit_for_bit_across_epochs(tmp_path: Path) -> None:
    # 1,000 tokens in 8 streams: 7 windows of 16 an epoch, so the run stops and resumes inside the second epoch.
    common = [*SMOKE, "data.roll=true", "data.synthetic.num_train_tokens=1000", "trainer.max_steps=9",
              "trainer.eval_every_steps=null"]
    run(compose_config(common, tmp_path / "straight"))
    run(compose_config([*common, "trainer.stop_at_step=8"], tmp_path / "resumed"))
    run(compose_config(common, tmp_path / "resumed"))
    straight, resumed = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for stream, memory in straight["workload"][0]["memory"].items():
        assert torch.equal(memory, resumed["workload"][0]["memory"][stream]), stream


def test_smoke_run_reports_perplexities_and_saves_each_streams_memory(tmp_path: Path) -> None:
    summary = run(compose_config(SMOKE, tmp_path))
    assert summary["val_ppl"] > 1 and summary["test_ppl"] > 1 and summary["steps"] == 4
    memory = checkpoint(tmp_path)["workload"][0]["memory"]
    assert sorted(memory) == list(range(8))  # trainer.batch_size 8 streams
    assert memory[0].shape == (2, 32, 32)  # (n_layer, mem_len, d_model): 4 windows of 16 fill 32


def test_resume_continues_bit_for_bit_with_the_memory_it_had(tmp_path: Path) -> None:
    common = [*SMOKE, "trainer.max_steps=6", "trainer.eval_every_steps=null"]
    run(compose_config(common, tmp_path / "straight"))
    run(compose_config([*common, "trainer.stop_at_step=3"], tmp_path / "resumed"))
    run(compose_config(common, tmp_path / "resumed"))
    straight, resumed = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for stream, memory in straight["workload"][0]["memory"].items():
        assert torch.equal(memory, resumed["workload"][0]["memory"][stream]), stream


def test_micro_batches_of_streams_match_one_batch(tmp_path: Path) -> None:
    common = [*SMOKE, "trainer.eval_every_steps=null"]
    run(compose_config([*common, "trainer.micro_batch_size=8"], tmp_path / "whole"))
    run(compose_config([*common, "trainer.micro_batch_size=2"], tmp_path / "split"))
    whole, split = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "split")
    for key, value in whole["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=1e-5)
    for stream, memory in whole["workload"][0]["memory"].items():
        torch.testing.assert_close(split["workload"][0]["memory"][stream], memory, rtol=0, atol=1e-5)


def test_memory_is_what_predicts_the_copied_tokens(tmp_path: Path) -> None:
    """On the learnable twin each token copies the one 24 back, beyond a 16-token window but within the 32-token
    memory: with memory the model gets far below the perplexity of 64 that no model without it can beat."""
    learn = ["experiment=table6/adam_12b", "debug=learn", "logger=none", "trainer.max_steps=300",
             "trainer.eval_every_steps=null"]
    with_memory = run(compose_config(learn, tmp_path / "memory"))
    without = run(compose_config([*learn, "model.mem_len=0", "data.eval.mem_len=0"], tmp_path / "none"))
    assert without["val_ppl"] > 60
    assert with_memory["val_ppl"] < 0.5 * without["val_ppl"]


@pytest.mark.distributed
def test_resume_on_two_ranks_regroups_the_memory_and_matches_one_process(tmp_path: Path) -> None:
    """Stopped by one process at step 3, resumed by two (each rank owning half the streams and their memories
    from the one checkpoint): the same weights as one process throughout."""
    import os
    import subprocess
    import sys

    from novograd.engine.compose import CONFIG_DIR

    common = [*SMOKE, "trainer.max_steps=6", "trainer.eval_every_steps=null", "trainer.micro_batch_size=4"]
    run(compose_config(common, tmp_path / "straight"))
    run(compose_config([*common, "trainer.stop_at_step=3"], tmp_path / "resumed"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "novograd.train", *common, f"trainer.output_dir={tmp_path / 'resumed'}"]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300, cwd=CONFIG_DIR.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    straight, resumed = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed")
    assert len(resumed["workload"]) == 2  # each rank saved the memory of its own streams
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-5)
    merged = {stream: memory for shard in resumed["workload"] for stream, memory in shard["memory"].items()}
    for stream, memory in straight["workload"][0]["memory"].items():
        torch.testing.assert_close(merged[stream], memory, rtol=0, atol=1e-5)


def test_missing_dataset_names_the_prepare_target(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make prepare-wikitext103"):
        run(compose_config(["experiment=table6/novograd_12b", "logger=none", "trainer.device=cpu",
                            f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run"))
