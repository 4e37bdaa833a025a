"""`make gpu-check`: what this suite does on a GPU, measured in one command (about 8 minutes on one GPU).

Sections, each in the same run and written to results/gpu/<device>.json and .md (printed too):

1. attention: Transformer-XL's relative attention hands its position term to `scaled_dot_product_attention` as a
   float `attn_mask` that needs gradients. Each SDPA backend (`model.attention_backend`) is run in bf16 at the rows'
   lengths and at lengths 64 mod 128 (PyTorch issue 196678: cuDNN NaN gradients there on H100/H200), and the
   gradients of the position projection and of both biases are compared with the math backend's; the verdict says
   whether `auto` (the model's default) is proven right.
2. training: each paper model at full size through the engine (`novograd.engine.run`, configs/debug/fullsize.yaml
   with the row's precision and per-GPU micro-batch), trainer.compile off and on: throughput in the workload's
   unit, peak memory, whether the micro-batch fits; NVIDIA DeepLearningExamples' published per-GPU figures beside
   them where they exist.
3. optimizer: NovoGrad's step (foreach, fused) on each model's parameter shapes against torch's fused SGD-momentum
   and AdamW, and apex's FusedNovoGrad where apex is built, as ratios in the same run
   (scripts/bench_optimizer.py), beside the memory-traffic limit.
4. decode: ImageNet's `data.decode=gpu` (nvJPEG on the device, crops there) against the CPU decode path on the same
   500x375 photograph-like JPEGs in the same run: host CPU seconds per image (the loader's work and the main
   process's), how far the device's images are from the CPU path's (levels), and ResNet-50's training steps through
   the engine with it (throughput and data-wait share).
5. engine: steps/s through the engine against a bare loop on the same model (scripts/bench_engine.py).
6. sharded: Transformer-big trained the same way under FSDP2 (`trainer.parallelism=fsdp`, a process group of one),
   trainer.compile off and on (each block compiled, then sharded): that the sharded path runs here (nccl, bf16
   gathers, checkpoints through torch.distributed.checkpoint), its throughput and peak memory as ratios to section
   2's unsharded run.
7. gpu tests: `pytest -m gpu` in a subprocess, pass/fail counts.
8. estimate: every paper row's GPU-hours on 8 such GPUs, from the measured throughput and the row's total work.

The training runs record the share of their timed steps spent waiting for data (`train/data_wait`).

`--device cpu` runs every section at tiny sizes (tiny models, debug=smoke twins, few steps, compile off, the
fused optimizer path left out) in a few minutes on 2 cores; tests/test_gpu_check.py runs it for one model, and
composes every model's GPU configuration, so that the script works before a GPU is there. Those figures are a
CPU's and say nothing about a GPU.

    python scripts/gpu_check.py [--device cuda|cpu] [--output DIR] [--budget-s 450] [--compile off on]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # run as a plain script from any directory

import bench_data  # noqa: E402
import bench_engine  # noqa: E402
import bench_optimizer  # noqa: E402
from memory import MODELS as MEMORY_MODELS  # noqa: E402
from memory import build_model  # noqa: E402

from novograd.engine.compose import compose_config  # noqa: E402
from novograd.engine.usage import peak_host_memory_bytes  # noqa: E402

GPUS_PER_ROW = 8  # the paper's rows ran on 8-GPU nodes; the estimate is for 8 GPUs like the one measured

# Dataset sizes for the rows that train by epochs (the others state their steps).
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC2012 training set (Russakovsky et al. 2015; docs/hyperparameters.md)
# LibriSpeech 960 h: train-clean-100 100.6 h + train-clean-360 363.6 h + train-other-500 496.7 h (Panayotov et al.
# 2015, Table 1). Utterances over 16.7 s are dropped (data.max_duration), which this estimate ignores (<1% of audio).
LIBRISPEECH_TRAIN_SECONDS = (100.6 + 363.6 + 496.7) * 3600

# NVIDIA DeepLearningExamples' published single-GPU training throughput for a model that matches ours, shown beside
# the measured figure with the GPU it was measured on. Only Transformer-XL's is here: DLE's ResNet-50 is v1.5 (not
# the pre-activation v2 of the paper), and no other figure was checked against its source.
PUBLISHED: dict[str, list[dict[str, Any]]] = {
    # PyTorch/LanguageModeling/Transformer-XL/README.md, "Training performance: NVIDIA DGX A100 (8x A100 40GB)",
    # base model, 1 GPU, batch 32 per GPU, pytorch-20.06 container; DLE's base trains with tgt_len 192 and
    # mem_len 192 where the paper's rows use 128 and 512.
    "transformer_xl": [
        {"gpu": "A100 40GB", "precision": "mixed", "batch_per_gpu": 32, "throughput": 59_961, "unit": "tokens/s"},
        {"gpu": "A100 40GB", "precision": "TF32", "batch_per_gpu": 32, "throughput": 41_527, "unit": "tokens/s"},
    ],
}


@dataclass(frozen=True)
class PaperModel:
    """A paper model (keys as in `make memory`), the row that represents it and the unit of its throughput."""

    row: str
    tiny_model: str          # --device cpu
    unit: str                # the workload's unit of throughput
    plan_unit_factor: str    # how one unit of the engine's batch plan converts: "1", "tgt_len", "utterance_s"


MODELS = {
    "resnet50_v2": PaperModel("table1/novograd_100ep", "resnet_v2_tiny", "images/s", "1"),
    "jasper10x5": PaperModel("table4/novograd", "jasper_tiny", "audio-seconds/s", "utterance_s"),
    "transformer_big": PaperModel("table7/novograd", "transformer_tiny", "tokens/s", "1"),
    "transformer_xl": PaperModel("table6/novograd_12b", "transformer_xl_tiny", "tokens/s", "tgt_len"),
}


class Budget:
    """Wall seconds left for the whole check: work that would start past it is recorded as not run."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------------ 1. attention
def attention_lengths(device: torch.device) -> list[tuple[int, int]]:
    """(query, memory) lengths: the training rows' (128, 512) and evaluation's (64, 640), both keys 64 mod 128 for
    evaluation; (128, 448) puts the keys at 576 = 64 mod 128 with the training query length."""
    return [(128, 512), (64, 640), (128, 448)]


def attention_gradients(backend: str, query_len: int, mem_len: int, device: torch.device, dims: dict[str, int],
                        dtype: torch.dtype | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients of the position projection (every layer) and of u and v after one forward and backward of a
    Transformer-XL with `backend` over a segment of `query_len` and a memory of `mem_len`, under autocast to
    `dtype` (None: fp32). The same seed gives the same weights and inputs for every backend."""
    from models.transformer_xl import TransformerXL

    torch.manual_seed(seed)
    model = TransformerXL(vocab_size=dims["vocab"], n_layer=dims["layers"], d_model=dims["d_model"],
                          n_head=dims["heads"], d_head=dims["d_model"] // dims["heads"], d_inner=4 * dims["d_model"],
                          dropout=0.0, tgt_len=query_len, mem_len=mem_len, cutoffs=[],
                          attention_backend=backend).to(device)
    tokens = torch.randint(0, dims["vocab"], (dims["batch"], query_len + 1), device=device)
    memory = [torch.randn(dims["batch"], mem_len, dims["d_model"], device=device) for _ in model.layers]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        nll, _ = model(tokens[:, :-1], tokens[:, 1:], memory)
    nll.mean().backward()
    grads = {"content_bias": model.content_bias.grad, "position_bias": model.position_bias.grad}
    grads |= {f"layers.{i}.position": layer.attention.position.weight.grad for i, layer in enumerate(model.layers)}
    return {name: grad.detach().float() for name, grad in grads.items()}


def relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return float((value - truth).norm() / truth.norm().clamp_min(1e-30))


def check_attention(device: torch.device, budget: Budget) -> dict[str, Any]:
    """Each backend's bf16 gradients against fp32 math (the truth), beside bf16 math's own error: a backend passes
    where its gradients are finite and its worst error is within 3x bf16 math's (or 1e-2)."""
    from models.transformer_xl import ATTENTION_BACKENDS

    dims = (dict(vocab=1000, layers=2, d_model=512, heads=8, batch=2) if device.type == "cuda"
            else dict(vocab=50, layers=1, d_model=32, heads=2, batch=1))
    lengths = attention_lengths(device)
    results: dict[str, Any] = {"dims": dims, "lengths": lengths, "backends": {}}
    for query_len, mem_len in lengths:
        truth = attention_gradients("math", query_len, mem_len, device, dims, None)
        reference = attention_gradients("math", query_len, mem_len, device, dims, torch.bfloat16)
        tolerance = max(3 * max(relative_error(reference[k], truth[k]) for k in truth), 1e-2)
        for backend in ATTENTION_BACKENDS:
            entry = results["backends"].setdefault(backend, {})
            key = f"q{query_len}_k{query_len + mem_len}"
            if budget.spent():
                entry[key] = {"status": "not run (time budget)"}
                continue
            try:
                grads = attention_gradients(backend, query_len, mem_len, device, dims, torch.bfloat16)
            except RuntimeError as error:  # no kernel of this backend takes these inputs on this device
                entry[key] = {"status": "unavailable", "error": str(error).splitlines()[0][:200]}
                continue
            finite = all(torch.isfinite(g).all() for g in grads.values())
            worst = max(relative_error(grads[k], truth[k]) for k in truth) if finite else math.inf
            entry[key] = {"status": "right" if worst <= tolerance else "WRONG", "worst_relative_error": worst,
                          "tolerance": tolerance, "finite": bool(finite)}
    auto = results["backends"]["auto"]
    results["auto_proven_right"] = all(v["status"] == "right" for v in auto.values())
    results["right_everywhere"] = [b for b, per in results["backends"].items()
                                   if all(v["status"] == "right" for v in per.values())]
    return results


# ------------------------------------------------------------------------------------------------- 2. training
def training_overrides(key: str, device: torch.device, compile_model: bool, steps: int) -> tuple[list[str], int]:
    """The engine's overrides for one model's throughput run, and how many optimizer steps to time."""
    spec = MODELS[key]
    common = [f"experiment={spec.row}", "logger=none", f"trainer.device={device.type}",
              f"trainer.compile={str(compile_model).lower()}", f"trainer.max_steps={2 * steps}",
              f"trainer.log_every_steps={steps}", "trainer.eval_every_steps=null", "trainer.resume=false"]
    if device.type != "cuda":
        return [*common, "debug=smoke"], steps
    row = compose_config([f"experiment={spec.row}"]).trainer
    unit_batch = row.micro_batch_size
    # One GPU's share of the row's step on 8 GPUs: as many micro-batches as it accumulates there.
    accumulation = max(1, round(row.batch_size / (row.micro_batch_size * GPUS_PER_ROW)))
    overrides = [*common, "debug=fullsize", f"trainer.precision={row.precision}",
                 f"trainer.micro_batch_size={unit_batch}", f"trainer.batch_size={unit_batch * accumulation}"]
    # Enough synthetic examples for a micro-batch of the row's size (the CPU twins hold one or two), and the
    # real configs' loader workers where decoding is the work (the twins load in the main process).
    workers = ["data.num_workers=8", "data.pin_memory=true"]
    overrides += {
        "resnet50_v2": workers,  # 1000 training images, one per class
        "jasper10x5": [*workers, f"data.synthetic.num_train={unit_batch}"],
        "transformer_big": ["data.synthetic.num_train=1024"],
        "transformer_xl": [],
    }[key]
    return overrides, steps


def plan_unit_factor(key: str, cfg: Any) -> float:
    """Workload units per unit of the engine's batch plan: seconds per synthetic utterance, tokens per stream."""
    factor = MODELS[key].plan_unit_factor
    if factor == "tgt_len":
        return float(cfg.model.tgt_len)
    if factor == "utterance_s":  # the twin's utterances are uniform over smoke_seconds (fullsize: one length)
        return float(statistics.fmean(cfg.data.synthetic.get("smoke_seconds", [0.4, 1.6])))
    return 1.0


def measure_training(key: str, device: torch.device, compile_model: bool, steps: int, workdir: Path,
                     extra: tuple[str, ...] = ()) -> dict:
    """One engine run of `2 * steps` steps (`extra` overrides added); the throughput and data-wait share of the
    second window of `steps` (the first warms up and compiles), the peak memory of the whole run, and whether it
    fitted."""
    from novograd.engine import run

    overrides, steps = training_overrides(key, device, compile_model, steps)
    overrides += extra
    output_dir = workdir / "_".join([key, f"compile_{compile_model}", *extra]).replace("=", "_")
    cfg = compose_config(overrides, output_dir)
    free_memory(device)
    start = time.perf_counter()
    try:
        run(cfg)
    except torch.cuda.OutOfMemoryError as error:
        free_memory(device)
        return {"fits": False, "error": str(error).splitlines()[0][:200], "micro_batch": cfg.trainer.micro_batch_size}
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "train/throughput" in r][-1]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_host_memory_bytes()
    result = {
        "fits": True,
        "throughput": timed["train/throughput"] * plan_unit_factor(key, cfg),
        "unit": MODELS[key].unit,
        "data_wait": timed["train/data_wait"],
        "peak_memory_bytes": peak,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "host ru_maxrss",
        "precision": cfg.trainer.precision,
        "micro_batch": cfg.trainer.micro_batch_size,
        "batch": cfg.trainer.batch_size,
        "timed_steps": steps,
        "wall_s": time.perf_counter() - start,
    }
    free_memory(device)
    return result


def check_training(device: torch.device, budget: Budget, models: list[str], compile_modes: list[bool],
                   steps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for compile_model in compile_modes:  # every model without compile first: the costliest runs come last
            for key in models:
                label = f"compile {'on' if compile_model else 'off'}"
                if budget.spent():
                    results.setdefault(key, {})[label] = {"status": "not run (time budget)"}
                    continue
                results.setdefault(key, {})[label] = measure_training(key, device, compile_model, steps, Path(tmp))
                print(f"  training {key}, {label}: {results[key][label]}", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ 3. optimizer
# NovoGrad reads every gradient twice (its layer norms, then the update) where SGD-momentum reads it once: 6 passes
# over parameter-sized memory (read g twice, read and write m and w) against SGD-momentum's 5 and AdamW's 7 (g, m,
# v and w read, m, v and w written). A memory-bound step can at best take these ratios.
MEMORY_PASSES = {"NovoGrad": 6, "SGD-momentum": 5, "AdamW": 7}


def model_shapes(key: str, device: torch.device) -> list[torch.Size]:
    """The parameter shapes of the model as training builds it (the tiny model with --device cpu), on meta."""
    if device.type == "cuda":
        spec = MEMORY_MODELS[key]
        model = build_model(spec.config, "meta", **spec.kwargs)
    else:
        model = build_model(MODELS[key].tiny_model, "meta")
    return [p.shape for p in model.parameters()]


def check_optimizer(device: torch.device, budget: Budget, models: list[str], rounds: int,
                    include_fused: bool) -> dict[str, Any]:
    names = ["NovoGrad foreach", *(["NovoGrad fused"] if include_fused else []),
             bench_optimizer.SGD_REFERENCE, bench_optimizer.ADAMW_REFERENCE]
    if device.type == "cuda" and bench_optimizer.APEX_CANDIDATE in bench_optimizer.CANDIDATES:
        names.append(bench_optimizer.APEX_CANDIDATE)
    limit = {"vs SGD-momentum": MEMORY_PASSES["NovoGrad"] / MEMORY_PASSES["SGD-momentum"],
             "vs AdamW": MEMORY_PASSES["NovoGrad"] / MEMORY_PASSES["AdamW"]}
    results: dict[str, Any] = {"memory_traffic_limit": limit, "models": {}}
    for key in models:
        if budget.spent():
            results["models"][key] = {"status": "not run (time budget)"}
            continue
        shapes = model_shapes(key, device)
        bench_optimizer.MODELS[key] = bench_optimizer.Model(lambda shapes=shapes: shapes, names)
        measured = bench_optimizer.bench_model(key, names, device, rounds=rounds, steps=2, warmup=3)
        results["models"][key] = {name: {k: row[k] for k in ("median_ms", "ratio_to_sgd_fused",
                                                              "ratio_to_adamw_fused", "state_bytes")}
                                  for name, row in measured["candidates"].items()}
        free_memory(device)
    return results


# --------------------------------------------------------------------------------------------------- 4. decode
def decode_path_cost(root: Path, decode: str, device: torch.device, repeats: int) -> tuple[dict[str, float], Any]:
    """Host CPU seconds per image of ImageNet's training path with `decode` over the images under `root`, split
    into the loader's part (read, decode where the workers decode, crop parameters, collate) and the main
    process's (`on_device`: normalisation, and the decode where the device decodes), the device synchronised
    before the clock stops; and the last uint8 batch. Process CPU time, all threads counted (nvJPEG's too)."""
    from data.imagenet import build_imagenet_datasets, decode_on_device
    from novograd.workloads.imagenet import ImageNetWorkload

    train, _ = build_imagenet_datasets(root, num_classes=2, decode=decode)
    workload = ImageNetWorkload(model={}, data={"image_size": 224, "eval_resize": 256})
    loader_s = device_s = 0.0
    for repeat in range(repeats + 1):  # the first pass warms up (imports, nvJPEG's handles), untimed
        started = time.process_time()
        samples = []
        for index in range(len(train)):
            torch.manual_seed(index)
            samples.append(train[index])
        batch = workload.collate(samples)
        loaded = time.process_time()
        batch = batch._replace(label=batch.label.to(device), skipped=batch.skipped.to(device))
        if decode == "cpu":
            batch = batch._replace(image=batch.image.to(device))
        workload.on_device(batch)
        synchronize(device)
        if repeat:
            loader_s += loaded - started
            device_s += time.process_time() - loaded
    images = batch.image if decode == "cpu" else decode_on_device(batch.image, device, 224, 256)
    count = repeats * len(train)
    return {"loader_ms_per_image": 1e3 * loader_s / count, "main_ms_per_image": 1e3 * device_s / count,
            "host_ms_per_image": 1e3 * (loader_s + device_s) / count}, images.cpu()


def check_decode(device: torch.device, budget: Budget, steps: int, repeats: int, per_class: int) -> dict[str, Any]:
    """The GPU decode's host cost per image against the CPU decode's (over `per_class` images of each of 2
    classes), the two paths' images compared, and (on CUDA) ResNet-50's training steps with `data.decode=gpu`."""
    with tempfile.TemporaryDirectory() as tmp:
        root = bench_data.write_photo_folder(Path(tmp) / "photos", per_class=per_class)
        paths = {}
        for decode in ("cpu", "gpu"):
            paths[decode], images = decode_path_cost(root, decode, device, repeats)
            paths[decode]["images"] = images
        difference = (paths["gpu"].pop("images").int() - paths["cpu"].pop("images").int()).abs()
        result: dict[str, Any] = {
            "paths": paths, "images_per_repeat": 2 * per_class, "repeats": repeats,
            "gpu_over_cpu_host_cost": paths["gpu"]["host_ms_per_image"] / paths["cpu"]["host_ms_per_image"],
            "max_level_difference": int(difference.max()),
            "fraction_of_values_differing": float((difference > 0).float().mean()),
        }
        print(f"  decode: {result}", flush=True)
        if device.type != "cuda":
            result["training"] = {"status": "not run (data.decode=gpu needs CUDA)"}
        elif budget.spent():
            result["training"] = {"status": "not run (time budget)"}
        else:
            result["training"] = measure_training("resnet50_v2", device, False, steps, Path(tmp),
                                                  extra=("data.decode=gpu",))
            print(f"  training resnet50_v2 with data.decode=gpu: {result['training']}", flush=True)
    return result


# --------------------------------------------------------------------------------------------------- 5. engine
def check_engine(device: torch.device, budget: Budget, steps: int, repeats: int) -> dict[str, Any]:
    overrides = [*bench_engine.OVERRIDES, f"trainer.device={device.type}"]
    engine, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            if budget.spent():
                break
            engine.append(bench_engine.engine_steps_per_second(steps, Path(tmp) / f"run{repeat}", overrides))
            bare.append(bench_engine.bare_steps_per_second(steps, overrides))
    if not engine:
        return {"status": "not run (time budget)"}
    return {"model": "resnet_v2_tiny (debug=smoke)", "steps": steps, "repeats": len(engine),
            "engine_steps_per_s": statistics.median(engine), "bare_steps_per_s": statistics.median(bare),
            "engine_over_bare": statistics.median(engine) / statistics.median(bare)}


# -------------------------------------------------------------------------------------------- 6. sharded training
SHARDED_MODEL = "transformer_big"  # 12 sharded layers and a root holding the tied embeddings


def check_sharded(device: torch.device, budget: Budget, steps: int, training: dict[str, Any],
                  compile_modes: list[bool]) -> dict[str, Any]:
    """`SHARDED_MODEL` through the engine under FSDP2 as section 2 trains it unsharded, per trainer.compile setting;
    the ratios to that run. A failure is reported, not raised: the other sections' figures still get written."""
    results: dict[str, Any] = {"model": SHARDED_MODEL}
    with tempfile.TemporaryDirectory() as tmp:
        for compile_model in compile_modes:
            label = f"compile {'on' if compile_model else 'off'}"
            if budget.spent():
                results[label] = {"status": "not run (time budget)"}
                continue
            try:
                sharded = measure_training(SHARDED_MODEL, device, compile_model, steps, Path(tmp),
                                           ("trainer.parallelism=fsdp",))
            except Exception as error:
                results[label] = {"error": f"{type(error).__name__}: {error}"[:300]}
                continue
            entry: dict[str, Any] = {"fsdp": sharded}
            unsharded = training.get(SHARDED_MODEL, {}).get(label, {})
            if sharded.get("fits") and unsharded.get("fits"):
                entry["throughput_ratio"] = sharded["throughput"] / unsharded["throughput"]
                entry["peak_memory_ratio"] = sharded["peak_memory_bytes"] / unsharded["peak_memory_bytes"]
            results[label] = entry
            print(f"  sharded {SHARDED_MODEL}, {label}: {entry}", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ 7. GPU tests
def run_gpu_tests(device: torch.device, budget: Budget) -> dict[str, Any]:
    """`pytest -m gpu` in a subprocess (all GPU tests; on the CPU only tests/test_gpu.py, where they skip)."""
    if budget.left() < 30:
        return {"status": "not run (time budget)"}
    paths = ["tests"] if device.type == "cuda" else ["tests/test_gpu.py"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={report}", *paths]
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        try:
            completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                       timeout=max(30, budget.left()))
        except subprocess.TimeoutExpired:
            return {"status": "timed out (time budget)", "command": " ".join(command)}
        suites = ElementTree.parse(report).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", completed.stdout, flags=re.M)
    return {**counts, "exit_status": completed.returncode, "failed_tests": failed, "command": " ".join(command)}


# ------------------------------------------------------------------------------------------------- 8. estimate
def row_work(row: str) -> tuple[float, str]:
    """A row's total training work in its workload's unit, and how it was counted."""
    cfg = compose_config([f"experiment={row}"])
    trainer, workload = cfg.trainer, str(cfg.workload._target_).rsplit(".", 1)[-1]
    if "ImageNet" in workload:
        return trainer.epochs * IMAGENET_TRAIN_IMAGES, f"{trainer.epochs} epochs x {IMAGENET_TRAIN_IMAGES:,} images"
    if "LibriSpeech" in workload:
        hours = LIBRISPEECH_TRAIN_SECONDS / 3600
        return trainer.epochs * LIBRISPEECH_TRAIN_SECONDS, f"{trainer.epochs} epochs x {hours:,.1f} h of audio"
    if "WikiText" in workload:
        tokens = trainer.max_steps * trainer.batch_size * cfg.model.tgt_len
        return tokens, f"{trainer.max_steps:,} steps x {trainer.batch_size} streams x {cfg.model.tgt_len} tokens"
    return trainer.max_steps * trainer.batch_size, f"{trainer.max_steps:,} steps x up to {trainer.batch_size:,} tokens"


ROW_MODEL = {"resnet50_imagenet": "resnet50_v2", "jasper_librispeech": "jasper10x5",
             "transformer_big_wmt14": "transformer_big", "transformer_xl_wikitext103": "transformer_xl"}


def paper_rows() -> list[str]:
    return sorted(str(p.relative_to(ROOT / "configs" / "experiment").with_suffix(""))
                  for p in (ROOT / "configs" / "experiment").glob("table*/*.yaml"))


def row_model(row: str) -> str:
    text = (ROOT / "configs" / "experiment" / f"{row}.yaml").read_text()
    return next(model for base, model in ROW_MODEL.items() if f"/experiment/{base}" in text)


def estimate_rows(training: dict[str, Any]) -> list[dict[str, Any]]:
    """GPU-hours of every row on 8 GPUs from the best measured throughput of its model (compile on or off)."""
    rows = []
    for row in paper_rows():
        key = row_model(row)
        measured = [m for m in training.get(key, {}).values() if m.get("fits")]
        work, counted = row_work(row)
        entry = {"row": row, "model": key, "work": work, "work_counted_as": counted}
        if measured:
            best = max(measured, key=lambda m: m["throughput"])
            hours = work / (best["throughput"] * GPUS_PER_ROW) / 3600
            entry |= {"throughput_per_gpu": best["throughput"], "unit": best["unit"],
                      "wall_hours_on_8": hours, "gpu_hours": hours * GPUS_PER_ROW}
        rows.append(entry)
    return rows


# ------------------------------------------------------------------------------------------------------ report
def device_label(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fmt(value: Any, digits: int = 3) -> str:
    return f"{value:,.{digits}g}" if isinstance(value, (int, float)) else str(value)


def markdown(result: dict[str, Any]) -> str:
    info = result["machine"]
    lines = [f"# make gpu-check on {info['device_name']}", "",
             f"torch {info['torch']}, CUDA {info['cuda']}, {info['started']}, {result['wall_s']:.0f} s. "
             + ("Tiny models at CPU sizes: these figures say nothing about a GPU." if info["device"] == "cpu"
                else "Paper models at full size on synthetic data of the real shapes."), ""]
    attention = result.get("attention", {})
    if attention:
        lines += ["## Transformer-XL relative attention: bf16 gradients against fp32 math", "",
                  "Worst relative error of the position projections' and both biases' gradients; a backend is right "
                  "where they are finite and within 3x bf16 math's own error (at least 1e-2).", ""]
        keys = [f"q{q}_k{q + m}" for q, m in attention["lengths"]]
        lines += ["| backend | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for backend, per in attention["backends"].items():
            cells = [f"{v['status']} ({v['worst_relative_error']:.2g})" if "worst_relative_error" in v
                     else v["status"] for v in (per[k] for k in keys)]
            lines.append(f"| {backend} | " + " | ".join(cells) + " |")
        verdict = "proven right" if attention["auto_proven_right"] else "NOT proven right: set model.attention_backend"
        lines += ["", f"`model.attention_backend=auto`: {verdict}; right at every length: "
                      f"{', '.join(attention['right_everywhere']) or 'none'}.", ""]
    training = result.get("training", {})
    if training:
        lines += ["## Training step through the engine, per GPU", "",
                  "| model | row | precision | micro-batch | compile | throughput | data wait | peak memory (GB) | "
                  "fits | DeepLearningExamples, 1 GPU |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, modes in training.items():
            for label, m in modes.items():
                if "fits" not in m:
                    lines.append(f"| {key} | {MODELS[key].row} | | | {label} | {m.get('status')} | | | | |")
                    continue
                throughput = f"{m['throughput']:,.1f} {m['unit']}" if m["fits"] else "-"
                wait = f"{m['data_wait']:.0%}" if m["fits"] else "-"
                peak = f"{m['peak_memory_bytes'] / 1e9:.2f}" if m["fits"] else "-"
                published = "; ".join(f"{p['throughput']:,} {p['unit']} ({p['gpu']}, {p['precision']}, batch "
                                      f"{p['batch_per_gpu']})" for p in PUBLISHED.get(key, []))
                lines.append(f"| {key} | {MODELS[key].row} | {m.get('precision', '')} | {m['micro_batch']} | "
                             f"{label} | {throughput} | {wait} | {peak} | {'yes' if m['fits'] else 'no (OOM)'} | "
                             f"{published} |")
        lines.append("")
    optimizer = result.get("optimizer", {})
    if optimizer:
        limit = optimizer["memory_traffic_limit"]
        lines += ["## Optimizer step on each model's parameter shapes (fp32, same run)", "",
                  f"Memory-traffic limit: NovoGrad passes over memory 6 times (gradients read twice), SGD-momentum 5, "
                  f"AdamW 7, so a memory-bound NovoGrad step is at best {limit['vs SGD-momentum']:.2f}x "
                  f"SGD-momentum's and {limit['vs AdamW']:.2f}x AdamW's.", "",
                  "| model | candidate | median ms | / SGD-momentum fused | / AdamW fused |", "|---|---|---|---|---|"]
        for key, candidates in optimizer["models"].items():
            if "status" in candidates:
                lines.append(f"| {key} | {candidates['status']} | | | |")
                continue
            for name, row in candidates.items():
                lines.append(f"| {key} | {name} | {row['median_ms']:.3f} | {row['ratio_to_sgd_fused']:.2f}x | "
                             f"{row['ratio_to_adamw_fused']:.2f}x |")
        lines.append("")
    decode = result.get("decode", {})
    if decode:
        lines += ["## ImageNet's GPU decode (`data.decode=gpu`) against the CPU decode, same run", "",
                  f"Host CPU milliseconds per image of the training path ({decode['images_per_repeat']} 500x375 "
                  f"JPEGs, {decode['repeats']} passes, all threads counted): the loader's part (a worker's) and the "
                  "main process's (`on_device`).", "", "| decode | loader | main process | total |", "|---|---|---|---|"]
        for name, cost in decode["paths"].items():
            lines.append(f"| {name} | {cost['loader_ms_per_image']:.3f} | {cost['main_ms_per_image']:.3f} | "
                         f"{cost['host_ms_per_image']:.3f} |")
        training = decode["training"]
        trained = (training["status"] if "status" in training else
                   f"ResNet-50 with data.decode=gpu: {training['throughput']:,.1f} {training['unit']}, data wait "
                   f"{training['data_wait']:.0%}" if training["fits"] else "ResNet-50 with data.decode=gpu: OOM")
        lines += ["", f"GPU decode / CPU decode host cost: {decode['gpu_over_cpu_host_cost']:.2f}x. The device's images "
                      f"against the CPU path's, same crops: at most {decode['max_level_difference']} levels apart, "
                      f"{decode['fraction_of_values_differing']:.1%} of the values differing. {trained}.", ""]
    engine = result.get("engine", {})
    if engine:
        lines += ["## Engine overhead", ""]
        lines.append(engine["status"] if "status" in engine else
                     f"{engine['model']}: engine {engine['engine_steps_per_s']:.1f} steps/s, bare loop "
                     f"{engine['bare_steps_per_s']:.1f} steps/s, engine/bare = {engine['engine_over_bare']:.3f} "
                     f"(median of {engine['repeats']}).")
        lines.append("")
    if sharded := result.get("sharded"):
        lines += ["## Sharded training (`trainer.parallelism=fsdp`, one GPU)", "",
                  "| model | trainer.compile | throughput | peak memory | against the unsharded run above |",
                  "|---|---|---|---|---|"]
        for label, entry in sharded.items():
            if label == "model":
                continue
            run = entry.get("fsdp", {})
            if not run.get("fits"):
                what = entry.get("status") or entry.get("error") or f"does not fit ({run.get('error', '')})"
                lines.append(f"| {sharded['model']} | {label} | {what} | | |")
                continue
            ratios = (f"throughput {entry['throughput_ratio']:.2f}x, peak memory {entry['peak_memory_ratio']:.2f}x"
                      if "throughput_ratio" in entry else "not measured")
            lines.append(f"| {sharded['model']} | {label} | {run['throughput']:,.1f} {run['unit']} | "
                         f"{run['peak_memory_bytes'] / 2**30:.2f} GiB | {ratios} |")
        lines.append("")
    tests = result.get("gpu_tests", {})
    if tests:
        lines += ["## GPU tests", ""]
        lines.append(tests["status"] if "status" in tests else
                     f"`{tests['command']}`: {tests['passed']} passed, {tests['failures']} failed, {tests['errors']} "
                     f"errors, {tests['skipped']} skipped." + (f" Failed: {', '.join(tests['failed_tests'])}."
                                                                if tests["failed_tests"] else ""))
        lines.append("")
    estimate = result.get("estimate", [])
    if estimate:
        lines += ["## GPU-hours per row on 8 of these GPUs", "",
                  "From the best measured throughput of the row's model (compile on or off), assuming linear scaling "
                  "to 8 GPUs, a data path that keeps up, and no evaluation time; rows with larger global batches "
                  "accumulate the same per-GPU micro-batches.", "",
                  "| row | work | throughput per GPU | hours on 8 GPUs | GPU-hours |", "|---|---|---|---|---|"]
        for e in estimate:
            if "gpu_hours" in e:
                lines.append(f"| {e['row']} | {e['work_counted_as']} | {e['throughput_per_gpu']:,.1f} {e['unit']} | "
                             f"{e['wall_hours_on_8']:,.1f} | {e['gpu_hours']:,.0f} |")
            else:
                lines.append(f"| {e['row']} | {e['work_counted_as']} | not measured | | |")
        lines.append("")
    return "\n".join(lines)


def failures(result: dict[str, Any]) -> list[str]:
    """What the check found wrong (the exit status is 1 when this is not empty)."""
    found = []
    if result.get("attention") and not result["attention"]["auto_proven_right"]:
        found.append("model.attention_backend=auto is not proven right")
    tests = result.get("gpu_tests", {})
    if tests.get("failures") or tests.get("errors"):
        found.append(f"{tests['failures']} GPU tests failed, {tests['errors']} errors")
    for key, modes in result.get("training", {}).items():
        found += [f"{key} ({label}) does not fit" for label, m in modes.items() if m.get("fits") is False]
    if result.get("decode", {}).get("training", {}).get("fits") is False:
        found.append("resnet50_v2 with data.decode=gpu does not fit")
    for label, entry in result.get("sharded", {}).items():
        if isinstance(entry, dict) and ("error" in entry or entry.get("fsdp", {}).get("fits") is False):
            found.append(f"{SHARDED_MODEL} under trainer.parallelism=fsdp ({label}): "
                         f"{entry.get('error', 'does not fit')}")
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "gpu", help="directory of <device>.json/.md")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall seconds for the whole check")
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=None,
                        help="trainer.compile settings to measure (default: off on on CUDA, off on the CPU)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="paper models of the training and optimizer sections (default: all four)")
    parser.add_argument("--sections", nargs="+", default=["attention", "training", "optimizer", "decode", "engine",
                                                           "sharded", "gpu_tests", "estimate"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is visible; run on a GPU machine or use --device cpu")
    on_gpu = device.type == "cuda"
    compile_modes = [mode == "on" for mode in (args.compile or (["off", "on"] if on_gpu else ["off"]))]
    budget = Budget(args.budget_s)
    start = time.perf_counter()
    result: dict[str, Any] = {"machine": {
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime())}}
    sections = {
        "attention": lambda: check_attention(device, budget),
        "training": lambda: check_training(device, budget, args.models, compile_modes, steps=6 if on_gpu else 2),
        "optimizer": lambda: check_optimizer(device, budget, args.models, rounds=10 if on_gpu else 2,
                                             include_fused=on_gpu),
        "decode": lambda: check_decode(device, budget, steps=6 if on_gpu else 2, repeats=3 if on_gpu else 1,
                                       per_class=32 if on_gpu else 4),
        "engine": lambda: check_engine(device, budget, steps=30 if on_gpu else 3, repeats=3 if on_gpu else 1),
        "sharded": lambda: check_sharded(device, budget, steps=6 if on_gpu else 2, training=result.get("training", {}),
                                         compile_modes=compile_modes),
        "gpu_tests": lambda: run_gpu_tests(device, budget),
        "estimate": lambda: estimate_rows(result.get("training", {})),
    }
    for name in args.sections:
        print(f"== {name} ({budget.left():.0f} s of the budget left)", flush=True)
        result[name] = sections[name]()
    result["wall_s"] = time.perf_counter() - start
    result["failures"] = failures(result)
    text = markdown(result)
    args.output.mkdir(parents=True, exist_ok=True)
    label = device_label(device)
    for suffix, content in ((".json", json.dumps(result, indent=2, default=str) + "\n"), (".md", text)):
        path = args.output / f"{label}{suffix}"
        staging = path.with_suffix(suffix + ".tmp")
        staging.write_text(content)
        staging.replace(path)  # atomic: an interrupted check never leaves half a report
    print(text)
    print(f"wrote {args.output / label}.json and .md" + (f"; FOUND: {'; '.join(result['failures'])}"
                                                         if result["failures"] else ""))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
