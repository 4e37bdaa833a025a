"""`make memory` (scripts/memory.py): the committed figures against the paper's parameter counts and the state
each optimizer is documented to keep, and the measuring code itself on a tiny model (meta device vs real tensors).
"""

from __future__ import annotations

import json
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
    assert list(committed) == list(PAPER_PARAMS)
    for key, paper in PAPER_PARAMS.items():
        assert committed[key]["params"] == pytest.approx(paper, rel=0.01), key
        assert isinstance(committed[key]["tensors"], int) and committed[key]["tensors"] > 0


@pytest.mark.parametrize("key", list(PAPER_PARAMS))
def test_committed_state_is_what_each_optimizer_documents(committed, key):
    assert_documented_state(committed[key])


def test_committed_table_is_generated_from_the_committed_figures(committed):
    assert (ROOT / "results" / "memory.md").read_text() == memory.markdown(committed, "meta", None)


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
    results = memory.main(["--output", str(tmp_path / "memory")])
    assert json.loads((tmp_path / "memory.json").read_text()) == results
    rows = [line.split(" | ") for line in (tmp_path / "memory.md").read_text().splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows] == ["| optimizer", "| sgd", "| adam", "| adamw", "| novograd"]
    novograd = results["resnet50_v2"]["state_bytes"]["novograd"] / results["resnet50_v2"]["state_bytes"]["adam"]
    assert rows[-1][2] == f"{novograd:.4f}"


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
