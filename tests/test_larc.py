"""LARC against hand-computed factors, and its behaviour as a drop-in torch optimizer."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from novograd.optim.larc import LARC


def _param(values: list[float], grad: list[float]) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(values))
    p.grad = torch.tensor(grad)
    return p


def test_clip_mode_matches_hand_computation():
    # ||w|| = 5, ||g|| = 10: eta*||w|| / (lr*||g||) = 1e-3*5 / (0.1*10) = 0.005 < 1, so the step is scaled.
    clipped = _param([3.0, 4.0], [6.0, 8.0])
    # ||w|| = 1000, ||g|| = 0.1: the ratio 1e-3*1000 / (0.1*0.1) = 100 > 1 is clipped to 1: plain SGD.
    unclipped = _param([600.0, 800.0], [0.06, 0.08])
    optimizer = LARC(torch.optim.SGD([clipped, unclipped], lr=0.1), trust_coefficient=1e-3, clip=True, eps=0.0)
    optimizer.step()
    torch.testing.assert_close(clipped.detach(), torch.tensor([3.0 - 0.1 * 0.005 * 6.0, 4.0 - 0.1 * 0.005 * 8.0]))
    torch.testing.assert_close(unclipped.detach(), torch.tensor([600.0 - 0.1 * 0.06, 800.0 - 0.1 * 0.08]))


def test_scale_mode_multiplies_the_lr_by_the_local_rate():
    # factor = eta*||w|| / (||g|| + eps) = 0.02*5 / (10 + 0.5) with no clip and no 1/lr.
    p = _param([3.0, 4.0], [6.0, 8.0])
    optimizer = LARC(torch.optim.SGD([p], lr=0.5), trust_coefficient=0.02, clip=False, eps=0.5)
    optimizer.step()
    factor = 0.02 * 5.0 / 10.5
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.5 * factor * 6.0, 4.0 - 0.5 * factor * 8.0]))


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "scale"])
def test_factor_is_floored_at_1e_minus_7_as_in_openseq2seq(clip):
    # ||w|| = 5e-6, ||g|| = 10: clip ratio 1e-3 * 5e-6 / (0.1 * 10) = 5e-9, scale ratio 5e-10; both below 1e-7,
    # so the gradient is multiplied by 1e-7 (OpenSeq2Seq's min_update), not by the ratio.
    p = _param([3e-6, 4e-6], [6.0, 8.0])
    LARC(torch.optim.SGD([p], lr=0.1), trust_coefficient=1e-3, clip=clip, eps=0.0).step()
    # atol=0: the default absolute tolerance (1e-5) would not tell 1e-7 from the ratio.
    torch.testing.assert_close(p.grad, torch.tensor([6e-7, 8e-7]), rtol=1e-6, atol=0)
    torch.testing.assert_close(p.detach(), torch.tensor([3e-6 - 0.1 * 6e-7, 4e-6 - 0.1 * 8e-7]), rtol=1e-6, atol=0)


def test_eps_enters_next_to_the_gradient_norm():
    p = _param([3.0, 4.0], [6.0, 8.0])
    LARC(torch.optim.SGD([p], lr=0.1), trust_coefficient=1e-3, eps=2.0).step()
    factor = 1e-3 * 5.0 / (0.1 * (10.0 + 2.0))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.1 * factor * 6.0, 4.0 - 0.1 * factor * 8.0]))


def test_zero_weight_or_zero_gradient_is_left_unscaled():
    zero_weight = _param([0.0, 0.0], [6.0, 8.0])
    zero_grad = _param([3.0, 4.0], [0.0, 0.0])
    optimizer = LARC(torch.optim.SGD([zero_weight, zero_grad], lr=0.1))
    optimizer.step()
    torch.testing.assert_close(zero_weight.grad, torch.tensor([6.0, 8.0]))
    torch.testing.assert_close(zero_weight.detach(), torch.tensor([-0.6, -0.8]))
    torch.testing.assert_close(zero_grad.detach(), torch.tensor([3.0, 4.0]))


def test_l2_weight_decay_is_folded_into_the_measured_gradient():
    # The authors' L2 term was part of the loss gradient: g' = g + wd*w, factor from ||g'||, inner step without wd.
    p = _param([3.0, 4.0], [6.0, 8.0])
    optimizer = LARC(torch.optim.SGD([p], lr=0.1, weight_decay=0.5), trust_coefficient=1e-3)
    assert optimizer.fold_weight_decay
    optimizer.step()
    folded = torch.tensor([6.0 + 1.5, 8.0 + 2.0])
    factor = 1e-3 * 5.0 / (0.1 * (folded.norm().item() + 1e-8))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0]) - 0.1 * factor * folded)
    assert optimizer.param_groups[0]["weight_decay"] == 0.5, "the group's weight decay must be restored"


def test_decoupled_weight_decay_is_left_to_the_inner_optimizer():
    p = _param([3.0, 4.0], [6.0, 8.0])
    optimizer = LARC(torch.optim.AdamW([p], lr=0.1, weight_decay=0.5), trust_coefficient=1e-3)
    assert not optimizer.fold_weight_decay
    reference = _param([3.0, 4.0], [6.0, 8.0])
    reference.grad.mul_(1e-3 * 5.0 / (0.1 * (10.0 + 1e-8)))
    torch.optim.AdamW([reference], lr=0.1, weight_decay=0.5).step()
    optimizer.step()
    torch.testing.assert_close(p.detach(), reference.detach())


def test_per_group_lr_and_many_tensors_match_a_per_tensor_loop():
    torch.manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2, 2), (1,)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    expected = []
    lrs = [0.1, 0.1, 2.0, 2.0]
    for p, lr in zip(params, lrs):
        ratio = 0.01 * p.norm() / (lr * (p.grad.norm() + 1e-8))
        expected.append(p.detach() - lr * torch.clamp(ratio, max=1.0) * p.grad)
    groups = [{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 2.0}]
    LARC(torch.optim.SGD(groups, lr=1.0), trust_coefficient=0.01).step()
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want)


def test_half_precision_norms_do_not_overflow():
    # ||g|| of 70000 elements of 300 is 79,000: beyond fp16's range, so the norm must be taken in fp32.
    p = torch.nn.Parameter(torch.full((70_000,), 1.0, dtype=torch.float16))
    p.grad = torch.full_like(p, 300.0)
    LARC(torch.optim.SGD([p], lr=1.0), trust_coefficient=1.0).step()
    factor = math.sqrt(70_000) / (300.0 * math.sqrt(70_000))
    torch.testing.assert_close(p.detach().float(), torch.full((70_000,), 1.0 - factor * 300.0), atol=1e-3, rtol=0)


def test_parameters_and_groups_without_gradients_are_untouched():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    q = _param([3.0, 4.0], [6.0, 8.0])
    idle_group = torch.nn.Parameter(torch.tensor([5.0]))
    LARC(torch.optim.SGD([{"params": [p, q]}, {"params": [idle_group]}], lr=0.1, momentum=0.9)).step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(idle_group.detach(), torch.tensor([5.0]))


def test_shares_param_groups_and_state_with_scheduler_and_state_dict():
    model = torch.nn.Linear(3, 2)
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer = LARC(inner)
    assert isinstance(optimizer, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5**t)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    assert optimizer.state is inner.state and len(inner.state) == 2

    resumed_inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    resumed = LARC(resumed_inner)
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.param_groups is resumed_inner.param_groups, "load_state_dict must not leave LARC on stale groups"
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.05)
    torch.testing.assert_close(
        resumed.state[model.weight]["momentum_buffer"], optimizer.state[model.weight]["momentum_buffer"]
    )
    restored = pickle.loads(pickle.dumps(optimizer))
    assert restored.trust_coefficient == optimizer.trust_coefficient and len(restored.param_groups) == 1


def test_grad_scaler_unscales_before_larc_and_skips_overflow():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = LARC(torch.optim.SGD(model.parameters(), lr=0.1), trust_coefficient=0.01)
    scaler.scale(model(x).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    reference(x).sum().backward()
    LARC(torch.optim.SGD(reference.parameters(), lr=0.1), trust_coefficient=0.01).step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)

    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    scaler.scale(model(x).sum() * float("inf")).backward()
    scaler.step(optimizer)
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), old)


def test_closure_is_evaluated_once_before_scaling():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = LARC(torch.optim.SGD([p], lr=0.1), trust_coefficient=1e-3)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (p * torch.tensor([6.0, 8.0])).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(50.0)
    factor = 1e-3 * 5.0 / (0.1 * (10.0 + 1e-8))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.1 * factor * 6.0, 4.0 - 0.1 * factor * 8.0]))


def test_wraps_novograd():
    from novograd.optim.novograd import NovoGrad

    p = _param([3.0, 4.0], [6.0, 8.0])
    LARC(NovoGrad([p], lr=0.1, eps=1e-8), trust_coefficient=1e-3).step()
    # LARC scales g by s = 0.005; NovoGrad's first step m = g'/sqrt(||g'||^2 + eps) ~ g/||g||, so the update
    # barely depends on s: that is why NovoGrad needs LARC less than SGD does.
    scaled = torch.tensor([6.0, 8.0]) * 0.005
    expected = torch.tensor([3.0, 4.0]) - 0.1 * scaled / torch.sqrt(scaled.norm() ** 2 + 1e-8)
    torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"trust_coefficient": 0.0}, "trust_coefficient"), ({"eps": -1.0}, "eps")],
)
def test_bad_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LARC(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), **kwargs)


def test_sparse_gradients_and_non_optimizers_are_rejected():
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        LARC(torch.optim.SGD(embedding.parameters(), lr=0.1)).step()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        LARC([torch.zeros(1)])  # type: ignore[arg-type]
