"""Loss scaling and gradient clipping folded into NovoGrad's step, against the passes they replace.

GradScaler hands its scale to the step (torch's fused-optimizer protocol) instead of unscaling every gradient, and
`step(max_grad_norm=...)` clips from the layer norms instead of `clip_grad_norm_`'s passes; both must give the
results of unscale-then-clip-then-step, on every path, and skip inf/nan steps as GradScaler always did.
"""

from __future__ import annotations

import copy

import pytest
import torch

from novograd import NovoGrad
from novograd.engine.precision import Precision

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
HYPERPARAMETERS = dict(lr=0.05, betas=(0.9, 0.5), weight_decay=0.01, grad_averaging=True)


class UnscaleThenStep(NovoGrad):
    """NovoGrad without the protocol: GradScaler unscales the gradients in place and then calls step()."""

    _step_supports_amp_scaling = False


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Past dynamo's recompile limit (8 graphs per process) the compiled path would silently run eagerly."""
    torch._dynamo.reset()


def model_and_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    batches = [(torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(6)]
    return model, batches


def loss_fn(model, batch):
    inputs, targets = batch
    return torch.nn.functional.mse_loss(model(inputs), targets)


def assert_same_training(a_model, a_opt, b_model, b_opt, tolerance):
    for p, q in zip(a_model.parameters(), b_model.parameters()):
        torch.testing.assert_close(p, q, **tolerance)
        for key, value in a_opt.state[p].items():
            torch.testing.assert_close(value, b_opt.state[q][key], **tolerance, msg=key)


@pytest.mark.parametrize("path", PATHS)
def test_grad_scaler_hands_over_its_scale_and_skips_overflowed_steps(path):
    """The protocol path equals GradScaler's unscale-then-step, scale updates and skipped steps included.

    Step 1 overflows (no state may be created, the next step is each layer's first), step 4 overflows later;
    growth_interval=2 changes the scale between steps. With power-of-two scales the two agree bit for bit."""
    runs = {}
    for name, cls in (("protocol", NovoGrad), ("unscale_then_step", UnscaleThenStep)):
        model, batches = model_and_data()
        opt = cls(model.parameters(), **HYPERPARAMETERS, **PATHS[path])
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        scales, state_sizes = [], []
        for t, batch in enumerate(batches):
            opt.zero_grad()
            loss = loss_fn(model, batch) * (float("inf") if t in (0, 3) else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
            state_sizes.append(len(opt.state))
        assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
        runs[name] = (model, opt, scales, state_sizes)
    (model, opt, scales, sizes), (ref_model, ref_opt, ref_scales, ref_sizes) = runs.values()
    assert scales == ref_scales == [2.0**9, 2.0**9, 2.0**10, 2.0**9, 2.0**9, 2.0**10]
    assert sizes == ref_sizes == [0, 4, 4, 4, 4, 4]
    assert_same_training(model, opt, ref_model, ref_opt, dict(rtol=0, atol=0))


@pytest.mark.parametrize("path", PATHS)
def test_skipped_step_leaves_weights_and_state_untouched(path):
    model, batches = model_and_data()
    opt = NovoGrad(model.parameters(), **HYPERPARAMETERS, **PATHS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for batch in batches[:2]:
        opt.zero_grad()
        scaler.scale(loss_fn(model, batch)).backward()
        scaler.step(opt)
        scaler.update()
    before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
    opt.zero_grad()
    scaler.scale(loss_fn(model, batches[2])).backward()
    next(model.parameters()).grad[0, 0] = float("nan")
    scaler.step(opt, max_grad_norm=1.0)
    for p, q in zip(model.parameters(), before[0]):
        assert torch.equal(p, q)
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, before[1]["state"][key][name]), name
    assert opt.grad_norm.isnan(), "the norm of a skipped step is reported as clip_grad_norm_ would report it"


@pytest.mark.parametrize("with_scaler", [False, True], ids=["fp32", "grad_scaler"])
@pytest.mark.parametrize("max_norm", [0.05, 100.0], ids=["clipping", "below_the_limit"])
@pytest.mark.parametrize("path", PATHS)
def test_clipping_in_the_step_equals_clip_grad_norm_then_step(path, max_norm, with_scaler):
    """step(max_grad_norm) == clip_grad_norm_ (after unscale_) then step, and grad_norm is its return value."""
    runs = {}
    for name in ("in_step", "clip_grad_norm_"):
        model, batches = model_and_data()
        opt = NovoGrad(model.parameters(), **HYPERPARAMETERS, **PATHS[path])
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=with_scaler)
        norms = []
        for batch in batches:
            opt.zero_grad()
            scaler.scale(loss_fn(model, batch)).backward()
            if name == "in_step":
                grads_before = [p.grad.clone() for p in model.parameters()]
                scaler.step(opt, max_grad_norm=max_norm)
                norms.append(opt.grad_norm)
                for p, g in zip(model.parameters(), grads_before):
                    assert torch.equal(p.grad, g), "in-step clipping must not write the gradients"
            else:
                scaler.unscale_(opt)
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                scaler.step(opt)
            scaler.update()
        runs[name] = (model, opt, norms)
    (model, opt, norms), (ref_model, ref_opt, ref_norms) = runs.values()
    assert (max(ref_norms) > max_norm) == (max_norm < 1.0), "the test must clip exactly when it says so"
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-6, atol=0)
    # The clipped gradient's norm is k * ||g|| here and the norm of the rounded k * g there: fp32 rounding apart.
    assert_same_training(model, opt, ref_model, ref_opt, dict(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("path", PATHS)
def test_clipping_in_fp64_matches_to_rounding(path):
    """In fp64 the in-step clip and clip_grad_norm_ then step agree to 1e-12 (the compiled path sums the norms
    its own way and must still be exact)."""
    runs = []
    for in_step in (True, False):
        model, batches = model_and_data()
        model.double()
        opt = NovoGrad(model.parameters(), **HYPERPARAMETERS, **PATHS[path])
        for batch in batches:
            opt.zero_grad()
            loss_fn(model, tuple(t.double() for t in batch)).backward()
            if in_step:
                opt.step(max_grad_norm=0.05)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                opt.step()
        runs.append((model, opt))
    assert_same_training(*runs[0], *runs[1], dict(rtol=1e-12, atol=1e-14))


def test_clipping_takes_the_norm_over_all_param_groups():
    model, batches = model_and_data()
    weights = [p for p in model.parameters() if p.ndim == 2]
    biases = [p for p in model.parameters() if p.ndim == 1]
    opt = NovoGrad([{"params": weights}, {"params": biases, "weight_decay": 0.0}], **HYPERPARAMETERS)
    loss_fn(model, batches[0]).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    opt.step(max_grad_norm=0.01)
    torch.testing.assert_close(opt.grad_norm, expected)


def test_bad_max_grad_norm_names_the_value():
    model, batches = model_and_data()
    loss_fn(model, batches[0]).backward()
    with pytest.raises(ValueError, match="max_grad_norm: 0.0"):
        NovoGrad(model.parameters()).step(max_grad_norm=0.0)


@pytest.mark.parametrize("mode", ["fp32", "fp16"])
def test_engine_precision_hands_clipping_to_novograd_and_clips_others_itself(mode):
    """Precision.step: NovoGrad clips in its step (gradients untouched, same result as clip_grad_norm_);
    SGD, which cannot, gets clip_grad_norm_ on the unscaled gradients."""
    for name, build in (("novograd", lambda ps: NovoGrad(ps, **HYPERPARAMETERS)),
                        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))):
        model, batches = model_and_data()
        reference, _ = model_and_data()
        opt, ref_opt = build(model.parameters()), build(reference.parameters())
        precision = Precision(mode, torch.device("cpu"))
        with precision.autocast():
            loss = loss_fn(model, batches[0])
        precision.backward(loss)
        scale = precision.scaler.get_scale() if mode == "fp16" else 1.0
        grads = [p.grad.clone() for p in model.parameters()]
        grad_norm = precision.step(opt, model.parameters(), clip_norm=0.05, loss_sum=loss.detach()).grad_norm

        for p, g in zip(reference.parameters(), grads):
            p.grad = g / scale
        expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        ref_opt.step()
        torch.testing.assert_close(grad_norm, expected_norm, rtol=1e-6, atol=0)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        grads_written = any(not torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        assert grads_written == (name == "sgd"), name
