"""scripts/gpu_check.py (`make gpu-check`) at CPU sizes, so that it works the first time a GPU is there: every
section runs, the report is written, the GPU-hours follow from the throughput, and the attention check can fail."""

from __future__ import annotations

import json

import pytest
import torch
from script_modules import load_script

gpu_check = load_script("gpu_check")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("gpu")
    result = gpu_check.main(["--device", "cpu", "--output", str(output), "--models", "transformer_xl",
                             "--budget-s", "3600"])
    return result, output


def test_every_section_runs_and_is_reported(cpu_run):
    result, output = cpu_run
    assert json.loads((output / "cpu.json").read_text())["failures"] == result["failures"] == []
    report = (output / "cpu.md").read_text()
    for heading in ("relative attention", "Training step", "Optimizer step", "GPU decode", "Engine overhead",
                    "Sharded training", "GPU tests", "GPU-hours per row"):
        assert heading in report

    attention = result["attention"]
    assert attention["auto_proven_right"] and "math" in attention["right_everywhere"]
    assert {key for per in attention["backends"].values() for key in per} == {"q128_k640", "q64_k704", "q128_k576"}

    training = result["training"]["transformer_xl"]["compile off"]
    assert training["fits"] and training["throughput"] > 0 and training["unit"] == "tokens/s"
    assert training["peak_memory_bytes"] > 0 and 0 <= training["data_wait"] <= 1

    decode = result["decode"]  # on the CPU device the GPU decode's path gives the CPU path's images exactly
    assert decode["max_level_difference"] == 0 and decode["fraction_of_values_differing"] == 0
    assert all(cost["loader_ms_per_image"] > 0 and cost["main_ms_per_image"] > 0 for cost in decode["paths"].values())
    assert decode["gpu_over_cpu_host_cost"] > 0 and decode["training"]["status"].startswith("not run")

    candidates = result["optimizer"]["models"]["transformer_xl"]
    assert candidates["torch SGD-momentum fused"]["ratio_to_sgd_fused"] == 1.0
    assert candidates["NovoGrad foreach"]["median_ms"] > 0
    assert result["optimizer"]["memory_traffic_limit"] == {"vs SGD-momentum": 6 / 5, "vs AdamW": 6 / 7}

    assert result["engine"]["engine_over_bare"] > 0
    sharded = result["sharded"]["compile off"]  # Transformer-big under FSDP2 (not trained unsharded here: no ratio)
    assert sharded["fsdp"]["fits"] and sharded["fsdp"]["throughput"] > 0 and "throughput_ratio" not in sharded
    assert "compile on" not in result["sharded"]  # the CPU measures compile off only
    tests = result["gpu_tests"]  # on the CPU every GPU test skips, and the run says so
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["exit_status"] == 0


def test_gpu_hours_follow_from_the_throughput_and_the_rows_work(cpu_run):
    result, _ = cpu_run
    rows = {entry["row"]: entry for entry in result["estimate"]}
    assert len(rows) == len(gpu_check.paper_rows()) == 26
    row = rows["table6/novograd_12b"]
    throughput = result["training"]["transformer_xl"]["compile off"]["throughput"]
    assert row["work"] == 366_211 * 256 * 128  # the row's steps x streams x tgt_len
    assert row["gpu_hours"] == pytest.approx(row["work"] / throughput / 3600)
    assert row["wall_hours_on_8"] == pytest.approx(row["gpu_hours"] / 8)
    assert "gpu_hours" not in rows["table1/novograd_100ep"]  # ResNet-50 was not measured in this run
    assert rows["table1/novograd_100ep"]["work"] == 100 * 1_281_167


def test_the_attention_check_catches_a_backend_with_wrong_gradients(monkeypatch):
    """Negative control: `auto` with its position-bias gradient off by 5% is reported wrong, and fails the check."""
    true_gradients = gpu_check.attention_gradients

    def auto_off_by_five_percent(backend, *args, **kwargs):
        grads = true_gradients(backend, *args, **kwargs)
        if backend == "auto":
            grads["position_bias"] = grads["position_bias"] * 1.05
        return grads

    monkeypatch.setattr(gpu_check, "attention_gradients", auto_off_by_five_percent)
    monkeypatch.setattr(gpu_check, "attention_lengths", lambda device: [(16, 48)])
    result = gpu_check.check_attention(torch.device("cpu"), gpu_check.Budget(600))
    assert result["backends"]["auto"]["q16_k64"]["status"] == "WRONG"
    assert result["backends"]["math"]["q16_k64"]["status"] == "right"
    assert not result["auto_proven_right"]
    assert gpu_check.failures({"attention": result}) == ["model.attention_backend=auto is not proven right"]


@pytest.mark.parametrize("key", list(gpu_check.MODELS))
def test_the_gpu_training_runs_compose_at_the_rows_micro_batch(key):
    """The CUDA configuration of each model's throughput run, composed here (no GPU needed to find a bad key)."""
    overrides, _ = gpu_check.training_overrides(key, torch.device("cuda"), compile_model=True, steps=6)
    cfg = gpu_check.compose_config(overrides, "unused")
    row = gpu_check.compose_config([f"experiment={gpu_check.MODELS[key].row}"]).trainer
    assert cfg.trainer.micro_batch_size == row.micro_batch_size and cfg.trainer.precision == row.precision == "bf16"
    assert cfg.trainer.batch_size % cfg.trainer.micro_batch_size == 0 and cfg.trainer.compile
    assert cfg.trainer.device == "cuda" and cfg.trainer.max_steps == 12 and cfg.data.get("synthetic") is not None


def test_an_unknown_attention_backend_is_refused_with_the_choices():
    from models.transformer_xl import TransformerXL

    with pytest.raises(ValueError, match=r"model.attention_backend must be one of \['auto', 'cudnn', 'efficient', "
                                         r"'math'\], got 'flash'"):
        TransformerXL(vocab_size=10, n_layer=1, d_model=8, n_head=2, d_head=4, d_inner=16, cutoffs=[],
                      attention_backend="flash")


def test_the_gpu_decode_training_run_composes_and_passes_the_config_checks(monkeypatch):
    """The decode section's ResNet-50 run on CUDA (data.decode=gpu), composed and checked as a CUDA machine would."""
    from novograd.engine.config_checks import config_errors

    overrides, _ = gpu_check.training_overrides("resnet50_v2", torch.device("cuda"), compile_model=False, steps=6)
    cfg = gpu_check.compose_config([*overrides, "data.decode=gpu"], "unused")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert cfg.data.decode == "gpu" and config_errors(cfg, 1) == []
