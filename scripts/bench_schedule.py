"""The fused (compiled) NovoGrad step under a schedule that changes beta1 every step, against the same step with
constant hyperparameters: the ratio of their times per step, which is 1 when no schedule recompiles the step.

Both runs own a copy of the parameters (ResNet-50's or Transformer-big's shapes, fp32) and share fixed random
gradients. `OneCycleLR(cycle_momentum=True)` cycles lr and beta1 in one run; the other keeps them. After a warm-up
past Dynamo's recompile limit (a step that recompiled per value of beta1 would be eager by then), they run in
interleaved rounds; the median over rounds of the ms per step of each and their ratio are printed.

    python scripts/bench_schedule.py [--model resnet50|transformer_big] [--rounds 20] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory
sys.path.insert(0, str(ROOT / "scripts"))

from bench_optimizer import MODELS, random_tensors, synchronize  # noqa: E402

from novograd.optim.novograd import NovoGrad  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = MODELS[args.model].shapes()
    grads = random_tensors(shapes, device, seed=12345, scale=1e-3)
    total = (torch._dynamo.config.recompile_limit + 2 + args.rounds) * args.steps
    runs = {}
    for name, cycle in (("constant", False), ("OneCycleLR cycling beta1", True)):
        params = [torch.nn.Parameter(w) for w in random_tensors(shapes, device, seed=0, scale=0.05)]
        for p, g in zip(params, grads):
            p.grad = g
        optimizer = NovoGrad(params, lr=0.01, fused=True)
        scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=total + 1,
                                                         cycle_momentum=True) if cycle else None)

        def step(optimizer=optimizer, scheduler=scheduler) -> None:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

        runs[name] = step
    with torch.no_grad():
        for _ in range((torch._dynamo.config.recompile_limit + 2) * args.steps):
            for step in runs.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.rounds):
            names = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for name in names:
                synchronize(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    runs[name]()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1e3 / args.steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    constant, cycling = medians.values()
    print(f"{args.model} on {device}, {torch.get_num_threads()} threads, fused NovoGrad, median ms per step over "
          f"{args.rounds} rounds of {args.steps} steps:")
    for name, value in medians.items():
        print(f"  {name:28s} {value:8.2f} ms")
    print(f"  ratio cycling / constant: {cycling / constant:.3f}")
    return {**medians, "ratio": cycling / constant}


if __name__ == "__main__":
    main()
