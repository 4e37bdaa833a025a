"""The four optimizers of the study: the real ones for single runs, and their update rules batched over problems.

Single runs use torch.optim's SGD, Adam and AdamW and the project's NovoGrad. The robustness maps need thousands of
independent problems at once, each with its own learning rate and weight decay. Stacking the problems into one
tensor and handing it to the real optimizers would be wrong for NovoGrad (its second moment is the norm of the
whole tensor, so it would couple the problems) and impossible for per-problem hyperparameters. So each optimizer's
update is written here once more, elementwise over a batch, mirroring the real implementation operation for
operation (including which products are fused multiply-adds), so that a batched run reproduces the real optimizer
bit for bit; `tests/test_dln.py` checks exactly that for all four.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import Parameter

from novograd.optim import NovoGrad

OPTIMIZERS = ("sgd", "adam", "adamw", "novograd")
#: How the figures and tables name them.
DISPLAY_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "novograd": "NovoGrad"}


def _check_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}: the study compares {', '.join(OPTIMIZERS)}")


def build_torch_optimizer(
    name: str, params: Sequence[Parameter], *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """The real optimizer `name` with the study's settings (paper Appendix A)."""
    _check_name(name)
    beta1, _ = betas
    if name == "sgd":
        # Footnote 3's gradient-averaging SGD, m = b m + (1 - b) g: torch's dampening = momentum gives it from the
        # second step on (torch starts the buffer at m_1 = g_1, as NovoGrad's Algorithm 1 starts its moment).
        return torch.optim.SGD(params, lr=lr, momentum=beta1, dampening=beta1, weight_decay=weight_decay)
    if name == "adam":  # L2 weight decay, added to the gradient
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":  # decoupled weight decay
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return NovoGrad(params, lr=lr, betas=betas, weight_decay=weight_decay, grad_averaging=True)


class BatchedUpdate(ABC):
    """One optimizer's update rule over a batch of independent copies of the problem.

    `params` are the layers, each a tensor of shape (N,) whose element i belongs to problem i; `lr` and
    `weight_decay` are tensors of shape (N,). Nothing reduces across elements, so problems never interact.
    """

    def __init__(self, params: list[Tensor], *, lr: Tensor, weight_decay: Tensor, betas: tuple[float, float]):
        self.params = params
        self.lr = lr
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.steps = 0

    def step(self, grads: list[Tensor]) -> None:
        """Update every layer in place from its gradient."""
        self.steps += 1
        for index, (param, grad) in enumerate(zip(self.params, grads)):
            self._update(index, param, grad)

    @abstractmethod
    def _update(self, index: int, param: Tensor, grad: Tensor) -> None: ...


class BatchedSGD(BatchedUpdate):
    """torch.optim.SGD (single-tensor path) with momentum = dampening = beta1 and L2 weight decay."""

    def __init__(self, params: list[Tensor], **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.momentum_buffers: list[Tensor | None] = [None] * len(params)
        self.neg_lr = -self.lr

    def _update(self, index: int, param: Tensor, grad: Tensor) -> None:
        grad = torch.addcmul(grad, self.weight_decay, param)  # grad.add(param, alpha=wd): one fused multiply-add
        buffer = self.momentum_buffers[index]
        if buffer is None:
            self.momentum_buffers[index] = buffer = grad.clone()
        else:
            buffer.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        param.addcmul_(self.neg_lr, buffer)  # param.add_(buffer, alpha=-lr)


class BatchedAdam(BatchedUpdate):
    """torch.optim.Adam / AdamW (single-tensor path, eps 1e-8): L2 or decoupled weight decay."""

    eps = 1e-8

    def __init__(self, params: list[Tensor], *, decoupled_weight_decay: bool, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.decoupled_weight_decay = decoupled_weight_decay
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.decay_factor = 1 - self.lr * self.weight_decay

    def _update(self, index: int, param: Tensor, grad: Tensor) -> None:
        exp_avg, exp_avg_sq = self.exp_avgs[index], self.exp_avg_sqs[index]
        if self.decoupled_weight_decay:
            param.mul_(self.decay_factor)
        else:
            grad = torch.addcmul(grad, self.weight_decay, param)
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        # Bias corrections are Python floats of the step count, as in torch.optim.
        bias_correction1 = 1 - self.beta1**self.steps
        bias_correction2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        neg_step_size = -(self.lr / bias_correction1)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.add_(neg_step_size * exp_avg / denom)  # param.addcdiv_(exp_avg, denom, value=-step_size)


class BatchedNovoGrad(BatchedUpdate):
    """The project's NovoGrad (multi-tensor path) with grad_averaging, Algorithm 1's moment init, eps 1e-8.

    Each element is a layer of one element, whose gradient norm is |g|.
    """

    eps = 1e-8

    def __init__(self, params: list[Tensor], **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.neg_lr = -self.lr

    def _update(self, index: int, param: Tensor, grad: Tensor) -> None:
        exp_avg, exp_avg_sq = self.exp_avgs[index], self.exp_avg_sqs[index]
        # Algorithm 1: v_1 = ||g_1||^2 and m_1 = g_1 / sqrt(v_1 + eps) + d w_1 (c = 1); then gradient averaging.
        first = self.steps == 1
        beta1, beta2 = (0.0, 0.0) if first else (self.beta1, self.beta2)
        c = 1.0 if first else 1.0 - self.beta1
        grad_norm = torch.linalg.vector_norm(grad.unsqueeze(-1), dim=-1)
        exp_avg_sq.mul_(beta2).add_(grad_norm * grad_norm, alpha=1.0 - beta2)
        denom = (exp_avg_sq + self.eps).sqrt()
        exp_avg.mul_(beta1).addcmul_(c * self.weight_decay, param)
        exp_avg.addcmul_(grad, (denom / c).reciprocal())
        param.addcmul_(self.neg_lr, exp_avg)


def build_batched_update(
    name: str, params: list[Tensor], *, lr: Tensor, weight_decay: Tensor, betas: tuple[float, float]
) -> BatchedUpdate:
    """The batched twin of `build_torch_optimizer(name, ...)`."""
    _check_name(name)
    kwargs = dict(lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "sgd":
        return BatchedSGD(params, **kwargs)
    if name in ("adam", "adamw"):
        return BatchedAdam(params, decoupled_weight_decay=name == "adamw", **kwargs)
    return BatchedNovoGrad(params, **kwargs)
