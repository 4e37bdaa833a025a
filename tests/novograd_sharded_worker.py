"""Run by tests/test_novograd_sharded.py under torchrun (2 gloo CPU ranks): NovoGrad on a model sharded by FSDP2
against the same optimizer on the same model unsharded, in one process per rank, for every path and flag.

Writes, from rank 0, a JSON file (argv[1]) mapping each case to the largest difference of the weights (and of the
momentum) from the unsharded run and to the collectives of each optimizer step, by kind. The cases named
"per_shard_norms/..." run with the reduction of the layer norms switched off (each rank normalises by its shard's
norm): the negative control, which must fail the comparison the other cases pass.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from unittest import mock

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

from novograd import NovoGrad
from novograd.optim.larc import LARC

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
# Every flag on in some case; the fused path (seconds of compilation per graph) runs the defaults and clipping.
CASES = {
    "defaults": dict(),
    "amsgrad_averaging_maximize": dict(amsgrad=True, grad_averaging=True, maximize=True),
    "clipping": dict(max_grad_norm=0.05),
    "no_gradient": dict(no_gradient=True),
    "larc": dict(larc=True),
    "grad_scaler": dict(grad_scaler=True),
}
FUSED_CASES = ("defaults", "clipping")
# fp32 runs the cases whose arithmetic differs from fp64's by more than the dtype (scales, clip coefficients).
FP32_CASES = ("defaults", "clipping", "grad_scaler")
STEPS = 4


def make_model(dtype: torch.dtype) -> torch.nn.Sequential:
    """Layers whose sizes do not divide by 2 (uneven shards; the last bias has one element, rank 1 none)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Tanh(),
                               torch.nn.Linear(3, 1)).to(dtype)


def train(case: str, path: str, dtype: torch.dtype, mesh) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Weights and exp_avgs (whole tensors) after STEPS steps, and the collectives of each optimizer step."""
    flags = dict(CASES[case])
    max_grad_norm = flags.pop("max_grad_norm", None)
    no_gradient = flags.pop("no_gradient", False)
    larc = flags.pop("larc", False)
    grad_scaler = flags.pop("grad_scaler", False)
    model = make_model(dtype)
    if mesh is not None:
        for layer in model[::2]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = NovoGrad(model.parameters(), lr=0.05, betas=(0.9, 0.5), weight_decay=0.01, **flags, **PATHS[path])
    stepper = LARC(optimizer, trust_coefficient=0.02) if larc else optimizer
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if grad_scaler else None
    gen = torch.Generator().manual_seed(1)
    collectives = []
    skipped = 0
    for step in range(STEPS):
        batch = torch.randn(8, 5, generator=gen, dtype=dtype)
        optimizer.zero_grad()
        loss = model(batch).square().mean()
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None and step == 1:
            # An overflow in one element, on the last rank's shard only: every rank must skip the step.
            grad = model[0].weight.grad
            if not isinstance(grad, DTensor):
                grad[-1, 0] = float("inf")
            elif dist.get_rank() == dist.get_world_size() - 1:
                grad.to_local()[-1, 0] = float("inf")
        if no_gradient and step % 2 == 0:
            model[2].weight.grad = None  # this layer sits out every other step (its first step comes later)
        with CommDebugMode() as comm:
            kwargs = {} if max_grad_norm is None else dict(max_grad_norm=max_grad_norm)
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.step(stepper, **kwargs)
                scaler.update()
                skipped += scaler.get_scale() < scale
            else:
                stepper.step(**kwargs)
        collectives.append({str(op).split(".")[-1]: n for op, n in comm.get_comm_counts().items()})

    def whole(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach().double()

    params = list(model.parameters())
    assert skipped == (1 if scaler is not None else 0), skipped
    if mesh is not None:  # torch.optim's layout: the momentum sharded as its parameter, v one plain scalar
        for state in optimizer.state_dict()["state"].values():
            assert isinstance(state["exp_avg"], DTensor) and not isinstance(state["exp_avg_sq"], DTensor), state
            assert state["exp_avg_sq"].dim() == 0
    return ([whole(p) for p in params], [whole(optimizer.state[p]["exp_avg"]) for p in params], collectives)


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max().item() if x.numel() else 0.0) for x, y in zip(a, b))


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {}
    runs = [(case, path, dtype) for dtype in (torch.float64, torch.float32) for path in PATHS for case in CASES
            if (path != "fused" or case in FUSED_CASES) and (dtype == torch.float64 or case in FP32_CASES)]
    runs += [("defaults", path, torch.bfloat16) for path in PATHS]
    controls = [("defaults", path, torch.float64) for path in PATHS] + [("larc", "foreach", torch.float64)]
    for per_shard_norms, cases in ((False, runs), (True, controls)):
        for case, path, dtype in cases:
            expected_params, expected_moments, _ = train(case, path, dtype, mesh=None)
            with mock.patch("torch.distributed.all_reduce") if per_shard_norms else nullcontext():
                params, moments, collectives = train(case, path, dtype, mesh)
            name = f"{case}-{path}-{str(dtype).removeprefix('torch.')}"
            results[f"per_shard_norms/{name}" if per_shard_norms else name] = dict(
                params=max_difference(params, expected_params), exp_avg=max_difference(moments, expected_moments),
                collectives=collectives)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()  # no rank tears gloo down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
