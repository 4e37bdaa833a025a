"""The deep linear network study (novograd.dln): update rules, batched twins, verdicts, and the `make dln` path."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from novograd.dln.app import CONFIG_DIR, main, scenarios_from_config
from novograd.dln.optimizers import OPTIMIZERS, build_torch_optimizer
from novograd.dln.problem import DeepLinearNetwork, flat_distance, loss_and_grads
from novograd.dln.study import Scenario, hyperparameter_axis, init_axis, train_batched, train_real
from novograd.dln.verdict import VERDICTS, VerdictCriteria, VerdictTracker, classify

BETAS = (0.95, 0.5)
LR, WD = 0.2, 0.1
INIT = (0.5, 1.5)  # r = w1 w2 - 1 = -0.25, so g = 2 r (w2, w1) = (-0.75, -0.25)


def _two_steps(optimizer: str) -> torch.Tensor:
    return train_real(optimizer, init=INIT, lr=LR, weight_decay=WD, betas=BETAS, steps=2)


def _grad(w1: float, w2: float) -> tuple[float, float]:
    r = w1 * w2 - 1.0
    return 2 * r * w2, 2 * r * w1


def test_sgd_first_steps_by_hand():
    t = _two_steps("sgd")
    # g + wd w = (-0.75 + 0.05, -0.25 + 0.15) = (-0.7, -0.1); the buffer starts at it; w - lr m.
    assert t[1].tolist() == pytest.approx([0.5 + 0.2 * 0.7, 1.5 + 0.2 * 0.1], rel=1e-15)
    g = _grad(*t[1].tolist())
    m = [0.95 * m1 + 0.05 * (gi + WD * wi) for m1, gi, wi in zip((-0.7, -0.1), g, t[1].tolist())]
    assert t[2].tolist() == pytest.approx([w - LR * mi for w, mi in zip(t[1].tolist(), m)], rel=1e-14)


def test_adam_first_steps_by_hand():
    t = _two_steps("adam")
    # Bias-corrected first step of Adam is lr * sign(g + wd w) (up to eps): (-0.7, -0.1) -> +0.2 each.
    assert t[1].tolist() == pytest.approx([0.7, 1.7], rel=1e-7)
    g1 = (-0.7, -0.1)
    g2 = [gi + WD * wi for gi, wi in zip(_grad(*t[1].tolist()), t[1].tolist())]
    expected = []
    for w, a, b in zip(t[1].tolist(), g1, g2):
        m = (0.95 * 0.05 * a + 0.05 * b) / (1 - 0.95**2)
        v = (0.5 * 0.5 * a * a + 0.5 * b * b) / (1 - 0.5**2)
        expected.append(w - LR * m / (math.sqrt(v) + 1e-8))
    assert t[2].tolist() == pytest.approx(expected, rel=1e-12)


def test_adamw_first_steps_by_hand():
    t = _two_steps("adamw")
    # Decoupled: w (1 - lr wd) = 0.98 w, then lr * sign(g) with g = (-0.75, -0.25).
    assert t[1].tolist() == pytest.approx([0.98 * 0.5 + 0.2, 0.98 * 1.5 + 0.2], rel=1e-7)
    g1 = (-0.75, -0.25)
    g2 = _grad(*t[1].tolist())
    expected = []
    for w, a, b in zip(t[1].tolist(), g1, g2):
        m = (0.95 * 0.05 * a + 0.05 * b) / (1 - 0.95**2)
        v = (0.5 * 0.5 * a * a + 0.5 * b * b) / (1 - 0.5**2)
        expected.append(w * (1 - LR * WD) - LR * m / (math.sqrt(v) + 1e-8))
    assert t[2].tolist() == pytest.approx(expected, rel=1e-12)


def test_novograd_first_steps_by_hand():
    t = _two_steps("novograd")
    # Algorithm 1: v1 = g^2, m1 = g / sqrt(v1) + wd w = (-1 + 0.05, -1 + 0.15); w - lr m1.
    assert t[1].tolist() == pytest.approx([0.5 + 0.2 * 0.95, 1.5 + 0.2 * 0.85], rel=1e-7)
    g1 = (-0.75, -0.25)
    g2 = _grad(*t[1].tolist())
    expected = []
    for w, a, b, m1 in zip(t[1].tolist(), g1, g2, (-0.95, -0.85)):
        v = 0.5 * a * a + 0.5 * b * b  # per layer: the layer is one number, so ||g||^2 = g^2
        m = 0.95 * m1 + 0.05 * (b / math.sqrt(v + 1e-8) + WD * w)
        expected.append(w - LR * m)
    assert t[2].tolist() == pytest.approx(expected, rel=1e-7)


def test_sgd_is_gradient_averaging_form():
    opt = build_torch_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=LR, weight_decay=WD, betas=BETAS)
    group = opt.param_groups[0]
    assert (group["momentum"], group["dampening"], group["nesterov"]) == (0.95, 0.95, False)


def test_loss_and_grads_are_autograd_bitwise():
    w = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    loss, g1, g2 = loss_and_grads(w[:, 0], w[:, 1])
    for i in range(len(w)):
        model = DeepLinearNetwork(*w[i].tolist())
        model.loss().backward()
        assert model.loss().item() == loss[i].item()
        assert (model.layer1.weight.grad.item(), model.layer2.weight.grad.item()) == (g1[i].item(), g2[i].item())


# Each problem its own (init, lr, wd): the paper's four scenarios, one where SGD blows up to inf/NaN, no decay.
PROBLEMS = [((0.25, 2.0), 0.2, 0.1), ((0.25, 2.0), 1.0, 0.1), ((0.25, 2.0), 0.2, 0.5), ((-2.0, 1.5), 0.2, 0.1),
            ((3.0, 3.0), 1.0, 0.0), ((0.3, -0.7), 0.05, 0.0)]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_batched_runs_equal_real_optimizer_runs(optimizer):
    """The robustness maps' batched update is the real optimizer, bit for bit, over 500 steps.

    Bitwise, because oscillating runs amplify any rounding difference. If this fails after a change to an
    optimizer's implementation (e.g. NovoGrad's order of operations), mirror the change in novograd/dln/optimizers.py.
    """
    steps = 500
    real = torch.stack([train_real(optimizer, init=init, lr=lr, weight_decay=wd, betas=BETAS, steps=steps)
                        for init, lr, wd in PROBLEMS], dim=1)
    batched = train_batched(
        optimizer,
        init=torch.tensor([p[0] for p in PROBLEMS], dtype=torch.float64),
        lr=torch.tensor([p[1] for p in PROBLEMS], dtype=torch.float64),
        weight_decay=torch.tensor([p[2] for p in PROBLEMS], dtype=torch.float64),
        betas=BETAS, steps=steps, criteria=VerdictCriteria(), record=True,
    )
    assert torch.equal(batched.trajectories.isnan(), real.isnan())
    finite = ~real.isnan()
    assert torch.equal(batched.trajectories[finite], real[finite])
    assert [VERDICTS[c] for c in batched.verdicts] == [classify(real[:, i]) for i in range(len(PROBLEMS))]


# ---- verdicts on constructed trajectories (criteria: loss < 0.01 over the last 50 points, box 10, still 1e-3)

def _approach(target: tuple[float, float], start: tuple[float, float], steps: int = 100) -> torch.Tensor:
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64).unsqueeze(-1)
    decay = (1 - t) ** 20  # still (moves < 1e-6) over the last 50 points
    return torch.tensor(target, dtype=torch.float64) + decay * (torch.tensor(start) - torch.tensor(target))


def test_verdict_converged_including_a_far_excursion_that_comes_back():
    assert classify(_approach((1.0, 1.0), (0.25, 2.0))) == "converged"
    trajectory = _approach((-1.0, -1.0), (0.25, 2.0))
    trajectory[5] = torch.tensor([40.0, 0.1])  # strays out of the box early, then comes back
    assert classify(trajectory) == "converged"


def test_verdict_oscillating_even_if_the_last_point_is_on_the_hyperbola():
    trajectory = torch.tensor([[1.0, 1.0], [1.3, 1.3]], dtype=torch.float64).repeat(50, 1)
    trajectory = torch.cat([trajectory, torch.tensor([[1.0, 1.0]], dtype=torch.float64)])
    assert classify(trajectory) == "oscillating"


def test_verdict_stalled_off_the_hyperbola():
    # SGD with L2 weight decay d rests at w1 = w2 = sqrt(1 - d / 2): loss (d / 2)^2 = 0.0625 for d = 0.5.
    assert classify(_approach((0.75**0.5, 0.75**0.5), (0.25, 2.0))) == "stalled"


def test_verdict_diverged():
    assert classify(_approach((1e3, 1e-3), (0.25, 2.0))) == "diverged"  # slides off along the hyperbola
    nan_once = _approach((1.0, 1.0), (0.25, 2.0))
    nan_once[3, 0] = float("nan")
    assert classify(nan_once) == "diverged"
    out_at_the_end = _approach((1.0, 1.0), (0.25, 2.0))
    out_at_the_end[-1] = torch.tensor([10.5, 0.0952])  # on the hyperbola, but out of the box
    assert classify(out_at_the_end) == "diverged"


def test_verdict_thresholds_are_the_stated_ones():
    just_below = torch.full((60, 2), (1 + 0.0999) ** 0.5, dtype=torch.float64)
    just_above = torch.full((60, 2), (1 + 0.1001) ** 0.5, dtype=torch.float64)
    assert classify(just_below) == "converged"
    assert classify(just_above) == "stalled"
    assert classify(just_above, VerdictCriteria(loss_threshold=0.011)) == "converged"


def test_tracker_batch_equals_per_trajectory_verdicts():
    trajectories = torch.stack([
        _approach((1.0, 1.0), (0.25, 2.0)), _approach((1e3, 1e-3), (0.25, 2.0)),
        _approach((0.75**0.5, 0.75**0.5), (0.25, 2.0)),
        torch.tensor([[1.0, 1.0], [1.3, 1.3]], dtype=torch.float64).repeat(51, 1)[:101],
    ], dim=1)
    tracker = VerdictTracker(100, (4,), VerdictCriteria())
    for point in trajectories:
        tracker.update(point)
    assert [VERDICTS[c] for c in tracker.verdicts()] == [classify(trajectories[:, i]) for i in range(4)]
    assert [VERDICTS[c] for c in tracker.verdicts()] == ["converged", "diverged", "stalled", "oscillating"]


def test_flat_distance():
    points = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [4.0, 0.25], [0.0, 0.0]], dtype=torch.float64)
    assert flat_distance(points).tolist() == pytest.approx([0.0, 0.0, math.hypot(3.0, 0.75), math.sqrt(2)])


# ---- bad input

def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="trajectory of shape"):
        classify(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
        build_torch_optimizer("lamb", [torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=0.0, betas=BETAS)
    with pytest.raises(ValueError, match="paper claim"):
        Scenario("x", 0.2, 0.1, (1.0, 1.0), paper_claims={"sgd": "diverges"})
    with pytest.raises(ValueError, match="lr > 0"):
        Scenario("x", 0.0, 0.1, (1.0, 1.0))
    with pytest.raises(ValueError, match="log axis needs low > 0"):
        hyperparameter_axis(0.0, 1.0, 5, log=True)
    with pytest.raises(ValueError, match="tail_steps"):
        VerdictCriteria(tail_steps=0)


def test_init_axis_avoids_the_axes_of_the_plane():
    axis = init_axis(3.0, 48)
    assert len(axis) == 48 and not (axis == 0).any()
    assert axis[0].item() == pytest.approx(-3.0 + 3.0 / 48) and axis[-1].item() == pytest.approx(3.0 - 3.0 / 48)


# ---- configuration and the whole `make dln` path

def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_config_holds_the_papers_four_scenarios():
    scenarios = scenarios_from_config(_compose([]))
    assert [(s.name, s.lr, s.weight_decay) for s in scenarios] == [
        ("baseline", 0.2, 0.1), ("high_lr", 1.0, 0.1), ("high_wd", 0.2, 0.5), ("bad_init", 0.2, 0.1)]
    assert scenarios[3].paper_claims == {"sgd": "converged", "adamw": "diverged", "novograd": "converged"}


def test_custom_scenario_from_the_command_line():
    (scenario,) = scenarios_from_config(_compose(["lr=0.5", "init=[1.0,0.5]"]))
    assert (scenario.name, scenario.lr, scenario.weight_decay, scenario.init) == ("custom", 0.5, 0.1, (1.0, 0.5))
    assert scenario.paper_claims == {}


def test_custom_scenario_runs_alone_into_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["novograd.dln", "weight_decay=0.3", "name=mine", "steps=20",
                                      "robustness.enabled=false", f"custom_output_dir={tmp_path}/${{name}}"])
    main()
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    assert [(r["scenario"], r["lr"], r["weight_decay"], r["paper_claim"]) for r in summary["runs"]] == [
        ("mine", 0.2, 0.3, "unstated")] * 4
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"mine.png", "summary.json", "summary.md"}


TINY = ["steps=60", "robustness.init_grid.points=6", "robustness.hyperparameter_grid.lr.points=3",
        "robustness.hyperparameter_grid.weight_decay.points=2", "robustness.hyperparameter_grid.init_points=2"]


def test_make_dln_path_writes_figures_and_summary(tmp_path, monkeypatch, capsys):
    """`python -m novograd.dln` as `make dln` runs it, on 60 steps and tiny grids."""
    monkeypatch.setattr(sys, "argv", ["novograd.dln", f"output_dir={tmp_path}", *TINY])
    main()
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"baseline.png", "high_lr.png", "high_wd.png", "bad_init.png", "robustness_init.png",
                     "robustness_lr_wd.png", "summary.json", "summary.md"}
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = summary["runs"]
    assert [(r["scenario"], r["optimizer"]) for r in runs] == [
        (s, o) for s in ("baseline", "high_lr", "high_wd", "bad_init") for o in OPTIMIZERS]
    for r in runs:
        assert {"scenario", "optimizer", "lr", "weight_decay", "init", "final", "final_loss", "verdict",
                "paper_claim"} <= r.keys()
        assert r["verdict"] in VERDICTS and r["paper_claim"] in (*VERDICTS, "unstated")
        assert len(r["init"]) == len(r["final"]) == 2 and isinstance(r["final_loss"], float)
        assert r["reproduced"] == (None if r["paper_claim"] == "unstated" else r["verdict"] == r["paper_claim"])
        assert (r["grid_agreement"] is None) == (r["paper_claim"] == "unstated")
    assert summary["claims"]["stated"] == 15
    assert summary["claims"]["reproduced"] == sum(bool(r["reproduced"]) for r in runs)
    # The recorded runs are what the real optimizers do from the recorded settings.
    first = runs[0]
    final = train_real(first["optimizer"], init=tuple(first["init"]), lr=first["lr"],
                       weight_decay=first["weight_decay"], betas=BETAS, steps=60)[-1]
    assert final.tolist() == first["final"]
    fractions = summary["robustness_init_grid"][0]["fractions"]  # lr 0.2, wd 0.1: baseline and bad_init
    assert all(sum(f.values()) == pytest.approx(1.0) for f in fractions.values())
    for r in runs:
        if r["scenario"] in ("baseline", "bad_init") and r["grid_agreement"] is not None:
            assert r["grid_agreement"] == fractions[r["optimizer"]][r["paper_claim"]]

    table = (tmp_path / "summary.md").read_text()
    assert table.count("\n| ") == 1 + 16 + 1 + 4  # header and 16 runs; the robustness header and 4 optimizers
    assert f"**{summary['claims']['reproduced']} of the 15 verdicts the paper states reproduced.**" in table
    assert "Figures, summary.json and summary.md are in" in capsys.readouterr().out
