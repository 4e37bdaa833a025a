"""`make memory` (scripts/memory.py): the committed figures against the paper's parameter counts and the state
each optimizer is documented to keep, the measuring code itself on a tiny model (meta device vs real tensors), its
FSDP2 accounting against what `fully_shard` allocates on 2 gloo ranks, and the largest Transformer that fits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "memory.json"

# The paper's counts (Sections 5.1-5.4): 25.55M, 332.6M, 184.7M (185M in the text), 191.95M (191M in the text).
PAPER_PARAMS = {"resnet50_v2": 25.55e6, "jasper10x5": 332.6e6, "transformer_big": 184.7e6, "transformer_xl": 191.95e6}
FP32 = 4  # bytes


memory = load_script("memory")


def assert_documented_state(row: dict) -> None:
    """The bytes each optimizer keeps for fp32 parameters, by its documentation: SGD one momentum buffer; Adam and
    AdamW two buffers and a step counter per tensor; NovoGrad one buffer, then a second moment per tensor."""
    params, tensors = row["params"], row["tensors"]
    assert row["param_bytes"] == row["grad_bytes"] == FP32 * params
    assert row["state_bytes"] == {
        "sgd": FP32 * params,
        "adam": 2 * FP32 * params + FP32 * tensors,
        "adamw": 2 * FP32 * params + FP32 * tensors,
        "novograd": FP32 * params + FP32 * tensors,
    }
    assert row["step_counter_bytes"] == {"sgd": 0, "adam": FP32 * tensors, "adamw": FP32 * tensors, "novograd": 0}
    # The claim itself: without the step counters, NovoGrad's state is half of Adam's plus one scalar per tensor.
    buffers = {name: row["state_bytes"][name] - row["step_counter_bytes"][name] for name in ("adam", "novograd")}
    assert buffers["novograd"] == buffers["adam"] // 2 + FP32 * tensors


@pytest.fixture(scope="module")
def committed() -> dict:
    if not RESULTS.exists():
        pytest.fail(f"{RESULTS} is missing: run `make memory` (scripts/memory.py) and commit its outputs")
    return json.loads(RESULTS.read_text())


def test_committed_parameter_counts_are_the_papers(committed):
    assert list(committed["models"]) == list(PAPER_PARAMS)
    for key, paper in PAPER_PARAMS.items():
        assert committed["models"][key]["params"] == pytest.approx(paper, rel=0.01), key
        assert isinstance(committed["models"][key]["tensors"], int) and committed["models"][key]["tensors"] > 0


@pytest.mark.parametrize("key", list(PAPER_PARAMS))
def test_committed_state_is_what_each_optimizer_documents(committed, key):
    assert_documented_state(committed["models"][key])


@pytest.mark.parametrize("key", list(PAPER_PARAMS))
def test_committed_fsdp2_shards_hold_at_least_their_share_and_each_optimizers_state(committed, key):
    """Rank 0 holds at least 1/N of the parameters (more where dim 0 does not divide), the same bytes of gradients,
    a momentum-sized buffer per sharded buffer, and NovoGrad's second moments (Adam's steps) on every rank."""
    row = committed["models"][key]
    assert list(row["fsdp2"]) == [str(n) for n in memory.RANKS]
    for n, shard in row["fsdp2"].items():
        share = shard["param_bytes"]
        assert row["param_bytes"] / int(n) <= share < 2 * row["param_bytes"] / int(n), (key, n)
        assert shard["grad_bytes"] == share
        assert shard["state_bytes"] == {"sgd": share, "adam": 2 * share + FP32 * row["tensors"],
                                        "adamw": 2 * share + FP32 * row["tensors"],
                                        "novograd": share + FP32 * row["tensors"]}, (key, n)


def test_committed_largest_transformers_fit_and_one_more_layer_pair_does_not(committed):
    """With 12 bytes per parameter against AdamW's 16, NovoGrad fits about 4/3 of the parameters."""
    largest = committed["largest_transformer"]
    assert list(largest["fits"]) == [f"{m:.0f}" for m in memory.GPU_MEMORY]
    for memory_bytes, by_ranks in largest["fits"].items():
        assert list(by_ranks) == [str(n) for n in memory.RANKS]
        for n, fits in by_ranks.items():
            for fit in fits.values():
                assert fit["bytes"] <= float(memory_bytes) < fit["bytes"] + fit["bytes_per_layer_pair"], (n, fit)
            assert fits["novograd"]["params"] / fits["adamw"]["params"] == pytest.approx(4 / 3, rel=2e-3)


def test_committed_table_is_generated_from_the_committed_figures(committed):
    assert (ROOT / "results" / "memory.md").read_text() == memory.markdown(committed, "meta", None)


@pytest.mark.distributed
def test_fsdp2_accounting_equals_what_fully_shard_allocates_on_each_rank(tmp_path):
    """tests/memory_fsdp2_worker.py: a model with uneven shards (rank 1's last layer empty) under `fully_shard` on
    2 gloo ranks, one step of each optimizer; the accounting on the same model, per rank, must give each rank's
    bytes exactly. Negative controls: the unpadded shards (rank 1's state) are not what FSDP2 allocates for the
    parameters, and the ranks hold different state."""
    from memory_fsdp2_worker import make_model

    out = tmp_path / "fsdp2.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(ROOT / "tests" / "memory_fsdp2_worker.py"), str(out)]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    measured = json.loads(out.read_text())
    model = make_model()
    tensors = len(list(model.parameters()))
    for rank, real in enumerate(measured):
        accounted = memory.measure_fsdp2(model, 2, rank)
        assert {key: real[key] for key in accounted} == accounted, rank
        assert real["plain_scalars"] == {"sgd": 0, "adam": tensors, "adamw": tensors, "novograd": tensors}
    assert measured[1]["state_bytes"]["sgd"] < measured[1]["param_bytes"]  # padding: rank 1's shards are smaller
    assert measured[0]["state_bytes"] != measured[1]["state_bytes"]


def test_a_layer_pair_adds_the_same_bytes_and_the_largest_fit_is_measured_directly(monkeypatch):
    """The extrapolation in depth, checked on the tiny Transformer: rank 0's bytes at 1, 2 and 3 layer pairs are
    affine, and the depth found for a small memory fits when built and measured while one pair more does not."""
    def whole(layers: int, optimizer: str, ranks: int = 4) -> int:
        model = memory.build_model("transformer_tiny", "meta", encoder_layers=layers, decoder_layers=layers)
        return memory.fsdp2_whole_bytes(memory.measure_fsdp2(model, ranks, optimizers=[optimizer]), optimizer)

    assert whole(3, "novograd") - whole(2, "novograd") == whole(2, "novograd") - whole(1, "novograd")
    monkeypatch.setattr(memory, "TRANSFORMER", "transformer_tiny")
    budget = 2.5e6
    fits = memory.largest_transformer([4], [budget])["fits"][f"{budget:.0f}"]["4"]
    for name, fit in fits.items():
        assert whole(fit["layers"], name) == fit["bytes"] <= budget < whole(fit["layers"] + 1, name), name
    assert fits["novograd"]["layers"] > fits["adamw"]["layers"]


def test_measurement_on_meta_matches_real_tensors():
    """The tiny ResNet (same code as ResNet-50 v2) measured on the meta device and on real CPU tensors."""
    on_meta = memory.measure_model("resnet_v2_tiny", "meta", num_classes=4)
    on_cpu = memory.measure_model("resnet_v2_tiny", "cpu", num_classes=4)
    assert on_meta == on_cpu
    assert on_meta["params"] == 33_708  # configs/model/resnet_v2_tiny.yaml
    assert_documented_state(on_meta)


def test_state_of_a_variant_is_measured_not_assumed(monkeypatch):
    """AMSGrad adds a third Adam buffer: the measurement must see it (a formula for plain Adam would not)."""
    model = memory.build_model("resnet_v2_tiny", "meta", num_classes=4)
    plain = memory.measure_state(model, "adam")["state_bytes"]
    original = memory.optimizer_config
    monkeypatch.setattr(memory, "optimizer_config", lambda name: {**original(name), "amsgrad": True})
    with_amsgrad = memory.measure_state(model, "adam")["state_bytes"]
    params = sum(p.numel() for p in model.parameters())
    assert with_amsgrad == plain + FP32 * params


def test_main_writes_json_and_markdown(tmp_path, monkeypatch):
    tiny = memory.ModelSpec("resnet_v2_tiny", {"num_classes": 4}, memory.resnet_loss)
    monkeypatch.setattr(memory, "MODELS", {"resnet50_v2": tiny})
    monkeypatch.setattr(memory, "TRANSFORMER", "transformer_tiny")
    results = memory.main(["--output", str(tmp_path / "memory"), "--ranks", "2", "--gpu-memory", "1e7"])
    assert json.loads((tmp_path / "memory.json").read_text()) == results
    rows = [line.split(" | ") for line in (tmp_path / "memory.md").read_text().splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows[:5]] == ["| optimizer", "| sgd", "| adam", "| adamw", "| novograd"]
    row = results["models"]["resnet50_v2"]
    assert rows[4][2] == f"{row['state_bytes']['novograd'] / row['state_bytes']['adam']:.4f}"
    assert rows[5][:2] == ["| model", "ranks"] and rows[6][:2] == ["| resnet50_v2", "2"]
    fits = results["largest_transformer"]["fits"]["10000000"]["2"]
    assert rows[-1][:3] == ["| 0.01 GB", "2", str(fits["adamw"]["layers"])]


@pytest.mark.slow
def test_cuda_batches_run_on_the_tiny_twins():
    """The micro-batches of `--device cuda` (untested on a GPU) give a finite loss and gradients on the tiny
    models on the CPU, in bf16 autocast as on the GPU."""
    tiny = {"resnet50_v2": ("resnet_v2_tiny", {"num_classes": 1000}), "jasper10x5": ("jasper_tiny", {}),
            "transformer_big": ("transformer_tiny", {}), "transformer_xl": ("transformer_xl_tiny", {})}
    for key, spec in memory.MODELS.items():
        model = memory.build_model(tiny[key][0], "cpu", **tiny[key][1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = spec.loss_of_batch(model, torch.device("cpu"))
        loss.backward()
        assert torch.isfinite(loss), key
        assert all(p.grad is not None for p in model.parameters()), key
