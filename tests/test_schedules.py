"""Schedules against their formulas, stepped like the engine steps them (once per optimizer step)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from novograd.optim.schedules import build_scheduler


def _lrs(cfg: dict, total_steps: int, lrs: tuple[float, ...] = (0.1,), steps: int | None = None) -> list[list[float]]:
    """The lr of every group used by each optimizer step 1..steps."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    used = []
    for _ in range(total_steps if steps is None else steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


def test_constant():
    assert _lrs({"name": "constant"}, 5) == [[0.1]] * 5


def test_cosine_from_base_to_min_lr():
    used = _lrs({"name": "cosine", "min_lr": 0.01}, 4, steps=6)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)] + [0.01, 0.01]
    assert [lr for (lr,) in used] == pytest.approx(expected, rel=1e-12)


def test_poly_matches_tf_polynomial_decay():
    # Jasper's schedule: lr 0.02, power 2, min_lr 1e-5, held at min_lr past the end.
    used = [lr for (lr,) in _lrs({"name": "poly", "power": 2.0, "min_lr": 1e-5}, 10, lrs=(0.02,), steps=12)]
    expected = [(0.02 - 1e-5) * (1 - t / 10) ** 2 + 1e-5 for t in range(10)] + [1e-5, 1e-5]
    assert used == pytest.approx(expected, rel=1e-12)


def test_linear_warmup_in_steps_then_decay_over_the_rest():
    # W = 4 of T = 12: lr = base*t/4 for t < 4, then the cosine runs over the 8 remaining steps.
    used = [lr for (lr,) in _lrs({"name": "cosine", "warmup_steps": 4}, 12)]
    expected = [0.1 * t / 4 for t in range(4)] + [0.1 * (1 + math.cos(math.pi * (t - 4) / 8)) / 2 for t in range(4, 12)]
    assert used == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_ratio_is_a_fraction_of_total_steps():
    by_ratio = _lrs({"name": "poly", "warmup_ratio": 0.05}, 200)
    by_steps = _lrs({"name": "poly", "warmup_steps": 10}, 200)
    assert by_ratio == by_steps
    assert by_ratio[10] == [pytest.approx(0.1)] and by_ratio[9] == [pytest.approx(0.09)]


def test_each_group_decays_from_its_own_lr_to_the_shared_min_lr():
    used = _lrs({"name": "poly", "power": 1.0, "min_lr": 0.01}, 4, lrs=(0.1, 0.05), steps=5)
    assert used[2] == pytest.approx([0.01 + 0.09 * 0.5, 0.01 + 0.04 * 0.5])
    assert used[4] == pytest.approx([0.01, 0.01])


def test_hydra_config_and_state_dict_resume():
    cfg = OmegaConf.create({"name": "poly", "warmup_steps": 2, "warmup_ratio": 0.0, "power": 2.0, "min_lr": 0.0})
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scheduler = build_scheduler(cfg, optimizer, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    saved = pickle.loads(pickle.dumps((optimizer.state_dict(), scheduler.state_dict())))

    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = build_scheduler(cfg, resumed_optimizer, 10)
    resumed_optimizer.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        resumed_optimizer.step()
        resumed.step()
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_works_through_larc():
    from novograd.optim.larc import LARC

    optimizer = LARC(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1))
    scheduler = build_scheduler({"name": "cosine"}, optimizer, 2)
    optimizer.step()
    scheduler.step()
    assert optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "cfg, total_steps, message",
    [
        ({"name": "linear"}, 10, "constant, cosine, poly"),
        ({"name": "cosine", "warmup_steps": 2, "warmup_ratio": 0.1}, 10, "both set"),
        ({"name": "cosine", "warmup_steps": 10}, 10, "no step to decay"),
        ({"name": "cosine", "warmup_ratio": 1.5}, 10, "warmup_ratio"),
        ({"name": "cosine", "warmup_steps": -1}, 10, "warmup_steps"),
        ({"name": "poly", "power": 0.0}, 10, "power"),
        ({"name": "poly", "min_lr": 1.0}, 10, "exceeds the lr"),
        ({"name": "constant", "min_lr": 0.01}, 10, "no meaning"),
        ({"name": "cosine", "warmup": 5}, 10, "Unknown scheduler keys"),
        ({"name": "cosine"}, 0, "total_steps"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(cfg, total_steps, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        build_scheduler(cfg, optimizer, total_steps)
