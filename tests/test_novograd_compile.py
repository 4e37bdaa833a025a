"""NovoGrad under torch.compile as torch.optim's optimizers are: a caller may compile a function that calls
`step()` on every path, and a scheduler that changes any per-group number (lr, betas, weight decay, eps) never
recompiles the fused step, which would otherwise fall back to eager past Dynamo's recompile limit."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from novograd import NovoGrad

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()


def model_and_batches(steps: int, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    return model, [torch.randn(16, 4, generator=gen, dtype=dtype) for _ in range(steps)]


def backward(model: torch.nn.Module, batch: torch.Tensor) -> None:
    model.zero_grad()
    model(batch).square().mean().backward()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def train(path: str, compile_step: bool, steps: int = 4) -> list[torch.Tensor]:
    model, batches = model_and_batches(steps)
    opt = NovoGrad(model.parameters(), lr=0.1, weight_decay=0.01, grad_averaging=True, **PATHS[path])

    def step():
        opt.step()

    run_step = torch.compile(step) if compile_step else step
    for i, batch in enumerate(batches):
        backward(model, batch)
        run_step()
        if i == 1:
            graphs_after_second_step = graphs()
    if compile_step:
        # The first step (moments initialised) and the later ones are a graph each; nothing recompiles after.
        assert graphs_after_second_step >= 1
        assert graphs() == graphs_after_second_step
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("path", PATHS)
def test_a_compiled_function_that_calls_step_equals_eager(path):
    """fp64, so that a lost in-place update (torch.compile drops those of 0-dim fp64 CPU inputs, the second
    moments here) shows: the run then diverges by orders of magnitude."""
    expected = train(path, compile_step=False)
    for layer, (a, e) in enumerate(zip(train(path, compile_step=True), expected)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"layer {layer}")


def scheduled_run(path: str, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """OneCycleLR cycling lr and beta1 every step, and weight decay and eps changed every step by hand; returns
    the weights and the number of compiled graphs after each step."""
    model, batches = model_and_batches(steps)
    opt = NovoGrad(model.parameters(), lr=0.1, betas=(0.95, 0.5), weight_decay=0.01, **PATHS[path])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, cycle_momentum=True,
                                                    base_momentum=0.8, max_momentum=0.95)
    graph_counts = []
    for i, batch in enumerate(batches):
        backward(model, batch)
        opt.param_groups[0]["weight_decay"] = 0.01 * (1 + i)
        opt.param_groups[0]["eps"] = 1e-8 * (1 + i)
        opt.step()
        scheduler.step()
        graph_counts.append(graphs())
    return [p.detach().clone() for p in model.parameters()], graph_counts


def test_a_scheduler_changing_every_hyperparameter_never_recompiles_the_fused_step():
    steps = torch._dynamo.config.recompile_limit + 4
    actual, graph_counts = scheduled_run("fused", steps)
    # The first step runs eagerly (moments initialised); the second compiles the update; none after it.
    assert graph_counts[1] >= 1, "the fused step compiled nothing: the test would not see a recompilation"
    assert graph_counts[-1] == graph_counts[1], f"graphs after each step: {graph_counts}"
    expected, _ = scheduled_run("foreach", steps)
    for layer, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"layer {layer}")
