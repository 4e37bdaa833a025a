"""Time one optimizer step of each NovoGrad path against torch's SGD-momentum and AdamW, on the parameter shapes of
ResNet-50 and of Transformer-big (and apex's FusedNovoGrad with `--device cuda` where apex is built).

Every candidate owns a copy of the parameters (fp32) and of the optimizer state; the fixed random gradients are
shared (read-only) by the candidates of a model, which keeps Transformer-big's 185M parameters in memory. After a
warm-up (which includes torch.compile for the fused NovoGrad), the candidates of a model run in interleaved rounds
in one process, so that drifts of the machine (clock, other load) hit all of them alike; the median over rounds of
the mean ms per step is reported (and the fastest round, the cost without interference on a shared machine), with
the ratios of medians to torch's fused SGD-momentum and fused AdamW, and the bytes of optimizer state.

`--runs N` repeats the whole benchmark in N fresh processes and adds the median and the range of each ratio over
the runs. Results go to results/bench/optimizer.json (optimizer_cuda.json with `--device cuda`).

    python scripts/bench_optimizer.py [--models resnet50 transformer_big] [--runs 3] [--breakdown]
                                      [--device cpu|cuda] [--rounds 30] [--steps 2] [--threads N]

Targets: the fastest NovoGrad path at most 1.25x fused SGD-momentum and at most 0.8x fused AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim import Optimizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from novograd.optim import novograd as novograd_module  # noqa: E402
from novograd.optim.apex import apex_novograd, fused_novograd_class  # noqa: E402
from novograd.optim.novograd import NovoGrad  # noqa: E402

SGD_REFERENCE = "torch SGD-momentum fused"
ADAMW_REFERENCE = "torch AdamW fused"
TARGETS = {SGD_REFERENCE: 1.25, ADAMW_REFERENCE: 0.8}


class LoopNovoGrad(Optimizer):
    """NovoGrad as NeMo's `Novograd` and timm's `NvNovoGrad` implement it, for timing only.

    A Python loop over parameters with a host synchronisation per parameter (`if exp_avg_sq == 0` reads a device
    scalar) and in-place edits of `p.grad`, as in those projects. Their formula (eps outside the sqrt, m from 0,
    grad averaging) is NovoGrad(eps_inside_sqrt=False, grad_averaging=True, moment_init="zero").
    """

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros([], device=p.device)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                norm = torch.sum(torch.pow(grad, 2))
                if exp_avg_sq == 0:
                    exp_avg_sq.copy_(norm)
                else:
                    exp_avg_sq.mul_(beta2).add_(norm, alpha=1 - beta2)
                grad.div_(exp_avg_sq.sqrt().add_(group["eps"]))
                if group["weight_decay"] != 0:
                    grad.add_(p, alpha=group["weight_decay"])
                grad.mul_(1 - beta1)
                exp_avg.mul_(beta1).add_(grad)
                p.add_(exp_avg, alpha=-group["lr"])


# Global-norm clip of the mixed-precision candidates: large, so that clipping multiplies by 1 and the gradients keep
# their values from step to step (the passes over memory are the same whatever the coefficient).
CLIP_NORM = 1e9


def plain(optimizer: Optimizer) -> tuple[Optimizer, Callable[[], None]]:
    return optimizer, optimizer.step


def fp16_in_step(params: list[torch.Tensor]) -> tuple[Optimizer, Callable[[], None]]:
    """GradScaler hands its scale to NovoGrad, which also clips from its layer norms (no pass of their own)."""
    optimizer = NovoGrad(params, lr=0.007, weight_decay=0.002, fused=True)
    scaler = _unit_scaler(params[0].device)

    def step() -> None:
        scaler.step(optimizer, max_grad_norm=CLIP_NORM)
        scaler.update()

    return optimizer, step


def fp16_unscale_then_clip(params: list[torch.Tensor]) -> tuple[Optimizer, Callable[[], None]]:
    """What other optimizers need: GradScaler.unscale_ and clip_grad_norm_ pass over the gradients first."""
    optimizer = NovoGrad(params, lr=0.007, weight_decay=0.002, fused=True)
    scaler = _unit_scaler(params[0].device)

    def step() -> None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        scaler.step(optimizer)
        scaler.update()

    return optimizer, step


def _unit_scaler(device: torch.device) -> torch.amp.GradScaler:
    # A scale of 1 that never grows: unscaling rewrites the gradients unchanged, so every step sees the same values.
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2**30)
    scaler.scale(torch.ones((), device=device))  # creates the scale tensor, as the backward of a scaled loss would
    return scaler

# Hyperparameters of the paper's Table 1 rows; they do not change the cost of a step, only keep it realistic.
CANDIDATES: dict[str, Callable[[list[torch.Tensor]], tuple[Optimizer, Callable[[], None]]]] = {
    "NovoGrad single-tensor": lambda p: plain(NovoGrad(p, lr=0.007, weight_decay=0.002, foreach=False)),
    "NovoGrad foreach": lambda p: plain(NovoGrad(p, lr=0.007, weight_decay=0.002, foreach=True)),
    "NovoGrad fused": lambda p: plain(NovoGrad(p, lr=0.007, weight_decay=0.002, fused=True)),
    "NovoGrad loop (NeMo/timm style)": lambda p: plain(
        LoopNovoGrad(p, lr=0.007, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.002)),
    "torch SGD-momentum foreach": lambda p: plain(
        torch.optim.SGD(p, lr=0.4, momentum=0.9, weight_decay=1e-4, foreach=True)),
    SGD_REFERENCE: lambda p: plain(torch.optim.SGD(p, lr=0.4, momentum=0.9, weight_decay=1e-4, fused=True)),
    "torch AdamW foreach": lambda p: plain(torch.optim.AdamW(p, lr=0.002, weight_decay=0.12, foreach=True)),
    ADAMW_REFERENCE: lambda p: plain(torch.optim.AdamW(p, lr=0.002, weight_decay=0.12, fused=True)),
    "NovoGrad fused, GradScaler + clip in the step": fp16_in_step,
    "NovoGrad fused, GradScaler unscale_ + clip_grad_norm_": fp16_unscale_then_clip,
}
# NVIDIA apex's fused kernel in the paper's mode (optimizer=apex_novograd), where apex is built: CUDA only.
APEX_CANDIDATE = "apex FusedNovoGrad (paper mode)"


def apex_importable() -> bool:
    try:
        fused_novograd_class()
    except ImportError:
        return False
    return True


if apex_importable():
    CANDIDATES[APEX_CANDIDATE] = lambda p: plain(apex_novograd(p, lr=0.007, weight_decay=0.002))

# Candidates that write their gradients with new values (the others only read them, or rewrite them unchanged).
OWN_GRADIENTS = {"NovoGrad loop (NeMo/timm style)"}


def resnet50_shapes() -> list[torch.Size]:
    """The parameter shapes of torchvision's ResNet-50 (161 tensors, 25,557,032 parameters), built on the meta
    device so that nothing is allocated."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return [p.shape for p in model.parameters()]


def transformer_big_shapes() -> list[torch.Size]:
    """The parameter shapes of Transformer-big as fairseq lays it out (253 tensors, 184,745,984 parameters).

    6 encoder and 6 decoder layers, d_model 1024, FFN 4096, 16 heads (heads split the projections, they add no
    parameters); one embedding of an 8192-token vocabulary shared by encoder, decoder and output projection;
    sinusoidal positions (no parameters); post-norm, so no final LayerNorms. An attention block has separate
    q/k/v/out projections with biases; each sub-layer is followed by a LayerNorm (weight and bias).
    """
    d_model, d_ff, vocab, layers = 1024, 4096, 8192, 6
    attention = [(d_model, d_model), (d_model,)] * 4
    layer_norm = [(d_model,), (d_model,)]
    ffn = [(d_ff, d_model), (d_ff,), (d_model, d_ff), (d_model,)]
    encoder_layer = attention + layer_norm + ffn + layer_norm
    decoder_layer = attention + layer_norm + attention + layer_norm + ffn + layer_norm
    shapes = [torch.Size(s) for s in [(vocab, d_model)] + encoder_layer * layers + decoder_layer * layers]
    count = sum(shape.numel() for shape in shapes)
    if count != 184_745_984:
        raise AssertionError(f"Transformer-big shapes add up to {count:,} parameters, not 184,745,984")
    return shapes


@dataclass(frozen=True)
class Model:
    shapes: Callable[[], list[torch.Size]]
    candidates: list[str]


MODELS = {
    "resnet50": Model(resnet50_shapes, list(CANDIDATES)),
    # 0.74 GB per fp32 copy: only the paths the targets are about, and NovoGrad's default, fit beside each other.
    "transformer_big": Model(transformer_big_shapes, ["NovoGrad foreach", "NovoGrad fused", SGD_REFERENCE,
                                                      ADAMW_REFERENCE]),
}


@dataclass
class Candidate:
    name: str
    optimizer: Optimizer
    step: Callable[[], None]
    warmup_s: float = 0.0
    round_ms: list[float] = field(default_factory=list)

    def state_bytes(self) -> int:
        return sum(
            value.numel() * value.element_size()
            for state in self.optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )


def random_tensors(shapes: list[torch.Size], device: torch.device, seed: int, scale: float) -> list[torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, device=device, generator=generator) * scale for shape in shapes]


def make_candidate(name: str, shapes: list[torch.Size], grads: list[torch.Tensor], device: torch.device,
                   seed: int) -> Candidate:
    params = [torch.nn.Parameter(w) for w in random_tensors(shapes, device, seed, 0.05)]
    for p, g in zip(params, grads):
        p.grad = g.clone() if name in OWN_GRADIENTS else g
    optimizer, step = CANDIDATES[name](params)
    return Candidate(name, optimizer, step)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(candidate: Candidate, steps: int, device: torch.device) -> float:
    """Mean ms per step over `steps` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        candidate.step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / steps


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def bench_model(model_name: str, names: list[str], device: torch.device, rounds: int, steps: int,
                warmup: int) -> dict[str, object]:
    """Warm up, then time the candidates of one model in interleaved rounds; returns that model's results."""
    shapes = MODELS[model_name].shapes()
    param_count = sum(shape.numel() for shape in shapes)
    print(f"\n{model_name}: {len(shapes)} tensors, {param_count / 1e6:.2f}M parameters (fp32) on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    grads = random_tensors(shapes, device, seed=12345, scale=1e-3)
    candidates = []
    for index, name in enumerate(names):
        candidate = make_candidate(name, shapes, grads, device, seed=index)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(warmup):
            candidate.step()
        synchronize(device)
        candidate.warmup_s = time.perf_counter() - start
        print(f"  warm-up {name}: {candidate.warmup_s:.1f} s for {warmup} steps")
        candidates.append(candidate)

    # Interleave: each round runs every candidate once, starting from a different one each round.
    for round_index in range(rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            candidate.round_ms.append(timed_steps(candidate, steps, device))

    load_average = os.getloadavg()
    medians = {c.name: statistics.median(c.round_ms) for c in candidates}
    param_bytes = param_count * 4
    print(f"\n{'candidate':54s} {'median ms':>10s} {'min ms':>8s} {'/SGD fused':>11s} {'/AdamW fused':>13s}"
          f" {'state MB':>9s}")
    rows = {}
    for c in candidates:
        ratios = {reference: medians[c.name] / medians[reference] for reference in TARGETS}
        rows[c.name] = {
            "median_ms": medians[c.name],
            "min_ms": min(c.round_ms),
            "round_ms": c.round_ms,
            "warmup_s": c.warmup_s,
            "state_bytes": c.state_bytes(),
            "state_over_param_bytes": c.state_bytes() / param_bytes,
            "ratio_to_sgd_fused": ratios[SGD_REFERENCE],
            "ratio_to_adamw_fused": ratios[ADAMW_REFERENCE],
        }
        print(f"{c.name:54s} {medians[c.name]:10.2f} {min(c.round_ms):8.2f} {ratios[SGD_REFERENCE]:10.2f}x "
              f"{ratios[ADAMW_REFERENCE]:12.2f}x {c.state_bytes() / 2**20:9.1f}")

    # The targets are about the fp32 step: the paths that a plain `optimizer.step()` runs.
    novograd_paths = [c.name for c in candidates if c.name.startswith("NovoGrad")
                      and "loop" not in c.name and "GradScaler" not in c.name]
    verdict = {}
    if novograd_paths:
        fastest = min(novograd_paths, key=medians.__getitem__)
        print(f"fastest NovoGrad path: {fastest}")
        for reference, target in TARGETS.items():
            ratio = medians[fastest] / medians[reference]
            ratio_of_minima = rows[fastest]["min_ms"] / rows[reference]["min_ms"]
            verdict[reference] = {"fastest": fastest, "ratio": ratio, "ratio_of_minima": ratio_of_minima,
                                  "target": target, "met": ratio <= target}
            print(f"  {ratio:.2f}x {reference} (target <= {target}x): {'met' if ratio <= target else 'MISSED'}; "
                  f"fastest rounds: {ratio_of_minima:.2f}x")
    print(f"load average (1, 5, 15 min) at the end: {load_average[0]:.2f} {load_average[1]:.2f} "
          f"{load_average[2]:.2f} on {os.cpu_count()} CPUs")
    return {"tensors": len(shapes), "parameters": param_count, "load_average_1_5_15min": load_average,
            "candidates": rows, "targets": verdict}


def breakdown(model_name: str, device: torch.device, rounds: int, steps: int) -> dict[str, float]:
    """Where the fused NovoGrad step's time goes: median ms, interleaved, of the whole `step()`, of the compiled
    update called directly (the rest of `step()` is host work: Python, bucketing, Dynamo's guards), of the layer
    norms alone (one read of every gradient) and of the update given the norms, beside fused SGD and AdamW."""
    shapes = MODELS[model_name].shapes()
    grads = random_tensors(shapes, device, seed=12345, scale=1e-3)
    novograd = make_candidate("NovoGrad fused", shapes, grads, device, seed=0)
    for _ in range(3):
        novograd.step()
    group = novograd.optimizer.param_groups[0]
    lists: tuple[list, ...] = ([], [], [], [], [], [])
    novograd.optimizer._init_group(group, *lists)
    (bucket,) = novograd_module._buckets(*lists, amsgrad=group["amsgrad"])
    beta1, beta2 = group["betas"]
    coefficients = novograd_module._coefficients(False, beta1=beta1, beta2=beta2, **{
        key: group[key] for key in ("eps", "weight_decay", "grad_averaging", "amsgrad", "eps_inside_sqrt",
                                    "moment_init", "maximize")})
    hyperparameters = novograd_module._hyperparameter_tensor(group["lr"], coefficients, bucket.params[0])
    update = novograd_module._compiled("update", device)
    norms_alone = novograd_module._compiled("layer_norms", device)
    norms = norms_alone(bucket.grads, torch.float32)
    with_norms = (bucket.params, bucket.grads, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.max_exp_avg_sqs, norms)
    parts: dict[str, Callable[[], object]] = {
        "step()": novograd.step,
        "compiled update alone": lambda: update(*bucket.tensors(), hyperparameters=hyperparameters,
                                                grad_factor=None, coefficients=coefficients),
        "layer norms alone (compiled)": lambda: norms_alone(bucket.grads, torch.float32),
        "update given the norms (compiled)": lambda: update(*with_norms, hyperparameters=hyperparameters,
                                                           grad_factor=None, coefficients=coefficients),
    }
    for name in TARGETS:
        parts[name] = make_candidate(name, shapes, grads, device, seed=1).step
    times: dict[str, list[float]] = {name: [] for name in parts}
    with torch.no_grad():
        for part in parts.values():
            part()
            part()
        for round_index in range(rounds):
            names = list(parts)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                for _ in range(steps):
                    parts[name]()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1e3 / steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{model_name}: where the fused NovoGrad step's time goes (median ms over {rounds} rounds)")
    for name, ms in medians.items():
        print(f"  {name:40s} {ms:8.2f}")
    return medians


def summarize(runs: list[dict[str, object]]) -> dict[str, object]:
    """Median and range over runs of each candidate's ratios and median ms, per model."""
    summary: dict[str, object] = {}
    for model_name in runs[0]:
        per_candidate: dict[str, dict[str, dict[str, float]]] = {}
        for name in runs[0][model_name]["candidates"]:
            per_candidate[name] = {}
            for key in ("median_ms", "ratio_to_sgd_fused", "ratio_to_adamw_fused"):
                values = [run[model_name]["candidates"][name][key] for run in runs]
                per_candidate[name][key] = {"median": statistics.median(values), "min": min(values),
                                            "max": max(values)}
        summary[model_name] = per_candidate
    return summary


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="parameter shapes (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="whole benchmarks, each in a fresh process (default: 1)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default: 30)")
    parser.add_argument("--steps", type=int, default=2, help="steps per candidate per round (default: 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first; >= 2 compiles fused paths")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=None,
                        help="a subset of each model's candidates (the two references are always timed)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also split the fused NovoGrad step into host work, norms and update")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: results/bench/optimizer.json, optimizer_cuda.json on cuda)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 2 or args.runs < 1:
        parser.error("--runs, --rounds and --steps must be >= 1 and --warmup >= 2 (the fused path compiles on "
                     "step 2)")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is visible; run on a GPU machine or use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output = args.output or ROOT / "results" / "bench" / ("optimizer_cuda.json" if device.type == "cuda"
                                                           else "optimizer.json")

    if args.runs > 1:
        runs = [run_in_fresh_process(args, index) for index in range(args.runs)]
    else:
        runs = [{}]
        for model_name in args.models:
            names = [n for n in MODELS[model_name].candidates if args.only is None or n in args.only]
            names += [r for r in TARGETS if r not in names]  # the ratios need both references
            if device.type == "cuda" and APEX_CANDIDATE in CANDIDATES and args.only is None:
                names.append(APEX_CANDIDATE)
            runs[0][model_name] = bench_model(model_name, names, device, args.rounds, args.steps, args.warmup)
            if args.breakdown:
                runs[0][model_name]["breakdown_ms"] = breakdown(model_name, device, args.rounds, args.steps)
    result = {
        "machine": machine_info(device),
        "settings": {"models": args.models, "dtype": "float32", "runs": args.runs, "rounds": args.rounds,
                     "steps_per_round": args.steps, "warmup_steps": args.warmup, "breakdown": args.breakdown},
        "runs": runs,
        "summary": summarize(runs),
    }
    if args.runs > 1:
        print_summary(result["summary"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")
    return result


def run_in_fresh_process(args: argparse.Namespace, index: int) -> dict[str, object]:
    """One whole benchmark (`--runs 1`) in a new interpreter: its own warm-up, compilation and allocations."""
    command = [sys.executable, __file__, "--device", args.device, "--models", *args.models, "--rounds",
               str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.only is not None:
        command += ["--only", *args.only]
    if args.breakdown:
        command.append("--breakdown")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.json"
        print(f"\n=== run {index + 1} ===", flush=True)
        subprocess.run([*command, "--output", str(path)], check=True)
        return json.loads(path.read_text())["runs"][0]


def print_summary(summary: dict[str, object]) -> None:
    print("\n=== over the runs: median [min, max] ===")
    for model_name, candidates in summary.items():
        print(f"{model_name}:")
        for name, values in candidates.items():
            sgd, adamw = values["ratio_to_sgd_fused"], values["ratio_to_adamw_fused"]
            print(f"  {name:54s} {sgd['median']:5.2f}x [{sgd['min']:.2f}, {sgd['max']:.2f}] SGD   "
                  f"{adamw['median']:5.2f}x [{adamw['min']:.2f}, {adamw['max']:.2f}] AdamW")


if __name__ == "__main__":
    main()
