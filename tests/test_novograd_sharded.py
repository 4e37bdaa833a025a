"""NovoGrad on parameters sharded by FSDP2 (`fully_shard`, DTensors) on 2 gloo ranks equals NovoGrad on the same
model unsharded, on every path and flag, through one collective per step for the layer norms of all layers.

tests/novograd_sharded_worker.py runs every case in one torchrun launch (see there); this test reads its results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("novograd_sharded_worker.py")
# fp64 and fp32 to their rounding over 4 steps; bf16 weights are rounded each step (1 ulp of ~0.5 is 2e-3), and
# the layer norms reach them through an fp64 reduction of the shards' sums instead of one fp32 sum.
TOLERANCE = {"float64": 1e-9, "float32": 1e-6, "bfloat16": 4e-3}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("sharded") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
               str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text())


def cases(results: dict[str, dict], control: bool) -> dict[str, dict]:
    return {name: case for name, case in results.items() if name.startswith("per_shard_norms/") == control}


@pytest.mark.distributed
def test_every_path_and_flag_equals_the_unsharded_optimizer(results):
    checked = cases(results, control=False)
    assert {name.split("-")[1] for name in checked} == {"single", "foreach", "fused"}
    for name, case in checked.items():
        tolerance = TOLERANCE[name.split("-")[-1]]
        assert case["params"] <= tolerance and case["exp_avg"] <= tolerance, (name, case)


@pytest.mark.distributed
def test_one_collective_per_step_for_the_layer_norms_of_all_layers(results):
    """One all-reduce (c10d `allreduce_`) per optimizer step; LARC's norms take one more. Under GradScaler its own
    inf check adds DTensor's reduction of found_inf (functional `all_reduce`), the only collective of a skipped
    step."""
    for name, case in cases(results, control=False).items():
        expected = 2 if name.startswith("larc") else 1
        for step, counts in enumerate(case["collectives"]):
            if name.startswith("grad_scaler"):
                assert counts == ({"all_reduce": 1} if step == 1 else {"all_reduce": 1, "allreduce_": 1}), name
            else:
                assert counts == {"allreduce_": expected}, (name, step, counts)


@pytest.mark.distributed
def test_norms_taken_per_shard_fail_the_comparison(results):
    """The negative control: without the reduction each rank normalises by its shard's norm, and the weights are
    off by orders of magnitude more than the tolerance."""
    controls = cases(results, control=True)
    assert {name.split("-")[1] for name in controls} == {"single", "foreach", "fused"}
    for name, case in controls.items():
        assert case["params"] > 1e3 * TOLERANCE["float64"], (name, case)
