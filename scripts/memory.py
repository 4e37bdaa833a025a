"""The memory claim, measured: optimizer state after one step of SGD-momentum, Adam, AdamW and NovoGrad on the
paper's four models at full size, what a training step as a whole holds, what each GPU holds of it under FSDP2
for N ranks, and the largest Transformer whose training state fits a GPU with AdamW and with NovoGrad.

Each model is built from its config (configs/model/*.yaml, composed by Hydra as training composes it) on the meta
device, where tensors have shapes and dtypes but no data, so 332.6M parameters cost nothing. Each optimizer is
built by the training factory (`novograd.optim.factory.build_optimizer`) from configs/optimizer/*.yaml, LARC off,
every parameter gets a gradient, `step()` runs once, and the bytes of every tensor in `optimizer.state` are
added up: nothing is computed from a formula (tests/test_memory.py checks the results against one). On the meta
device torch.optim takes its single-tensor path; every path allocates the same state. `--state-device cpu` runs the
same measurement on real fp32 tensors (about 5.3 GB for Jasper with Adam).

"Whole step" = parameters + gradients + optimizer state, all measured from tensors; activations are not in it.

FSDP2 (`fully_shard`, the default Shard(0) placement) gives each rank `torch.chunk(param, N, dim=0)[rank]` (an
empty shard past the last chunk) and allocates every rank's parameter and gradient shard at the size of the first
chunk (the padding that makes the all-gather and reduce-scatter even); the optimizer state is allocated like the
unpadded local shard (`zeros_like` of the DTensor), and a per-tensor scalar (NovoGrad's second moment, Adam's step)
is a plain tensor on every rank. So rank 0, whose chunks are the largest, holds the most: its shards are cut from
the meta model with `torch.chunk`, put in the model in place of the parameters, and the optimizers step on them as
above (tests/test_memory.py checks this accounting against the local shards of `fully_shard` parameters and of
the optimizers' state on 2 gloo ranks). The largest Transformer is Transformer-big's layout (d_model 1024, d_ff
4096, 16 heads, vocabulary 8192) with L encoder and L decoder layers: rank 0's bytes are measured at the paper's
L = 6 and at L = 7; each further layer pair adds exactly the difference (every parameter is sharded on its own),
and L grows until parameters + gradients + state no longer fit the GPU memory given.
With `--device cuda` the script also runs two real training steps per model and optimizer at the paper's
per-GPU micro-batch, in bf16 autocast as the experiments, and records `torch.cuda.max_memory_allocated()` of the
second one (the first allocates the state; the second is the steady state). That path has not been run yet.

    python scripts/memory.py [--device cpu|cuda] [--state-device meta|cpu] [--ranks 8 64 512]
                             [--gpu-memory 80e9 141e9] [--output results/memory]

Writes <output>.json ("models": per model params, tensors, param_bytes, grad_bytes, state_bytes and
step_counter_bytes per optimizer, "fsdp2" per number of ranks the same bytes on rank 0, and peak_step_bytes with
CUDA; "largest_transformer": per GPU memory and number of ranks, the layers and parameters of the largest model
with AdamW and with NovoGrad) and <output>.md; the default output is results/memory (results/memory_cuda with
--device cuda).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from novograd.engine.compose import compose_config  # noqa: E402
from novograd.optim.factory import build_optimizer  # noqa: E402

OPTIMIZERS = ("sgd", "adam", "adamw", "novograd")
REFERENCE = "adam"
RANKS = (8, 64, 512)
GPU_MEMORY = (80e9, 141e9)  # bytes: H100 80 GB, H200 141 GB (nominal; less is free once CUDA has started)
TRANSFORMER = "transformer_big"  # the layout the largest fitting model scales in depth
FIT_OPTIMIZERS = ("adamw", "novograd")
MB = 1e6  # the tables give decimal megabytes


@dataclass(frozen=True)
class ModelSpec:
    """A paper model: its config, the arguments its workload passes, and (for --device cuda) one micro-batch."""

    config: str
    kwargs: dict[str, Any]
    # (model, device) -> the loss of one micro-batch of random data, computed under autocast (--device cuda).
    loss_of_batch: Callable[[nn.Module, torch.device], torch.Tensor]


def resnet_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """[P] 128 images of 224 x 224 per GPU, cross-entropy over 1000 classes."""
    images = torch.randn(128, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (128,), device=device)
    return F.cross_entropy(model(images), labels)


def jasper_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """[O] 32 utterances per GPU, all of the longest kind: 16.7 s (data.max_duration) slowed to 0.9x by speed
    perturbation = 18.6 s = 1856 frames of 10 ms, with 250-character transcripts; the workload's CTC loss."""
    from novograd.workloads.librispeech import ctc_losses

    frames, characters = 1856, 250
    features = torch.randn(32, model.in_features, frames, device=device)
    lengths = torch.full((32,), frames, device=device)
    targets = torch.randint(0, model.num_classes - 1, (32, characters), device=device)
    logits, out_frames = model(features, lengths)
    losses, _ = ctc_losses(logits, out_frames, targets, torch.full((32,), characters, device=device))
    return losses.sum()


def transformer_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """The table7 rows' micro-batch of 16,384 padded source + target tokens per GPU: 128 pairs of 64 + 64 tokens;
    teacher-forced cross-entropy."""
    source = torch.randint(4, model.vocab_size, (128, 64), device=device)
    target = torch.randint(4, model.vocab_size, (128, 65), device=device)
    logits = model(source, target[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), target[:, 1:].flatten(), reduction="sum")


def transformer_xl_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """[X] 32 streams per GPU x tgt_len 128 tokens, with a full memory of mem_len 512 per layer (steady state)."""
    tokens = torch.randint(0, model.embedding.num_embeddings, (32, model.tgt_len + 1), device=device)
    memory = [torch.zeros(32, model.mem_len, model.d_model, device=device) for _ in model.layers]
    nll, _ = model(tokens[:, :-1], tokens[:, 1:], memory)
    return nll.sum()


# Result keys (the contract of results/memory.json) -> the models the experiments train.
MODELS: dict[str, ModelSpec] = {
    "resnet50_v2": ModelSpec("resnet50_v2", {"num_classes": 1000}, resnet_loss),  # data.num_classes (imagenet)
    "jasper10x5": ModelSpec("jasper10x5", {}, jasper_loss),
    "transformer_big": ModelSpec("transformer_big", {}, transformer_loss),
    "transformer_xl": ModelSpec("transformer_xl_base", {}, transformer_xl_loss),
}


def build_model(config: str, device: torch.device | str, **kwargs: Any) -> nn.Module:
    """configs/model/<config>.yaml instantiated on `device` (defaults such as a tiny model's parent merged)."""
    from hydra.utils import instantiate

    with torch.device(device):
        return instantiate(compose_config([f"model={config}"]).model, **kwargs)


def optimizer_config(name: str) -> Any:
    """configs/optimizer/<name>.yaml as training composes it, without LARC (a wrapper with no state of its own)."""
    return copy.deepcopy(_composed_optimizer(name))


@functools.cache
def _composed_optimizer(name: str) -> Any:
    return compose_config([f"optimizer={name}", "optimizer.larc.enabled=false"]).optimizer


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_state(model: nn.Module, optimizer_name: str) -> dict[str, int]:
    """Bytes of `optimizer.state` after one step of the named optimizer on `model`, and of its step counters.

    Every parameter gets a gradient of ones (any value would do; meta tensors have none). The gradients are
    dropped again afterwards, so the model can be reused.
    """
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = build_optimizer(optimizer_config(optimizer_name), model)
    try:
        optimizer.step()
    except (NotImplementedError, RuntimeError) as error:
        raise RuntimeError(
            f"{optimizer_name} could not step on {params[0].device}: rerun with --state-device cpu ({error})"
        ) from error
    states = list(optimizer.state.values())
    result = {
        "state_bytes": tensor_bytes(v for s in states for v in s.values() if isinstance(v, torch.Tensor)),
        "step_counter_bytes": tensor_bytes(s["step"] for s in states if isinstance(s.get("step"), torch.Tensor)),
        "grad_bytes": tensor_bytes(p.grad for p in params),
    }
    for p in params:
        p.grad = None
    return result


def measure_model(config: str, device: torch.device | str, ranks: Iterable[int] = (), **kwargs: Any) -> dict[str, Any]:
    """Parameter count, tensors, bytes of parameters and gradients, and each optimizer's state, on `device`; and
    rank 0's bytes of each under FSDP2 for each number of `ranks`."""
    model = build_model(config, device, **kwargs)
    params = list(model.parameters())  # shared tensors (tied embeddings) once, as the optimizer sees them
    measured = {name: measure_state(model, name) for name in OPTIMIZERS}
    return {
        "params": sum(p.numel() for p in params),
        "tensors": len(params),
        "param_bytes": tensor_bytes(params),
        "grad_bytes": measured[REFERENCE]["grad_bytes"],  # the same gradients for every optimizer
        "state_bytes": {name: m["state_bytes"] for name, m in measured.items()},
        "step_counter_bytes": {name: m["step_counter_bytes"] for name, m in measured.items()},
        "fsdp2": {str(n): measure_fsdp2(model, n) for n in ranks},
    }


def fsdp2_shard(param: torch.Tensor, ranks: int, rank: int) -> torch.Tensor:
    """`rank`'s part of `param` as `fully_shard` cuts it (torch.chunk along dim 0; empty past the last chunk)."""
    if param.dim() == 0:
        raise ValueError("fully_shard shards along dim 0: a 0-dim parameter has none; give it a dimension of 1")
    chunks = torch.chunk(param.detach(), ranks, dim=0)
    return chunks[rank] if rank < len(chunks) else param.detach().new_empty((0, *param.shape[1:]))


def shard_in_place(model: nn.Module, ranks: int, rank: int) -> nn.Module:
    """`model` with each parameter replaced by `rank`'s shard of it (tied parameters stay one shard)."""
    shards: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in shards:
                shards[id(param)] = nn.Parameter(torch.empty_like(fsdp2_shard(param, ranks, rank)))
            setattr(module, name, shards[id(param)])
    return model


def measure_fsdp2(model: nn.Module, ranks: int, rank: int = 0, optimizers: Iterable[str] = OPTIMIZERS,
                  ) -> dict[str, Any]:
    """The bytes `rank` holds of `model` (meta or real) fully sharded over `ranks` by FSDP2: parameter and gradient
    shards at the padded size (the first chunk's), each optimizer's state on the rank's own shards."""
    first_chunks = [fsdp2_shard(p, ranks, 0) for p in model.parameters()]
    sharded = shard_in_place(copy.deepcopy(model), ranks, rank)
    measured = {name: measure_state(sharded, name) for name in optimizers}
    return {
        "param_bytes": tensor_bytes(first_chunks),
        "grad_bytes": tensor_bytes(first_chunks),
        "state_bytes": {name: m["state_bytes"] for name, m in measured.items()},
    }


def fsdp2_whole_bytes(row: dict[str, Any], optimizer_name: str) -> int:
    return row["param_bytes"] + row["grad_bytes"] + row["state_bytes"][optimizer_name]


def largest_transformer(ranks: Iterable[int], gpu_memory: Iterable[float]) -> dict[str, Any]:
    """The most encoder + decoder layer pairs of Transformer-big's layout whose rank-0 training state (parameters,
    gradients and optimizer state under FSDP2) fits each GPU memory, for AdamW and NovoGrad and each rank count.

    Rank 0's bytes and the parameters are measured at the paper's depth and one layer pair deeper; every further
    pair adds the same (each parameter is sharded on its own), so the bytes are affine in the depth.
    """
    base = compose_config([f"model={TRANSFORMER}"]).model.encoder_layers
    depths = (base, base + 1)
    models = [build_model(TRANSFORMER, "meta", encoder_layers=d, decoder_layers=d) for d in depths]
    params = [sum(p.numel() for p in m.parameters()) for m in models]
    layer = models[0].decoder_layers[0]  # the largest unit a per-layer fully_shard all-gathers
    result: dict[str, Any] = {
        "model": TRANSFORMER, "base_layers": base, "base_params": params[0],
        "params_per_layer_pair": params[1] - params[0], "decoder_layer_param_bytes": tensor_bytes(layer.parameters()),
        "fits": {},
    }
    for n in ranks:
        rows = [measure_fsdp2(m, n, optimizers=FIT_OPTIMIZERS) for m in models]
        for memory in gpu_memory:
            fits = result["fits"].setdefault(f"{memory:.0f}", {}).setdefault(str(n), {})
            for name in FIT_OPTIMIZERS:
                at_base, deeper = (fsdp2_whole_bytes(row, name) for row in rows)
                layers = max(0, base + math.floor((memory - at_base) / (deeper - at_base)))
                fits[name] = {"layers": layers, "params": params[0] + (layers - base) * (params[1] - params[0]),
                              "bytes": at_base + (layers - base) * (deeper - at_base),
                              "bytes_per_layer_pair": deeper - at_base} if layers else None
    return result


def peak_step_bytes(spec: ModelSpec, optimizer_name: str, device: torch.device) -> int:
    """torch.cuda.max_memory_allocated() over the second of two real bf16 training steps (untested: no GPU yet)."""
    torch.manual_seed(0)
    model = build_model(spec.config, device, **spec.kwargs).train()
    optimizer = build_optimizer(optimizer_config(optimizer_name), model)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = spec.loss_of_batch(model, device)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del model, optimizer, loss
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def whole_step_bytes(row: dict[str, Any], optimizer_name: str) -> int:
    return row["param_bytes"] + row["grad_bytes"] + row["state_bytes"][optimizer_name]


def markdown(results: dict[str, dict[str, Any]], state_device: str, gpu_name: str | None) -> str:
    lines = [
        "# Optimizer state and training-step memory of the paper's models",
        "",
        "Made by `make memory` (`scripts/memory.py`): each model built from its config, each optimizer from "
        "configs/optimizer/ (LARC off), one `step()`, then the bytes of every tensor in `optimizer.state` "
        f"(measured on the {state_device} device, torch {torch.__version__}). MB = 10^6 bytes.",
        "",
        "**What \"half the memory of Adam\" means.** NovoGrad keeps one buffer per parameter (the momentum) and one "
        "scalar per parameter tensor (the layer's second moment); Adam and AdamW keep two buffers per parameter. "
        "So NovoGrad's *optimizer state* is half of Adam's, the same as SGD with momentum. A training step also "
        "holds the parameters and their gradients, which are the same for every optimizer: in fp32 that is 8 "
        "bytes per parameter, plus 4 of state with NovoGrad or SGD against 8 with Adam, so the step as a whole "
        "needs about 3/4 of Adam's memory, not half, and a ratio closer to 1 once activations are counted (they "
        "are not in these columns).",
        "",
        "State includes the step counters: Adam and AdamW keep one 0-dim fp32 tensor per parameter tensor (4 "
        "bytes each, on the CPU for torch's non-fused paths); NovoGrad and SGD keep none (without bias "
        "correction no step count is read). SGD's split into decayed "
        "and non-decayed parameter groups changes no state size. Parameters and gradients are fp32 (bf16 "
        "autocast keeps them so).",
    ]
    if gpu_name:
        lines += [
            "",
            f"Peak = `torch.cuda.max_memory_allocated()` over one steady-state bf16 training step at the paper's "
            f"per-GPU micro-batch (activations included) on {gpu_name}.",
        ]
    for key, row in results["models"].items():
        novograd_extra = row["state_bytes"]["novograd"] - row["state_bytes"]["sgd"]
        lines += [
            "",
            f"## {key}: {row['params']:,} parameters ({row['params'] / 1e6:.2f}M) in {row['tensors']} tensors",
            "",
            f"Parameters {row['param_bytes'] / MB:,.1f} MB, gradients {row['grad_bytes'] / MB:,.1f} MB. NovoGrad's "
            f"state is {novograd_extra:,} bytes more than SGD's: a second moment per tensor.",
            "",
        ]
        header = ["optimizer", "state (MB)", "state / Adam's", "params + grads + state (MB)", "whole / Adam's whole"]
        if gpu_name:
            header += ["peak step (MB)", "peak / Adam's peak"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in OPTIMIZERS:
            state, whole = row["state_bytes"][name], whole_step_bytes(row, name)
            cells = [
                name,
                f"{state / MB:,.1f}",
                f"{state / row['state_bytes'][REFERENCE]:.4f}",
                f"{whole / MB:,.1f}",
                f"{whole / whole_step_bytes(row, REFERENCE):.4f}",
            ]
            if gpu_name:
                peak = row["peak_step_bytes"][name]
                cells += [f"{peak / MB:,.1f}", f"{peak / row['peak_step_bytes'][REFERENCE]:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + fsdp2_markdown(results)) + "\n"


def fsdp2_markdown(results: dict[str, Any]) -> list[str]:
    """The sections on FSDP2: each model's bytes per GPU, and the largest Transformer that fits."""
    lines = [
        "",
        "## Per GPU under FSDP2 full sharding",
        "",
        "Rank 0's shards (`torch.chunk` along dim 0, as `fully_shard` cuts them; parameter and gradient shards "
        "allocated at the first chunk's size, which rank 0 holds unpadded), with every optimizer's state measured "
        "on them: the most any rank holds. NovoGrad's second moments and Adam's step counters are 0-dim tensors "
        "on every rank, not sharded. fp32 parameters, gradients and state (bf16 autocast keeps them so); "
        "activations and FSDP2's all-gathered layers are not counted.",
        "",
        "| model | ranks | params + grads (MB) | SGD state | Adam state | AdamW state | NovoGrad state (MB) | "
        "whole, NovoGrad vs AdamW (MB) | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results["models"].items():
        for n, shard in row["fsdp2"].items():
            state = [f"{shard['state_bytes'][name] / MB:,.2f}" for name in OPTIMIZERS]
            novograd, adamw = fsdp2_whole_bytes(shard, "novograd"), fsdp2_whole_bytes(shard, "adamw")
            lines.append(f"| {key} | {n} | {(shard['param_bytes'] + shard['grad_bytes']) / MB:,.2f} | "
                         + " | ".join(state) + f" | {novograd / MB:,.2f} vs {adamw / MB:,.2f} | {novograd / adamw:.4f} |")
    largest = results["largest_transformer"]
    lines += [
        "",
        "## The largest Transformer whose training state fits one GPU",
        "",
        f"`{largest['model']}`'s layout (d_model, d_ff, heads and vocabulary as configured) with L encoder and L "
        f"decoder layers (the paper: L = {largest['base_layers']}, {largest['base_params']:,} parameters; each "
        f"layer pair adds {largest['params_per_layer_pair']:,}). Rank 0's parameters + gradients + optimizer "
        "state under FSDP2, measured at the paper's depth and one pair deeper (each further pair adds the same), "
        "must fit the GPU memory (GB = 10^9 bytes, nominal). Not counted: activations, which depend on the "
        "micro-batch and on activation checkpointing, and the transient unsharded layers FSDP2 gathers (one "
        f"decoder layer is {largest['decoder_layer_param_bytes'] / MB:,.1f} MB in fp32), the CUDA context and the "
        "allocator's slack.",
        "",
        "| GPU memory | ranks | AdamW: L | AdamW: parameters | NovoGrad: L | NovoGrad: parameters | "
        "NovoGrad / AdamW parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for memory, by_ranks in largest["fits"].items():
        for n, fits in by_ranks.items():
            adamw, novograd = fits["adamw"], fits["novograd"]
            cells = [f"{float(memory) / 1e9:g} GB", n]
            for fit in (adamw, novograd):
                cells += [str(fit["layers"]), f"{fit['params'] / 1e9:,.2f}B"] if fit else ["none", "-"]
            cells.append(f"{novograd['params'] / adamw['params']:.3f}" if adamw and novograd else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: also the peak memory of a real training step per model and optimizer")
    parser.add_argument("--state-device", choices=("meta", "cpu"), default="meta",
                        help="where the optimizer state is measured (cpu: real fp32 tensors, several GB)")
    parser.add_argument("--ranks", type=int, nargs="+", default=list(RANKS),
                        help="numbers of ranks FSDP2 shards over (default: %(default)s)")
    parser.add_argument("--gpu-memory", type=float, nargs="+", default=list(GPU_MEMORY),
                        help="bytes per GPU the largest Transformer must fit in (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None,
                        help="path without suffix for .json and .md (default: results/memory[_cuda])")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is visible; run on a GPU machine or use --device cpu")
    if min(args.ranks) < 1 or min(args.gpu_memory) <= 0:
        parser.error(f"--ranks and --gpu-memory must be positive, got {args.ranks} and {args.gpu_memory}")
    output = args.output or ROOT / "results" / ("memory_cuda" if device.type == "cuda" else "memory")

    models = {}
    for key, spec in MODELS.items():
        start = time.perf_counter()
        row = measure_model(spec.config, args.state_device, args.ranks, **spec.kwargs)
        if device.type == "cuda":
            row["peak_step_bytes"] = {name: peak_step_bytes(spec, name, device) for name in OPTIMIZERS}
        models[key] = row
        gc.collect()
        ratios = ", ".join(f"{n} {row['state_bytes'][n] / row['state_bytes'][REFERENCE]:.3f}" for n in OPTIMIZERS)
        print(f"{key}: {row['params']:,} parameters in {row['tensors']} tensors; state / Adam's: {ratios} "
              f"({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    results = {"models": models, "largest_transformer": largest_transformer(args.ranks, args.gpu_memory)}
    for memory, by_ranks in results["largest_transformer"]["fits"].items():
        for n, fits in by_ranks.items():
            print(f"{float(memory) / 1e9:g} GB x {n} ranks: "
                  + ", ".join(f"{name} {fit['params'] / 1e9:.2f}B parameters ({fit['layers']} + {fit['layers']} layers)"
                              if fit else f"{name} none" for name, fit in fits.items()))
    print(f"largest Transformers: {time.perf_counter() - start:.1f} s")

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(results, args.state_device, gpu_name))
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
