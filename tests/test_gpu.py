"""The GPU paths the CPU suite cannot reach: bf16/fp16 autocast, channels-last, TF32, torch.compile, NovoGrad's CUDA
paths against the formulas, and the SDPA backend of Transformer-XL's relative attention.

Run with `make test-all` (or `pytest -m gpu`) on a machine with a CUDA device; skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.compose import compose_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMOKE_ON_GPU = ["experiment=table1/novograd_100ep", "debug=smoke", "logger=none", "trainer.device=cuda"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["novograd", "sgd"])
def test_resnet_smoke_trains_on_the_gpu(tmp_path: Path, precision: str, optimizer: str) -> None:
    summary = run(compose_config([*SMOKE_ON_GPU, f"trainer.precision={precision}", f"optimizer={optimizer}",
                                  "optimizer.fused=true"], tmp_path))
    assert summary["steps"] == 4 and 0.0 <= summary["top1"] <= 100.0


def test_compiled_model_resumes_bit_for_bit(tmp_path: Path) -> None:
    overrides = [*SMOKE_ON_GPU, "trainer.compile=true", "trainer.deterministic=true", "trainer.max_steps=6",
                 "trainer.eval_every_steps=null"]
    run(compose_config(overrides, tmp_path / "straight"))
    run(compose_config([*overrides, "trainer.stop_at_step=3"], tmp_path / "resumed"))
    run(compose_config(overrides, tmp_path / "resumed"))
    straight, resumed = (
        torch.load(tmp_path / name / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        for name in ("straight", "resumed")
    )
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", ["defaults", "averaging_amsgrad_maximize", "nemo_form_without_decay"])
@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
def test_every_novograd_path_matches_the_formulas_on_cuda(path: str, case: str, dtype: torch.dtype) -> None:
    """tests/test_novograd_paths.py's problem (a zero first gradient, a drop of lr) on CUDA tensors: the CUDA
    kernels of each path (foreach, Inductor's multi-tensor step) against the hand-computed reference."""
    from test_novograd_paths import FLAG_CASES, HYPERPARAMETERS, PATHS, SHAPES, TOLERANCE, problem, reference

    from novograd import NovoGrad

    torch._dynamo.reset()
    weights, stream, lrs = problem(sit_outs=False)
    params = [torch.nn.Parameter(torch.tensor(w, dtype=dtype, device="cuda").reshape(shape))
              for w, shape in zip(weights, SHAPES)]
    optimizer = NovoGrad(params, lr=lrs[0], **(HYPERPARAMETERS | FLAG_CASES[case]), **PATHS[path])
    for step, lr in zip(stream, lrs):
        for p, g, shape in zip(params, step, SHAPES):
            p.grad = torch.tensor(g, dtype=dtype, device="cuda").reshape(shape)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
    for got, want in zip(params, reference(False, **FLAG_CASES[case])):
        torch.testing.assert_close(got.detach().cpu().double(), want, **TOLERANCE[dtype])


def test_transformer_xl_attention_backend_auto_has_the_math_backends_gradients() -> None:
    """scripts/gpu_check.py's attention section: bf16 gradients of the position projections and both biases with
    each SDPA backend against fp32 math, at the rows' lengths and at lengths 64 mod 128 (PyTorch issue 196678)."""
    from script_modules import load_script

    gpu_check = load_script("gpu_check")
    result = gpu_check.check_attention(torch.device("cuda"), gpu_check.Budget(600))
    assert result["auto_proven_right"], result["backends"]


def test_device_batches_on_a_side_stream_give_the_cpu_path_batches() -> None:
    """The CUDA prefetcher (copy and `on_device` on a side stream, one batch ahead) hands over the batches the CPU
    path gives, normalised and channels-last."""
    from data.imagenet import LabelledImage
    from novograd.engine.batches import device_batches
    from novograd.workloads.imagenet import ImageNetWorkload

    workload = ImageNetWorkload(model={}, data={})
    generator = torch.Generator().manual_seed(0)
    batches = [LabelledImage(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=generator).pin_memory(),
                             torch.arange(4) + i, torch.zeros(4, dtype=torch.bool)) for i in range(3)]
    on_cpu = list(device_batches(batches, torch.device("cpu"), on_device=workload.on_device))
    on_gpu = [batch._replace(image=batch.image * 1)  # work on the compute stream, which must wait for the copy
              for batch in device_batches(batches, torch.device("cuda"), True, workload.on_device)]
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.image.is_contiguous(memory_format=torch.channels_last) and gpu.image.dtype == torch.float32
        assert torch.equal(gpu.image.cpu(), cpu.image) and torch.equal(gpu.label.cpu(), cpu.label)
