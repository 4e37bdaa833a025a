"""`trainer.parallelism=fsdp`: FSDP2 shards on 2 gloo ranks train what DDP trains, for every workload and the four
optimizers; a sharded checkpoint resumes bit for bit, on another number of ranks by resharding, falls back past
damaged shards, survives a full disk, and exports as one plain state dict.

tests/fsdp_engine_worker.py runs every 2-rank case in one torchrun launch; the one-rank cases run in this process
(a process group of one, as `trainer.parallelism=fsdp` makes alone).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.checkpoint import CheckpointSpaceError, consolidated, load_checkpoint
from novograd.engine.compose import compose_config
from fsdp_engine_worker import MIXED_PRECISION_CASES, CASES, COMMON, REDUCE_SCATTERS, RESUME, RESUME_CASE

WORKER = Path(__file__).with_name("fsdp_engine_worker.py")
# The layouts differ in how gradients are summed (DDP's bucketed all-reduce against FSDP2's per-unit
# reduce-scatter, bf16-free here) and nothing else: measured, 0 for ResNet and up to 1.4e-6 (Jasper with Adam) over
# 3 steps. The last step alone moves the weights by orders more (checked below, so the comparison can fail).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
               str(root)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {key: value for key, value in consolidated(checkpoint)["model"].items() if value.is_floating_point()}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].double() - b[key].double()).abs().max().item() for key in a)


@pytest.mark.distributed
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_training_equals_ddp(runs: Path, case: str) -> None:
    checkpoints = {layout: runs / case / layout / "checkpoints" for layout in ("ddp", "fsdp")}
    assert (checkpoints["fsdp"] / "shards_00000003").is_dir() and not list(checkpoints["ddp"].glob("shards_*"))
    sharded, replicated = (model_state(checkpoints[layout] / "last.pt") for layout in ("fsdp", "ddp"))
    assert largest_difference(sharded, replicated) <= TOLERANCE
    # The negative control: the DDP run one step earlier is far outside the tolerance.
    assert largest_difference(sharded, model_state(checkpoints["ddp"] / "step_00000002.pt")) > 100 * TOLERANCE
    summaries = [json.loads((runs / case / layout / "summary.json").read_text()) for layout in ("ddp", "fsdp")]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 3 and summaries[1]["world_size"] == 2


@pytest.mark.distributed
@pytest.mark.parametrize("case", sorted(MIXED_PRECISION_CASES))
def test_sharded_mixed_precision_equals_ddp_to_its_rounding(runs: Path, case: str) -> None:
    """bf16 or fp16 autocast on both layouts (fp16 with GradScaler's loss scaling on the sharded gradients). Jasper's
    BatchNorms make the sharded run gather fp32 weights, as DDP holds them: fp32's tolerance (measured 6e-8).
    Transformer-XL gathers bf16 or fp16 weights, rounded as DDP's autocast rounds a matmul's weight, but also where
    DDP's other ops read fp32 ones: within a tenth of the last step's change (measured bf16 2.1e-4, fp16 2.7e-4,
    against 6.5e-3), which the DDP run one step earlier is not."""
    checkpoints = {layout: runs / case / layout / "checkpoints" for layout in ("ddp", "fsdp")}
    sharded, replicated = (model_state(checkpoints[layout] / "last.pt") for layout in ("fsdp", "ddp"))
    earlier = model_state(checkpoints["ddp"] / "step_00000002.pt")
    last_step = largest_difference(replicated, earlier)
    tolerance = TOLERANCE if case.startswith("jasper") else last_step / 10
    assert largest_difference(sharded, replicated) <= tolerance < largest_difference(sharded, earlier)


@pytest.mark.distributed
def test_a_sharded_run_resumes_bit_for_bit(runs: Path) -> None:
    uninterrupted, resumed = (consolidated(runs / RESUME_CASE / name / "checkpoints" / "last.pt")
                              for name in ("fsdp", "resumed"))
    assert largest_difference(uninterrupted["model"], resumed["model"]) == 0.0
    for key, state in uninterrupted["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][key][name], value), (key, name)
    summaries = [json.loads((runs / RESUME_CASE / name / "summary.json").read_text()) for name in ("fsdp", "resumed")]
    assert summaries[0]["top1"] == summaries[1]["top1"]


@pytest.mark.distributed
def test_a_sharded_run_resumes_on_one_rank_by_resharding(runs: Path, caplog) -> None:
    """Stopped at step 2 of 3 on 2 ranks, resumed on 1: the same weights as the 2-rank run, to the rounding of
    summing the micro-batches' gradients in another order (the same micro-batches: micro-batch i ran on rank i % 2,
    so BatchNorm normalised each with the same statistics)."""
    output_dir = runs / RESUME_CASE / "one_rank"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank of the worker
    try:
        with caplog.at_level("INFO", logger="novograd"):
            run(compose_config([*COMMON, *RESUME, "trainer.parallelism=fsdp", f"trainer.output_dir={output_dir}"],
                               output_dir))
    finally:
        torch.set_num_threads(threads)
    assert "Resuming from step 2" in caplog.text and "written by 2 ranks, this run has 1" in caplog.text
    one_rank, two_ranks = (weights(model_state(path / "checkpoints" / "last.pt"))
                           for path in (output_dir, runs / RESUME_CASE / "fsdp"))
    assert largest_difference(one_rank, two_ranks) <= TOLERANCE


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without BatchNorm's running statistics: a checkpoint keeps rank 0's, which saw rank 0's micro-batches
    only, where one process sees them all."""
    return {key: value for key, value in state.items() if "running_" not in key}


@pytest.mark.distributed
def test_the_export_is_a_plain_state_dict_of_the_model(runs: Path, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    checkpoint = runs / "resnet_sgd" / "fsdp" / "checkpoints" / "last.pt"
    exported = tmp_path / "model.pt"
    result = subprocess.run([sys.executable, "-m", "novograd.export_checkpoint", str(checkpoint), str(exported)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(exported, weights_only=False)
    assert "shards" not in state and state["progress"]["step"] == 3
    cfg = compose_config([*COMMON, *CASES["resnet_sgd"]], tmp_path / "unused")
    model = instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False).build_model()
    model.load_state_dict(state["model"])  # strict: every key, every shape
    ddp = load_checkpoint(runs / "resnet_sgd" / "ddp" / "checkpoints" / "last.pt")["model"]
    assert largest_difference(model.state_dict(), ddp) <= TOLERANCE


# ------------------------------------------------------------------------------------------------ one rank, faults
ALONE = ["debug=regression", "logger=none", "optimizer=novograd", "trainer.max_steps=4", "trainer.parallelism=fsdp",
         "trainer.checkpoint_every_steps=1"]


def train_alone(output_dir: Path, *overrides: str) -> dict:
    return run(compose_config([*ALONE, *overrides, f"trainer.output_dir={output_dir}"], output_dir))


def test_damaged_shards_fall_back_to_the_previous_checkpoint(tmp_path: Path, caplog) -> None:
    """A truncated shard file of the last checkpoint: the resume takes previous.pt and its shards, trains the lost
    step again, and ends where an uninterrupted run ends; only the kept checkpoints' shards stay on disk."""
    train_alone(tmp_path / "uninterrupted")
    train_alone(tmp_path / "damaged", "trainer.stop_at_step=3")
    checkpoints = tmp_path / "damaged" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("shards_*")) == ["shards_00000002", "shards_00000003"]
    shard = next((checkpoints / "shards_00000003").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        train_alone(tmp_path / "damaged")
    assert "last.pt is damaged" in caplog.text and "previous.pt (step 2)" in caplog.text
    final = [model_state(tmp_path / name / "checkpoints" / "last.pt") for name in ("uninterrupted", "damaged")]
    assert largest_difference(*final) == 0.0


def test_a_full_disk_during_the_shards_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC in the middle of writing the shards: CheckpointSpaceError naming what to do, no temporary directory
    left, and the last checkpoint, its shards and the resume from them untouched."""
    import torch.distributed.checkpoint.filesystem as dcp_files

    train_alone(tmp_path / "run", "trainer.stop_at_step=2")
    checkpoints = tmp_path / "run" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp_files, "_write_item", no_space)
    with pytest.raises(CheckpointSpaceError, match="Free some space"):
        train_alone(tmp_path / "run", "trainer.stop_at_step=3")
    monkeypatch.undo()
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.rglob("*")} == before  # no temporary left either
    assert load_checkpoint(checkpoints / "last.pt")["progress"]["step"] == 2
    assert train_alone(tmp_path / "run")["steps"] == 4


def test_a_sharded_run_cannot_resume_unsharded(tmp_path: Path) -> None:
    train_alone(tmp_path / "run", "trainer.stop_at_step=2")
    with pytest.raises(ValueError, match=r"trainer.parallelism: fsdp \(the run\) -> ddp"):
        train_alone(tmp_path / "run", "trainer.parallelism=ddp")



@pytest.mark.distributed
def test_accumulation_reduces_the_gradients_once_per_step(runs: Path) -> None:
    """Three micro-batches, one reduce-scatter per unit (in the last one's backward), as DDP's `no_sync` gives one
    all-reduce; the negative control, three steps of one micro-batch, reduces three times as often."""
    counts = json.loads((runs / REDUCE_SCATTERS).read_text())
    assert counts == {"3 micro-batches x 1 step": 2, "1 micro-batch x 3 steps": 6}
