"""Time one optimizer step of each NovoGrad path against torch's SGD-momentum and AdamW on ResNet-50 shapes.

Every candidate owns a copy of the parameters (fp32, the 161 tensors / 25.6M parameters of ResNet-50) with fixed
random gradients. After a warm-up (which includes torch.compile for the fused NovoGrad), the candidates run in
interleaved rounds in one process, so that drifts of the machine (clock, other load) hit all of them alike; the
median over rounds of the mean ms per `step()` is reported (and the fastest round, the cost without interference
on a shared machine), with the ratios of medians to torch's fused SGD-momentum and fused AdamW, and the bytes of
optimizer state. The load average is recorded, because other work on the machine inflates the medians. Results go
to results/bench/optimizer.json (optimizer_cuda.json with `--device cuda`).

    python scripts/bench_optimizer.py [--device cpu|cuda] [--rounds 30] [--steps 2] [--threads N]

Targets (DESIGN.md): the fastest NovoGrad path at most 1.25x fused SGD-momentum and at most 0.8x fused AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim import Optimizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

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


# Hyperparameters of the paper's Table 1 rows; they do not change the cost of a step, only keep it realistic.
CANDIDATES: dict[str, Callable[[list[torch.Tensor]], Optimizer]] = {
    "NovoGrad single-tensor": lambda p: NovoGrad(p, lr=0.007, weight_decay=0.002, foreach=False, fused=False),
    "NovoGrad foreach": lambda p: NovoGrad(p, lr=0.007, weight_decay=0.002, foreach=True),
    "NovoGrad fused": lambda p: NovoGrad(p, lr=0.007, weight_decay=0.002, fused=True),
    "NovoGrad loop (NeMo/timm style)": lambda p: LoopNovoGrad(p, lr=0.007, betas=(0.95, 0.98), eps=1e-8,
                                                              weight_decay=0.002),
    "torch SGD-momentum foreach": lambda p: torch.optim.SGD(p, lr=0.4, momentum=0.9, weight_decay=1e-4, foreach=True),
    SGD_REFERENCE: lambda p: torch.optim.SGD(p, lr=0.4, momentum=0.9, weight_decay=1e-4, fused=True),
    "torch AdamW foreach": lambda p: torch.optim.AdamW(p, lr=0.002, weight_decay=0.12, foreach=True),
    ADAMW_REFERENCE: lambda p: torch.optim.AdamW(p, lr=0.002, weight_decay=0.12, fused=True),
}


def resnet50_shapes() -> list[torch.Size]:
    """The parameter shapes of torchvision's ResNet-50 (161 tensors, 25,557,032 parameters), built on the meta
    device so that nothing is allocated."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return [p.shape for p in model.parameters()]


SHAPE_SOURCES: dict[str, Callable[[], list[torch.Size]]] = {"resnet50": resnet50_shapes}


@dataclass
class Candidate:
    name: str
    optimizer: Optimizer
    warmup_s: float = 0.0
    round_ms: list[float] | None = None

    def state_bytes(self) -> int:
        return sum(
            value.numel() * value.element_size()
            for state in self.optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )


def make_candidate(name: str, shapes: list[torch.Size], device: torch.device, seed: int) -> Candidate:
    generator = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, device=device, generator=generator) * 0.05)
        p.grad = torch.randn(shape, device=device, generator=generator) * 1e-3
        params.append(p)
    return Candidate(name, CANDIDATES[name](params), round_ms=[])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(candidate: Candidate, steps: int, device: torch.device) -> float:
    """Mean ms per step() over `steps` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        candidate.optimizer.step()
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


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--model", default="resnet50", choices=sorted(SHAPE_SOURCES), help="parameter shapes")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default: 30)")
    parser.add_argument("--steps", type=int, default=2, help="steps per candidate per round (default: 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first; >= 2 compiles fused paths")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=None, help="a subset of candidates")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: results/bench/optimizer.json, optimizer_cuda.json on cuda)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 2:
        parser.error("--rounds and --steps must be >= 1 and --warmup >= 2 (the fused path compiles on step 2)")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is visible; run on a GPU machine or use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output = args.output or ROOT / "results" / "bench" / ("optimizer_cuda.json" if device.type == "cuda"
                                                           else "optimizer.json")
    names = args.only or list(CANDIDATES)
    for reference in (SGD_REFERENCE, ADAMW_REFERENCE):
        if reference not in names:
            names.append(reference)  # the ratios need both references

    shapes = SHAPE_SOURCES[args.model]()
    param_count = sum(shape.numel() for shape in shapes)
    print(f"{args.model}: {len(shapes)} tensors, {param_count / 1e6:.2f}M parameters (fp32) on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    candidates = []
    for index, name in enumerate(names):
        candidate = make_candidate(name, shapes, device, seed=index)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.warmup):
            candidate.optimizer.step()
        synchronize(device)
        candidate.warmup_s = time.perf_counter() - start
        print(f"  warm-up {name}: {candidate.warmup_s:.1f} s for {args.warmup} steps")
        candidates.append(candidate)

    # Interleave: each round runs every candidate once, starting from a different one each round.
    for round_index in range(args.rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            candidate.round_ms.append(timed_steps(candidate, args.steps, device))

    load_average = os.getloadavg()
    medians = {c.name: statistics.median(c.round_ms) for c in candidates}
    param_bytes = param_count * 4
    print(f"\n{'candidate':34s} {'median ms':>10s} {'min ms':>8s} {'/SGD fused':>11s} {'/AdamW fused':>13s}"
          f" {'state MB':>9s} {'state/params':>12s}")
    rows = {}
    for c in candidates:
        ratios = {reference: medians[c.name] / medians[reference] for reference in TARGETS}
        rows[c.name] = {
            "median_ms": medians[c.name],
            "min_ms": min(c.round_ms),
            "round_ms": c.round_ms,
            "warmup_s": c.warmup_s,
            "state_bytes": c.state_bytes(),
            "ratio_to_sgd_fused": ratios[SGD_REFERENCE],
            "ratio_to_adamw_fused": ratios[ADAMW_REFERENCE],
        }
        print(f"{c.name:34s} {medians[c.name]:10.2f} {min(c.round_ms):8.2f} {ratios[SGD_REFERENCE]:10.2f}x "
              f"{ratios[ADAMW_REFERENCE]:12.2f}x {c.state_bytes() / 2**20:9.1f} {c.state_bytes() / param_bytes:12.3f}")

    novograd_paths = [c.name for c in candidates if c.name.startswith("NovoGrad") and "loop" not in c.name]
    verdict = {}
    if novograd_paths:
        fastest = min(novograd_paths, key=medians.__getitem__)
        print(f"\nfastest NovoGrad path: {fastest}")
        for reference, target in TARGETS.items():
            ratio = medians[fastest] / medians[reference]
            ratio_of_minima = rows[fastest]["min_ms"] / rows[reference]["min_ms"]
            met = ratio <= target
            verdict[reference] = {"fastest": fastest, "ratio": ratio, "ratio_of_minima": ratio_of_minima,
                                  "target": target, "met": met}
            print(f"  {ratio:.2f}x {reference} (target <= {target}x): {'met' if met else 'MISSED'}; "
                  f"fastest rounds: {ratio_of_minima:.2f}x")

    print(f"load average (1, 5, 15 min) at the end: {load_average[0]:.2f} {load_average[1]:.2f} "
          f"{load_average[2]:.2f} on {os.cpu_count()} CPUs")
    result = {
        "machine": {**machine_info(device), "load_average_1_5_15min": load_average},
        "settings": {"model": args.model, "tensors": len(shapes), "parameters": param_count, "dtype": "float32",
                     "rounds": args.rounds, "steps_per_round": args.steps, "warmup_steps": args.warmup},
        "candidates": rows,
        "targets": verdict,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")
    return result


if __name__ == "__main__":
    main()
