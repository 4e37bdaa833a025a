"""NovoGrad against values computed by hand from the paper's formulas, flag by flag, and as a torch optimizer.

Expected values come from plain-Python arithmetic on the formulas of Section 3 / Algorithm 1 (the way TF-Addons
tests its NovoGrad; tests/novograd_reference.py), never from the optimizer's own code. Every implementation against
them in fp64, fp32 and bf16: test_novograd_paths.py; loss scaling and clipping: test_novograd_amp.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from novograd_reference import reference_novograd

from novograd import NovoGrad
from novograd.optim.novograd import novograd as novograd_step

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True)}
ALL_PATHS = {**PATHS, "fused": dict(fused=True)}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own graphs: past dynamo's recompile limit (8 graphs, shared by every test of the
    process) the fused path would silently run eagerly and the tests would not test the compiled step."""
    torch._dynamo.reset()


def run_novograd(w, grads, **kwargs):
    param = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
    opt = NovoGrad([param], **kwargs)
    history = []
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append(param.detach().tolist())
    return history


@pytest.mark.parametrize("path", PATHS)
def test_first_step_is_algorithm_1_moment_initialisation(path):
    # w0 = (1, 2), g1 = (3, 4): ||g1||^2 = 25; eps = 11 inside the sqrt makes denom = sqrt(36) = 6.
    # m1 = g1/6 + 0.1*w0 = (0.6, 0.8666...); w1 = w0 - 0.1*m1 = (0.94, 1.91333...).
    # grad_averaging must not scale the first moment on step 1 (Algorithm 1 initialises m1 with the whole term).
    for grad_averaging in (False, True):
        (w1,) = run_novograd([1.0, 2.0], [[3.0, 4.0]], lr=0.1, betas=(0.5, 0.5), eps=11.0, weight_decay=0.1,
                             grad_averaging=grad_averaging, **PATHS[path])
        assert w1 == pytest.approx([0.94, 2.0 - 0.1 * (4.0 / 6.0 + 0.2)], rel=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_second_step_by_hand(path):
    # Step 2 with g2 = (6, 8): v2 = 0.5*25 + 0.5*100 = 62.5; denom = sqrt(62.5 + 11) = sqrt(73.5).
    # m2 = 0.5*m1 + (g2/denom + 0.1*w1); w2 = w1 - 0.1*m2.
    _, w2 = run_novograd([1.0, 2.0], [[3.0, 4.0], [6.0, 8.0]], lr=0.1, betas=(0.5, 0.5), eps=11.0,
                         weight_decay=0.1, **PATHS[path])
    w1 = [0.94, 2.0 - 0.1 * (4.0 / 6.0 + 0.2)]
    m1 = [0.6, 4.0 / 6.0 + 0.2]
    denom = math.sqrt(73.5)
    m2 = [0.5 * m1[0] + 6.0 / denom + 0.1 * w1[0], 0.5 * m1[1] + 8.0 / denom + 0.1 * w1[1]]
    assert w2 == pytest.approx([w1[0] - 0.1 * m2[0], w1[1] - 0.1 * m2[1]], rel=1e-12)


FLAG_CASES = {
    "plain": dict(),
    "grad_averaging": dict(grad_averaging=True),
    "amsgrad": dict(amsgrad=True),
    "eps_outside_sqrt": dict(eps_inside_sqrt=False),
    "moment_init_zero": dict(moment_init="zero", grad_averaging=True),
    "maximize": dict(maximize=True),
    "no_weight_decay": dict(weight_decay=0.0),
    "everything": dict(grad_averaging=True, amsgrad=True, eps_inside_sqrt=False, moment_init="zero"),
}
# Norms that fall then rise, so that AMSGrad's max and the EMA differ at every step.
GRADS = [[3.0, -4.0, 12.0], [0.5, 0.25, -1.0], [2.0, 2.0, 1.0], [-0.1, 0.0, 0.3]]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", FLAG_CASES)
def test_each_flag_matches_the_formulas(path, case):
    hyper = dict(lr=0.05, b1=0.9, b2=0.3, eps=0.5, wd=0.2) | {
        {"weight_decay": "wd"}.get(k, k): v for k, v in FLAG_CASES[case].items()}
    expected = reference_novograd([1.0, -2.0, 0.5], GRADS, **hyper)
    kwargs = dict(lr=hyper.pop("lr"), betas=(hyper.pop("b1"), hyper.pop("b2")), eps=hyper.pop("eps"),
                  weight_decay=hyper.pop("wd"), **hyper)
    actual = run_novograd([1.0, -2.0, 0.5], GRADS, **kwargs, **PATHS[path])
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert a == pytest.approx(e, rel=1e-12), f"step {step + 1}"


def test_flags_change_the_result():
    """Guards the flag tests above: each flag must actually make a difference on this problem."""
    base = reference_novograd([1.0, -2.0, 0.5], GRADS, lr=0.05, b1=0.9, b2=0.3, eps=0.5, wd=0.2)[-1]
    for case, flags in FLAG_CASES.items():
        if case == "plain":
            continue
        hyper = dict(lr=0.05, b1=0.9, b2=0.3, eps=0.5, wd=0.2) | {
            {"weight_decay": "wd"}.get(k, k): v for k, v in flags.items()}
        assert reference_novograd([1.0, -2.0, 0.5], GRADS, **hyper)[-1] != pytest.approx(base), case


def nemo_novograd_reference(params, grads_per_step, *, lr, betas, eps, weight_decay):
    """NeMo's / timm's NvNovoGrad update with grad averaging, re-written from their published formula."""
    b1, b2 = betas
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros((), dtype=p.dtype) for p in params]
    for grads in grads_per_step:
        for p, g, m, i in zip(params, grads, ms, range(len(params))):
            norm_sq = g.pow(2).sum()
            vs[i] = norm_sq if vs[i] == 0 else vs[i] * b2 + norm_sq * (1 - b2)
            g = g / (vs[i].sqrt() + eps)
            g = g + weight_decay * p
            g = g * (1 - b1)
            m.mul_(b1).add_(g)
            p.sub_(lr * m)
    return params


@pytest.mark.parametrize("path", PATHS)
def test_nemo_timm_apex_equivalent_settings(path):
    torch.manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    init = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) for s in shapes] for _ in range(5)]
    expected = nemo_novograd_reference([w.clone() for w in init], grads, lr=0.01, betas=(0.95, 0.98),
                                       eps=1e-8, weight_decay=0.001)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = NovoGrad(params, lr=0.01, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.001, grad_averaging=True,
                   eps_inside_sqrt=False, moment_init="zero", **PATHS[path])
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def random_problem(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8,), (4, 3, 3, 3), (1,), (64,), (10, 10)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def train_random(params, steps=20, seed=1, lr_change_at=None, **kwargs):
    """Steps with the lr changed midway, all-zero gradients, and layers that sometimes have no gradient."""
    lr_change_at = steps // 2 if lr_change_at is None else lr_change_at
    opt = NovoGrad(params, lr=0.03, betas=(0.9, 0.5), weight_decay=0.01, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if (t + i) % 7 == 3:
                g = None  # this layer sits the step out; it joins late when t < i
            elif (t * i) % 11 == 5:
                g = torch.zeros_like(p)
            p.grad = g
        if t == lr_change_at:
            for group in opt.param_groups:
                group["lr"] = 0.01
        opt.step()
    return opt


@pytest.mark.parametrize("path", ALL_PATHS)
def test_functional_api_matches_the_optimizer(path):
    """`novograd()` on plain lists (moments initialised at `first_step`), with a grad_factor, equals the
    optimizer stepping on the scaled gradients."""
    params = random_problem(dtype=torch.float64)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros((), dtype=torch.float64) for _ in params]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = NovoGrad(reference, lr=0.03, betas=(0.9, 0.5), weight_decay=0.01, **ALL_PATHS[path])
    gen = torch.Generator().manual_seed(5)
    factor = torch.tensor(0.25, dtype=torch.float64)
    for t in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        with torch.no_grad():
            novograd_step(params, grads, exp_avgs, exp_avg_sqs, [], [t == 0] * len(params), grad_factor=factor,
                          lr=0.03, beta1=0.9, beta2=0.5, eps=1e-8, weight_decay=0.01, grad_averaging=False,
                          amsgrad=False, eps_inside_sqrt=True, moment_init="paper", maximize=False,
                          **ALL_PATHS[path])
        for p, g in zip(reference, grads):
            p.grad = g * factor
        opt.step()
    for a, b in zip(params, reference):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def test_parameter_without_gradient_is_untouched():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = NovoGrad([a, b], lr=0.1, weight_decay=0.5)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    state_before = {k: v.clone() for k, v in opt.state[a].items()}
    a.grad = None
    b.grad = torch.ones(3)
    opt.step()
    for key, value in opt.state[a].items():
        assert torch.equal(value, state_before[key]), key


def test_state_is_one_buffer_per_parameter_and_one_scalar_per_layer():
    params = random_problem()
    opt = train_random(params, steps=3)
    for p in params:
        state = opt.state[p]
        assert state["exp_avg"].shape == p.shape
        assert state["exp_avg_sq"].shape == () and state["exp_avg_sq"].dtype == torch.float32
        assert set(state) == {"exp_avg", "exp_avg_sq"}


def test_old_checkpoints_with_a_step_count_load():
    """Earlier versions kept a per-parameter `step` the update never read; their checkpoints still load."""
    params = random_problem()
    opt = train_random(params, steps=2)
    saved = opt.state_dict()
    for param_state in saved["state"].values():
        param_state["step"] = torch.tensor(2.0)
    new_opt = NovoGrad(params, lr=0.03)
    new_opt.load_state_dict(saved)
    assert all(set(state) == {"exp_avg", "exp_avg_sq"} for state in new_opt.state.values())


@pytest.mark.parametrize("save_path,load_path", [("foreach", "single"), ("single", "foreach"), ("foreach", "fused")])
def test_state_dict_round_trip_continues_exactly(save_path, load_path):
    straight = random_problem()
    train_random(straight, steps=12, **ALL_PATHS[save_path])

    first = random_problem()
    opt = train_random(first, steps=6, lr_change_at=6, **ALL_PATHS[save_path])
    saved = copy.deepcopy(opt.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    new_opt = NovoGrad(resumed, lr=0.03, betas=(0.9, 0.5), weight_decay=0.01, **ALL_PATHS[load_path])
    new_opt.load_state_dict(saved)
    # Continue the same gradient stream: steps 6..11 of train_random's generator.
    gen = torch.Generator().manual_seed(1)
    for t in range(12):
        grads = []
        for i, p in enumerate(resumed):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            grads.append(None if (t + i) % 7 == 3 else torch.zeros_like(p) if (t * i) % 11 == 5 else g)
        if t < 6:
            continue
        for p, g in zip(resumed, grads):
            p.grad = g
        if t == 6:
            for group in new_opt.param_groups:
                group["lr"] = 0.01
        new_opt.step()
    tolerance = dict(rtol=0, atol=0) if save_path == load_path else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(straight, resumed):
        torch.testing.assert_close(a, b, **tolerance)


def test_low_precision_params_keep_fp32_second_moment_across_load():
    params = [torch.nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16)) for _ in range(2)]
    opt = NovoGrad(params, lr=0.01)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    assert opt.state[params[0]]["exp_avg_sq"].dtype == torch.float32
    # The norm of a bf16 gradient is taken in fp32: it matches the fp32 norm of the same values.
    expected_v = params[0].grad.float().pow(2).sum()
    torch.testing.assert_close(opt.state[params[0]]["exp_avg_sq"], expected_v, rtol=1e-6, atol=0)
    new_opt = NovoGrad(params, lr=0.01)
    new_opt.load_state_dict(opt.state_dict())
    assert new_opt.state[params[0]]["exp_avg_sq"].dtype == torch.float32
    assert new_opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16


def test_grad_scaler_skips_an_overflowed_step():
    model = torch.nn.Linear(4, 2)
    opt = NovoGrad(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(3, 4)).sum()
    scaler.scale(loss).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert len(opt.state) == 0
    assert scaler.get_scale() == 2.0**7
    # The next, finite step is taken and sees the unscaled gradient.
    opt.zero_grad()
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    unscaled = [p.grad / scaler.get_scale() for p in model.parameters()]
    scaler.step(opt)
    for p, g in zip(model.parameters(), unscaled):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], g.pow(2).sum())


def test_works_with_an_lr_scheduler():
    param = torch.nn.Parameter(torch.ones(2))
    opt = NovoGrad([param], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    positions = []
    for _ in range(3):
        param.grad = torch.tensor([3.0, 4.0])  # g/||g|| = (0.6, 0.8); b1 = 0.95 momentum
        opt.step()
        sched.step()
        positions.append(param.detach().clone())
    m1 = torch.tensor([0.6, 0.8])
    m2 = 0.95 * m1 + m1
    torch.testing.assert_close(positions[1], torch.ones(2) - 1.0 * m1 - 0.5 * m2)


def rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("path", PATHS)
def test_converges_on_rosenbrock(path):
    # Each coordinate is its own layer: NovoGrad then normalises them separately.
    x, y = torch.nn.Parameter(torch.tensor(-1.5)), torch.nn.Parameter(torch.tensor(2.0))
    opt = NovoGrad([x, y], lr=0.01, betas=(0.9, 0.5), **PATHS[path])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3000)
    for _ in range(3000):
        opt.zero_grad()
        rosenbrock((x, y)).backward()
        opt.step()
        sched.step()
    assert rosenbrock((x, y)).item() < 1e-3
    assert x.item() == pytest.approx(1.0, abs=0.05) and y.item() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("path", PATHS)
def test_fits_a_small_regression(path):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 10, generator=gen)
    targets = inputs @ torch.randn(10, 1, generator=gen) + 0.5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = NovoGrad(model.parameters(), lr=0.05, betas=(0.95, 0.98), grad_averaging=True, **PATHS[path])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400)
    first = torch.nn.functional.mse_loss(model(inputs), targets).item()
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 0.01 * first


def test_sparse_gradient_is_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = NovoGrad(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_complex_parameter_is_a_clear_error():
    param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    param.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        NovoGrad([param]).step()


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-0.1), "learning rate: -0.1"),
    (dict(betas=(1.0, 0.5)), r"betas: \(1.0, 0.5\)"),
    (dict(betas=(0.9, -0.1)), r"betas: \(0.9, -0.1\)"),
    (dict(eps=0.0), "epsilon value: 0.0"),
    (dict(weight_decay=-1e-4), "weight_decay value: -0.0001"),
    (dict(moment_init="ones"), "moment_init: 'ones'"),
    (dict(foreach=True, fused=True), "cannot both be True"),
])
def test_bad_hyperparameters_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NovoGrad([torch.nn.Parameter(torch.ones(1))], **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("path", ALL_PATHS)
def test_cuda_paths_match_cpu_and_state_moves_between_devices(path):
    cpu = random_problem()
    train_random(cpu, foreach=False)
    cuda = [torch.nn.Parameter(p.detach().cuda()) for p in random_problem()]
    opt = train_random(cuda, **ALL_PATHS[path])
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(a, b.detach().cpu(), rtol=1e-5, atol=1e-6)
    moved = [torch.nn.Parameter(p.detach().cpu()) for p in cuda]
    cpu_opt = NovoGrad(moved, lr=0.01)
    cpu_opt.load_state_dict(opt.state_dict())
    assert all(s["exp_avg"].device.type == "cpu" for s in cpu_opt.state.values())


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_param_groups_with_their_own_hyperparameters(path):
    """Each group is updated with its own lr, weight decay and flags, on every path."""
    def build(kwargs):
        params = random_problem()
        groups = [dict(params=params[:3]), dict(params=params[3:], lr=0.2, weight_decay=0.0, grad_averaging=True)]
        return params, NovoGrad(groups, lr=0.03, weight_decay=0.05, **kwargs)

    results = {}
    for name in ("single", path):
        params, opt = build(ALL_PATHS[name])
        gen = torch.Generator().manual_seed(3)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        results[name] = params
    for a, b in zip(results["single"], results[path]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The second group really ran with its own lr: one step of plain NovoGrad moves a layer by lr * |g/||g|||.
    params, opt = build(dict(foreach=True))
    before = params[4].detach().clone()
    params[4].grad = torch.ones_like(params[4])
    opt.step()
    step = (before - params[4].detach()).norm().item()
    assert step == pytest.approx(0.2, rel=1e-6)
