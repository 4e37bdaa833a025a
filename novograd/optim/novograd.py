r"""NovoGrad: stochastic gradient normalised by layer-wise adaptive second moments (Algorithm 1 of the paper).

A "layer" is one parameter tensor, as in every public implementation. For layer :math:`l` at step :math:`t`,
with the group learning rate :math:`\lambda_t` read at each step:

.. math::
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) \lVert g_t \rVert^2
        && v_1 = \lVert g_1 \rVert^2 \\
    m_t &= \beta_1 m_{t-1} + c \left( \frac{g_t}{\mathrm{denom}(v_t)} + d\, w_t \right)
        && m_1 = \frac{g_1}{\mathrm{denom}(v_1)} + d\, w_1 \\
    w_{t+1} &= w_t - \lambda_t m_t

with :math:`c = 1 - \beta_1` under ``grad_averaging`` (the paper's "Adam-like" form) and :math:`c = 1` otherwise,
and :math:`\mathrm{denom}(v) = \sqrt{v + \epsilon}` (Algorithm 1) or :math:`\sqrt{v} + \epsilon`.
"Step 1" is the first step at which a layer has a gradient, so layers that join late are initialised like
Algorithm 1 too.

The gradient enters the step only through its layer norm :math:`\lVert g \rVert` (a scalar per layer) and
:math:`g` times a scalar per layer. So a loss scale and a global-norm clip coefficient, which multiply every
gradient by the same scalar :math:`f`, are applied to the norms and to those per-layer scalars: no pass over the
gradients is spent on unscaling or clipping (``grad_factor`` below; see :meth:`NovoGrad.step`).

Three implementations agree to rounding (``foreach`` / ``fused`` select them, like torch.optim):

* single-tensor: a loop over parameters; the readable reference.
* multi-tensor (``foreach=True``): ``torch._foreach_*`` kernels over all parameters of a device and dtype; the
  per-layer norms stay on the device, so there is no host synchronisation.
* fused (``fused=True``): the step compiled by ``torch.compile`` (Inductor) into a few fused kernels: the
  multi-tensor step on CUDA, the single-tensor loop on CPU (each layer's norm right before its update, so the
  update reads a gradient that fits in cache from there). Every number of a group (lr, betas, eps,
  weight_decay) reaches the graph as a tensor, so a scheduler that changes any of them (OneCycleLR cycles beta1)
  never recompiles it; only switching weight decay on or off does, once. The first step of a layer, which runs
  once, uses the multi-tensor path instead of compiling a second graph. (torch.optim's ``fused`` means a
  hand-written kernel; here it means compiled by Inductor.)

A function that calls ``step()`` may itself be compiled (``torch.compile``), on every path, as with torch.optim:
``_init_group`` has torch.optim's signature, which Dynamo runs eagerly instead of tracing.

Parameters sharded by FSDP2 (DTensors) are updated on their local shards, from layer norms reduced across the
mesh in one collective per step (``novograd.optim.sharded``; docs/novograd-sharded.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

# Relative: the same file is the module novograd_optim.novograd of the standalone package (packages/novograd-optim).
from .sharded import full_norms, local, shard_groups

__all__ = ["NovoGrad", "novograd"]

MomentInit = Literal["paper", "zero"]

# clip_grad_norm_'s guard against a zero total norm; the same value keeps in-step clipping equal to it.
_CLIP_EPS = 1e-6


class NovoGrad(Optimizer):
    r"""Implements NovoGrad (Ginsburg et al.), exactly as Algorithm 1 of the paper, with its AMSGrad variant.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate :math:`\lambda` (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, the momentum and the decay of the layer-wise second moment
            (default: (0.95, 0.98), the authors' ResNet-50 and Jasper configs; the paper's text suggests
            :math:`\beta_2 \in [0.2, 0.5]`).
        eps: :math:`\epsilon` added to the second moment for numerical stability (default: 1e-8).
        weight_decay: :math:`d`, added to the *normalised* gradient before the momentum, i.e. decoupled from
            the gradient's scale (default: 0).
        grad_averaging: use :math:`c = 1 - \beta_1` after the first step, the paper's "Adam-like" moment
            (default: False, the plain momentum of Algorithm 1).
        amsgrad: normalise by :math:`\hat v_t = \max(\hat v_{t-1}, v_t)` (Section 3), :math:`\hat v_1 = v_1`
            (default: False).
        eps_inside_sqrt: ``denom(v) = sqrt(v + eps)`` as Algorithm 1 (default: True); ``False`` gives
            ``sqrt(v) + eps`` as apex, NeMo and timm.
        moment_init: ``"paper"`` (default) sets :math:`m_1` to the full first term as Algorithm 1;
            ``"zero"`` starts from :math:`m_0 = 0`, so with ``grad_averaging`` the first step is scaled by
            :math:`1 - \beta_1`. With ``eps_inside_sqrt=False, grad_averaging=True, moment_init="zero"`` the
            update is exactly NeMo's ``Novograd`` and timm's ``NvNovoGrad``.
        foreach: use the multi-tensor implementation (default: None, see below).
        fused: use the implementation compiled by ``torch.compile`` (default: None). In torch.optim ``fused``
            means a hand-written kernel; here it means the step compiled by Inductor, and the flag keeps its
            name because users of torch.optim know it. ``None`` for both picks the multi-tensor path on every
            device: it has no compilation latency (the compiled step costs tens of seconds to build, which short
            runs and tests never win back). Ask for ``fused=True`` in long runs; ``scripts/bench_optimizer.py``
            measures all three. Its graph reads every number of a group (lr, betas, eps, weight_decay) as data,
            so schedulers never recompile it.
        maximize: maximise the objective instead of minimising it (default: False).

    The state of each parameter is ``exp_avg`` (:math:`m`, the parameter's shape and dtype) and ``exp_avg_sq``
    (:math:`v`, one fp32 scalar, fp64 for fp64 parameters), plus ``max_exp_avg_sq`` with AMSGrad: one buffer per
    parameter and one scalar per layer, the state of SGD-momentum and half of Adam's. There is no step count:
    without bias correction the update never reads one (torch's SGD keeps none either).

    Mixed precision: ``torch.amp.GradScaler`` hands its scale to :meth:`step` (torch's fused-optimizer protocol,
    as for fused Adam), which divides the layer norms by it instead of having the scaler unscale every
    gradient. Gradient clipping: ``step(max_grad_norm=...)`` clips the global gradient norm from the layer norms
    the step computes anyway; see :meth:`step`.

    Sharded parameters (DTensors, e.g. from FSDP2's ``fully_shard``): every path updates the local shards from the
    whole layers' norms, reduced across the mesh in one collective per step; ``exp_avg`` is then a DTensor sharded
    as its parameter and ``exp_avg_sq`` a plain scalar (docs/novograd-sharded.md).
    """

    # GradScaler.step sets `grad_scale` and `found_inf` on this optimizer and skips its own unscaling.
    _step_supports_amp_scaling = True
    # step(max_grad_norm=...) clips the global gradient norm; the engine's Precision.step hands clipping over.
    clips_grad_norm_in_step = True
    # step(nonfinite=...) skips a non-finite step from the layer norms it computes anyway (the engine's guard).
    skips_nonfinite_in_step = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
        eps_inside_sqrt: bool = True,
        moment_init: MomentInit = "paper",
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) or not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr!r} (must be a float >= 0)")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"Invalid betas: {betas!r} (both must be in [0, 1))")
        if not eps > 0.0:
            raise ValueError(f"Invalid epsilon value: {eps!r} (must be > 0)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay!r} (must be >= 0)")
        if moment_init not in ("paper", "zero"):
            raise ValueError(f"Invalid moment_init: {moment_init!r} (expected 'paper' or 'zero')")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot both be True")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            grad_averaging=grad_averaging,
            amsgrad=amsgrad,
            eps_inside_sqrt=eps_inside_sqrt,
            moment_init=moment_init,
            foreach=foreach,
            fused=fused,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        # The global gradient norm before clipping, set by every step(max_grad_norm=...).
        self.grad_norm: Tensor | None = None
        # Whether the last step(nonfinite=...) skipped its update.
        self.skipped = False
        # ids of the parameters whose state this step created (see _init_group).
        self._fresh: set[int] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("grad_norm", None)
        self.__dict__.setdefault("skipped", False)
        self.__dict__.setdefault("_fresh", set())
        for group in self.param_groups:
            for key in ("foreach", "fused"):
                group.setdefault(key, None)
            group.setdefault("maximize", False)
        for param, param_state in self.state.items():
            # Checkpoints of earlier versions kept a per-parameter step count that the update never read.
            param_state.pop("step", None)
            # Optimizer.load_state_dict casts every floating state tensor to its parameter's dtype; the second
            # moments are kept in fp32 (fp64 for fp64 parameters) whatever the parameter, so restore that.
            for key in ("exp_avg_sq", "max_exp_avg_sq"):
                if key in param_state:
                    param_state[key] = param_state[key].to(_moment_dtype(param.dtype))

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        first_steps: list[bool],
    ) -> None:
        """Append the parameters of `group` that have a gradient, with their state (created at a layer's first
        step), to the lists, as torch.optim's optimizers do.

        The lists-in, constant-out signature is the one torch.compile's Dynamo runs eagerly instead of tracing
        when it compiles a function that calls `step()` (torch/_dynamo/variables/optimizer.py). Dynamo may run it
        again when it restarts a trace, after the state exists: a parameter is "first" while its id is in
        `_fresh`, which the step empties when it is done (a side effect Dynamo applies only after the graph ran)."""
        amsgrad = group["amsgrad"]
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("NovoGrad does not support sparse gradients; use dense gradients "
                                   "(e.g. nn.Embedding(sparse=False))")
            state = self.state[p]
            if not state:
                if torch.is_complex(p):
                    raise RuntimeError("NovoGrad does not support complex parameters: the layer norm of a complex "
                                       "gradient is not defined by the paper; view them as real with "
                                       "torch.view_as_real")
                # A DTensor's exp_avg is a DTensor sharded as it (torch.optim's layout, which DCP saves per
                # shard); v is one scalar per layer, the same on every rank.
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros((), dtype=_moment_dtype(p.dtype), device=local(p).device)
                self._fresh.add(id(p))
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if amsgrad:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            first_steps.append(id(p) in self._fresh)

    @torch.no_grad()
    def step(self, closure=None, *, max_grad_norm: float | None = None, nonfinite: Tensor | None = None):
        """Perform a single optimisation step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss (optional).
            max_grad_norm: clip the global L2 norm of all gradients of this optimizer to this value first,
                exactly as ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` followed by ``step()``, but
                from the layer norms the step computes anyway: no pass over the gradients to clip them. The
                norm before clipping (of the unscaled gradients under GradScaler) is left in ``self.grad_norm``,
                as clip_grad_norm_ returns it. On CPU the compiled path then takes all layer norms before the
                first update, so a gradient is read twice from memory instead of once from cache.
            nonfinite: skip non-finite steps: the step is not applied (weights and state untouched) when this
                flag of the caller's is set (e.g. a non-finite loss) or the global norm of the gradients is not
                finite, judged from the layer norms the step computes anyway, ahead of the update: no pass of its
                own, one host read. ``self.skipped`` tells whether it skipped.

        Under ``torch.amp.GradScaler``, ``scaler.step(optimizer, max_grad_norm=...)`` passes the argument on and
        sets ``grad_scale`` / ``found_inf`` on the optimizer: the layer norms are divided by the scale, and a
        step with inf/nan gradients is skipped, state untouched, as GradScaler skips it for other optimizers.

        On DTensor parameters (FSDP2) the layer norms of all layers are reduced across the mesh in one
        collective (see ``novograd.optim.sharded``) and the update runs on the local shards. GradScaler's inf/nan
        check of DTensor gradients is reduced across the mesh by DTensor itself, so every rank skips alike.
        """
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (must be > 0, or None for no clipping)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        # GradScaler's multiplicative inverse, computed as it does (exact for its power-of-two scales).
        inv_scale = None if grad_scale is None else grad_scale.double().reciprocal().float()
        if found_inf is not None and found_inf.item():
            # One host read per step, the one GradScaler makes for optimizers without this protocol.
            if max_grad_norm is not None:
                self.grad_norm = _unscaled(_total_norm(self.param_groups), inv_scale)
            return loss

        groups = []
        for group in self.param_groups:
            lists: tuple[list[Any], ...] = ([], [], [], [], [], [])
            self._init_group(group, *lists)
            groups.append((group, _buckets(*lists, amsgrad=group["amsgrad"])))
        buckets = [bucket for _, group_buckets in groups for bucket in group_buckets]
        norms_first = max_grad_norm is not None or nonfinite is not None
        if norms_first or any(bucket.sharded for bucket in buckets):
            _set_layer_norms([(bucket, bool(group["fused"])) for group, group_buckets in groups
                              for bucket in group_buckets])
        grad_factor, total_norm = inv_scale, None
        if norms_first:
            total_norm = _unscaled(_global_norm([norm for bucket in buckets for norm in bucket.grad_norms]), inv_scale)
        if nonfinite is not None:
            self.skipped = bool(((nonfinite.to(total_norm.device) > 0) | ~torch.isfinite(total_norm)).item())
            if self.skipped:  # before any update: the state this step created goes too, so nothing is touched
                for param in [p for group in self.param_groups for p in group["params"] if id(p) in self._fresh]:
                    del self.state[param]
                self._fresh.clear()
                if max_grad_norm is not None:
                    self.grad_norm = total_norm
                return loss
        if max_grad_norm is not None:
            self.grad_norm = total_norm
            clip_coef = torch.clamp(max_grad_norm / (self.grad_norm + _CLIP_EPS), max=1.0)
            grad_factor = clip_coef if inv_scale is None else clip_coef * inv_scale.to(clip_coef.device)
        for group, group_buckets in groups:
            beta1, beta2 = group["betas"]
            _step_buckets(group_buckets, grad_factor=grad_factor, beta1=beta1, beta2=beta2,
                          **{key: group[key] for key in _GROUP_KEYS})
        self._fresh.clear()
        return loss


# The group settings that `novograd()` takes by the same name (betas are split into beta1 and beta2).
_GROUP_KEYS = ("foreach", "fused", "lr", "eps", "weight_decay", "grad_averaging", "amsgrad", "eps_inside_sqrt",
               "moment_init", "maximize")


def _unscaled(norm: Tensor, inv_scale: Tensor | None) -> Tensor:
    return norm if inv_scale is None else norm * inv_scale.to(norm.device)


def _total_norm(param_groups: list[dict[str, Any]]) -> Tensor:
    """The global L2 norm of all gradients (of the whole layers where they are sharded)."""
    pairs = [(p, p.grad) for group in param_groups for p in group["params"] if p.grad is not None]
    local_norms = [torch.linalg.vector_norm(local(grad), dtype=_moment_dtype(p.dtype)) for p, grad in pairs]
    return _global_norm(full_norms(local_norms, [shard_groups(p, grad) for p, grad in pairs]))


def _global_norm(layer_norms: list[Tensor]) -> Tensor:
    """The L2 norm of all layers from their norms (on the first one's device; zero for none)."""
    if not layer_norms:
        return torch.zeros(())
    device = layer_norms[0].device
    return torch.linalg.vector_norm(torch.stack([norm.to(device) for norm in layer_norms]))


def _set_layer_norms(buckets: list[tuple[_Bucket, bool]]) -> None:
    """Set each bucket's `grad_norms` (ahead of the update: to clip, or to reduce those of sharded layers), the
    norms of all sharded layers in one collective. The flag says whether the bucket's group is `fused`."""
    local_norms = [_layer_norms(bucket, compiled) for bucket, compiled in buckets]
    flat = full_norms([norm for norms in local_norms for norm in norms],
                      [groups for bucket, _ in buckets for groups in bucket.shard_groups])
    start = 0
    for bucket, _ in buckets:
        bucket.grad_norms = flat[start:start + len(bucket.grads)]
        start += len(bucket.grads)


def _layer_norms(bucket: _Bucket, compiled: bool) -> list[Tensor]:
    """The L2 norms of the bucket's (local) gradients, in the second moments' dtype, ahead of the update."""
    dtype = bucket.exp_avg_sqs[0].dtype
    if compiled and not bucket.first and bucket.params[0].device.type == "cpu":
        # torch._foreach_norm is a loop over tensors on the CPU: 9 ms on ResNet-50's gradients where the compiled
        # norms, summed as the compiled update sums them, take 4 ms (2 threads).
        return _compiled("layer_norms", bucket.params[0].device)(bucket.grads, dtype)
    return list(torch._foreach_norm(bucket.grads, 2, dtype=dtype))


def _moment_dtype(dtype: torch.dtype) -> torch.dtype:
    """Second moments are fp32, or fp64 for fp64 parameters: a low-precision v would lose small gradients."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class _Bucket:
    """Parameters of one (first step or not, device, dtype) with their gradients and state: what one foreach
    kernel or one compiled graph takes at once, as local tensors (a DTensor's shard on this rank).
    `grad_norms`, when set, are the layer norms of the whole gradients; `shard_groups` holds, per layer, the
    process groups that shard it (empty for a tensor that is not sharded)."""

    first: bool
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    max_exp_avg_sqs: list[Tensor] = field(default_factory=list)
    grad_norms: list[Tensor] | None = None
    shard_groups: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        """Whether a layer of the bucket is sharded (its norm then needs the other shards' before the update)."""
        return any(self.shard_groups)

    def tensors(self) -> tuple[Any, ...]:
        """The positional arguments of the update functions."""
        return (self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.grad_norms)


def _buckets(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    first_step: list[bool],
    *,
    amsgrad: bool,
    grad_norms: list[Tensor] | None = None,
) -> list[_Bucket]:
    """The tensors of one step in buckets of one (first step or not, device, dtype), DTensors as local shards."""
    buckets: dict[tuple[bool, torch.device, torch.dtype], _Bucket] = {}
    for i, param in enumerate(params):
        param_local = local(param)
        key = (first_step[i], param_local.device, param.dtype)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(first_step[i], grad_norms=None if grad_norms is None else [])
        bucket.params.append(param_local)
        bucket.grads.append(local(grads[i]))
        bucket.exp_avgs.append(local(exp_avgs[i]))
        bucket.exp_avg_sqs.append(exp_avg_sqs[i])
        if amsgrad:
            bucket.max_exp_avg_sqs.append(max_exp_avg_sqs[i])
        bucket.shard_groups.append(shard_groups(param, grads[i]))
        if grad_norms is not None:
            bucket.grad_norms.append(grad_norms[i])
    return list(buckets.values())


def novograd(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    first_step: list[bool],
    *,
    grad_norms: list[Tensor] | None = None,
    grad_factor: Tensor | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    grad_averaging: bool,
    amsgrad: bool,
    eps_inside_sqrt: bool,
    moment_init: MomentInit,
    maximize: bool,
) -> None:
    r"""Functional NovoGrad: one step over lists of tensors, updated in place. See :class:`NovoGrad`.

    ``first_step[i]`` says that parameter ``i`` has its first gradient now (its moments are initialised as in
    Algorithm 1). ``grad_norms``, if given, are the layer norms of ``grads`` (in the second moments' dtype, of
    the whole layer where it is sharded), so that a caller that needed them first (to clip) does not pay for
    them twice. ``grad_factor``, a scalar tensor, multiplies every gradient before it is used (1 / loss scale,
    times a clip coefficient): the step then equals the step on ``grad_factor * grads``. DTensor parameters
    (with DTensor ``grads`` and ``exp_avgs``) are updated on their local shards, from the layer norms reduced
    across their mesh in one collective.
    """
    buckets = _buckets(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, first_step, amsgrad=amsgrad,
                       grad_norms=grad_norms)
    if grad_norms is None and any(bucket.sharded for bucket in buckets):
        _set_layer_norms([(bucket, bool(fused)) for bucket in buckets])
    _step_buckets(
        buckets, grad_factor=grad_factor, foreach=foreach, fused=fused, lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging, amsgrad=amsgrad,
        eps_inside_sqrt=eps_inside_sqrt, moment_init=moment_init, maximize=maximize,
    )


class _Coefficients(NamedTuple):
    """The constants of one bucket's update at this step: ``v = beta2 v + (1 - beta2) ||g||^2`` and
    ``m = beta1 m + c (sign g / denom(v) + weight_decay w)``, with sign = -1 under ``maximize``.

    The numbers are Python floats in eager code and 0-dim tensors in the compiled update, where a float would be
    a constant of the graph and a scheduler that changes it (OneCycleLR's momentum) a recompilation per value.
    The flags shape the graph: turning weight decay on or off compiles once more."""

    beta1: float | Tensor
    beta2: float | Tensor
    c: float | Tensor
    eps: float | Tensor
    weight_decay: float | Tensor
    decay: bool
    amsgrad: bool
    eps_inside_sqrt: bool
    maximize: bool


# The numbers of _Coefficients (the fields before its flags), after lr in the compiled update's hyperparameter tensor.
_NUMBERS = _Coefficients._fields.index("decay")


def _coefficients(
    first: bool, *, beta1: float, beta2: float, eps: float, weight_decay: float, grad_averaging: bool,
    amsgrad: bool, eps_inside_sqrt: bool, moment_init: MomentInit, maximize: bool,
) -> _Coefficients:
    """The update's constants for layers at their first step or later ones.

    At a layer's first step both moments are 0, so ``beta2 = 0`` gives ``v_1 = ||g_1||^2`` and ``beta1 = 0``
    makes ``m_1 = c u``; Algorithm 1's initialisation ("paper") takes the whole term (c = 1) even with averaging.
    """
    c = 1.0 - beta1 if grad_averaging else 1.0
    if first:
        beta1, beta2, c = 0.0, 0.0, (1.0 if moment_init == "paper" else c)
    return _Coefficients(beta1, beta2, c, eps, weight_decay, weight_decay != 0.0, amsgrad, eps_inside_sqrt,
                         maximize)


def _hyperparameter_tensor(lr: float, coefficients: _Coefficients, param: Tensor) -> Tensor:
    """lr and the numbers of `coefficients` as one tensor on the parameter's device, in the moments' dtype: the
    compiled update reads them as data. Copied from the host without waiting for the device."""
    values = torch.tensor([lr, *coefficients[:_NUMBERS]], dtype=_moment_dtype(param.dtype))
    return values.to(param.device, non_blocking=True)


def _with_tensor_hyperparameters(update):
    """`update` taking lr and the coefficients' numbers from `hyperparameters` (see `_hyperparameter_tensor`)."""

    def update_from_tensor(*tensors: Any, hyperparameters: Tensor, grad_factor: Tensor | None,
                           coefficients: _Coefficients) -> None:
        lr, *numbers = hyperparameters.unbind()
        update(*tensors, lr=lr, grad_factor=grad_factor,
               coefficients=_Coefficients(*numbers, *coefficients[_NUMBERS:]))

    update_from_tensor.__name__ = update.__name__
    return update_from_tensor


def _step_buckets(
    buckets: Iterable[_Bucket],
    *,
    grad_factor: Tensor | None,
    foreach: bool | None,
    fused: bool | None,
    lr: float,
    **hyperparameters: Any,
) -> None:
    """Update every bucket with the implementation that `foreach` / `fused` select (as torch.optim's flags)."""
    if fused and foreach:
        raise ValueError("`fused` and `foreach` cannot both be True")
    if fused and torch.jit.is_scripting():
        raise RuntimeError("torch.jit.script is not supported with fused NovoGrad")
    single_tensor = not fused and foreach is False
    for bucket in buckets:
        coefficients = _coefficients(bucket.first, **hyperparameters)
        param = bucket.params[0]
        factor = None if grad_factor is None else grad_factor.to(param.device, _moment_dtype(param.dtype))
        compiled = fused and not bucket.first  # a layer's first step runs once: not worth a graph of its own
        tensors = bucket.tensors()
        traced = compiled or torch.compiler.is_compiling()
        if traced and param.device.type == "cpu" and param.dtype == torch.float64:
            tensors = _without_mutated_cpu_float64_scalars(tensors)
        if single_tensor:
            _update_layers(*tensors, lr=lr, grad_factor=factor, coefficients=coefficients)
        elif not compiled:
            _multi_tensor_update(*tensors, lr=lr, grad_factor=factor, coefficients=coefficients)
        else:
            hyperparameter_tensor = _hyperparameter_tensor(lr, coefficients, param)
            _compiled("update", param.device)(*tensors, hyperparameters=hyperparameter_tensor, grad_factor=factor,
                                              coefficients=coefficients)


def _add_scaled_(target: Tensor, tensor: Tensor, scale: float | Tensor) -> None:
    """target += scale * tensor, scale a float (one kernel) or a 0-dim tensor (compiled: fused all the same)."""
    if isinstance(scale, Tensor):
        target.add_(tensor * scale)
    else:
        target.add_(tensor, alpha=scale)


def _foreach_add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: float | Tensor) -> None:
    """`_add_scaled_` over lists."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=scale)


def _update_layers(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    grad_norms: list[Tensor] | None,
    *,
    lr: float | Tensor,
    grad_factor: Tensor | None,
    coefficients: _Coefficients,
) -> None:
    """The single-tensor path: one layer after the other (eager, or compiled on CPU)."""
    order = range(len(params))
    if torch.compiler.is_compiling():
        # Smallest layers first (an order fixed when the graph is traced). Inductor runs a layer too small to share
        # between threads as an `omp single` block, with a barrier, whenever an earlier large layer has opened a
        # parallel region; ResNet-50's 100-odd BatchNorm vectors, between its convolutions, cost ~300 barriers a step.
        order = sorted(order, key=lambda i: params[i].numel())
    for i in order:
        _update_layer(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if coefficients.amsgrad else None,
            None if grad_norms is None else grad_norms[i], lr=lr, grad_factor=grad_factor, coefficients=coefficients,
        )


def _update_layer(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    grad_norm: Tensor | None,
    *,
    lr: float | Tensor,
    grad_factor: Tensor | None,
    coefficients: _Coefficients,
) -> None:
    """One NovoGrad update of one layer (AMSGrad when `max_exp_avg_sq` is given)."""
    k = coefficients
    if grad_norm is None:
        grad_norm_sq = _squared_norm(grad, exp_avg_sq.dtype)
    else:
        grad_norm_sq = grad_norm.square()
    if grad_factor is not None:
        grad_norm_sq = grad_norm_sq * grad_factor.square()
    exp_avg_sq.mul_(k.beta2)
    _add_scaled_(exp_avg_sq, grad_norm_sq, 1.0 - k.beta2)
    second_moment = exp_avg_sq
    if max_exp_avg_sq is not None:
        second_moment = torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    if k.eps_inside_sqrt:
        denom = (second_moment + k.eps).sqrt()
    else:
        denom = second_moment.sqrt() + k.eps
    # m = b1 m + c (sign g / denom + d w): the gradient enters through one scalar per layer, which also carries
    # the sign (maximize) and grad_factor, so no scaled or negated copy of the gradient is made.
    grad_coef = (-k.c if k.maximize else k.c) / denom
    if grad_factor is not None:
        grad_coef = grad_coef * grad_factor
    exp_avg.mul_(k.beta1)
    if k.decay:
        _add_scaled_(exp_avg, param, k.c * k.weight_decay)
    exp_avg.addcmul_(grad, grad_coef)
    _add_scaled_(param, exp_avg, -lr)


# Inductor sums a float32 reduction longer than 4096 elements through a "cascade" helper that keeps the running
# sum in memory, one dependent add at a time; rows of 4096 are summed in registers instead (the norm pass ~12% faster on one core).
_NORM_ROW = 4096


def _squared_norm(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """||grad||^2 accumulated in `dtype`; under torch.compile summed by rows of `_NORM_ROW` elements."""
    if not (torch.compiler.is_compiling() and grad.is_contiguous() and grad.numel() > _NORM_ROW):
        return torch.linalg.vector_norm(grad, dtype=dtype).square()
    flat = grad.view(-1)
    split = flat.numel() // _NORM_ROW * _NORM_ROW
    rows = flat[:split].view(-1, _NORM_ROW).to(dtype)
    return rows.square().sum(1).sum() + flat[split:].to(dtype).square().sum()


def _multi_tensor_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    grad_norms: list[Tensor] | None,
    *,
    lr: float | Tensor,
    grad_factor: Tensor | None,
    coefficients: _Coefficients,
) -> None:
    """`_update_layer` over tensors sharing a device and dtype, in foreach kernels."""
    k = coefficients
    if grad_norms is None:
        grad_norms = torch._foreach_norm(grads, 2, dtype=exp_avg_sqs[0].dtype)
    if grad_factor is not None:
        grad_norms = torch._foreach_mul(grad_norms, grad_factor)
    torch._foreach_mul_(exp_avg_sqs, k.beta2)
    _foreach_add_scaled_(exp_avg_sqs, torch._foreach_mul(grad_norms, grad_norms), 1.0 - k.beta2)
    second_moments = exp_avg_sqs
    if k.amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs
    if k.eps_inside_sqrt:
        denoms = torch._foreach_sqrt(torch._foreach_add(second_moments, k.eps))
    else:
        denoms = torch._foreach_add(torch._foreach_sqrt(second_moments), k.eps)
    grad_coefs = torch._foreach_reciprocal(torch._foreach_div(denoms, -k.c if k.maximize else k.c))
    if grad_factor is not None:
        torch._foreach_mul_(grad_coefs, grad_factor)
    torch._foreach_mul_(exp_avgs, k.beta1)
    if k.decay:
        _foreach_add_scaled_(exp_avgs, params, k.c * k.weight_decay)
    torch._foreach_addcmul_(exp_avgs, grads, grad_coefs)
    _foreach_add_scaled_(params, exp_avgs, -lr)


def _norms_of(grads: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The L2 norm of each gradient, accumulated in `dtype` (compiled on CPU for clipping, see `_layer_norms`)."""
    return [_squared_norm(grad, dtype).sqrt() for grad in grads]


_compiled_functions: dict[tuple[str, str], Any] = {}

# Inductor options of the compiled step. Size asserts re-check in Python the sizes and strides of every input,
# which Dynamo's guards have already checked: ~650 calls per ResNet-50 step, about 0.3 ms of host time.
_INDUCTOR_OPTIONS = {"size_asserts": False}


def _compiled(name: str, device: torch.device):
    """The update (or, on CPU, the layer norms) compiled once per process and device type.

    A new set of tensors (another model, or a layer that skips a step) is a recompilation; past dynamo's
    recompile limit the step still runs, eagerly, with the same results. Not `fullgraph`, for that reason.

    On CPU the step is memory-bound and the layer norms need a pass over the gradients before the update can
    start. Compiled from the foreach form, all norms come first, and the update then reads every gradient again
    from memory. The per-layer loop, with Inductor's reordering for peak memory off (it moves every reduction to
    the front), keeps each norm right before its layer's update, which then finds a gradient that fits in cache
    (with 2 threads, each thread's half of a layer of up to ~1M elements) still there. The loop also takes the
    smallest layers first and sums norms by rows (see `_update_layers` and `_squared_norm`). On CUDA the foreach
    form compiles into a few horizontally fused kernels instead of one or two launches per layer.
    """
    key = (name, device.type)
    compiled = _compiled_functions.get(key)
    if compiled is None:
        if name == "layer_norms":
            compiled = torch.compile(_norms_of, dynamic=False, options=_INDUCTOR_OPTIONS)
        elif device.type == "cpu":
            compiled = torch.compile(_with_tensor_hyperparameters(_update_layers), dynamic=False,
                                     options={**_INDUCTOR_OPTIONS, "reorder_for_peak_memory": False})
        else:
            compiled = torch.compile(_with_tensor_hyperparameters(_multi_tensor_update), dynamic=False,
                                     options=_INDUCTOR_OPTIONS)
        _compiled_functions[key] = compiled
    return compiled


def _without_mutated_cpu_float64_scalars(tensors: tuple[Any, ...]) -> tuple[Any, ...]:
    """The bucket's tensors with each 0-dim tensor that the update writes viewed as shape (1,).

    Works around a torch.compile bug (seen in torch 2.13): Dynamo gives every 0-dim fp64 CPU input a symbolic
    `item()` value (as it does for Python floats it passes as tensors); the pass that turns such symbols back
    into tensors cannot, and restarts the trace with the value specialised; on the restarted trace,
    `OutputGraph.remove_tensorify_specialized_graphargs` deletes every node whose value carries that symbol and
    whose users are all `.item()` calls, which an in-place update of the input (no users at all) vacuously is.
    So `v.add_(x)` on such an input is silently dropped: the second moments (and 0-dim parameters) never changed
    in fp64 (in the compiled update, and on every path when the caller compiles `step()`). The same tensors
    viewed with one dimension are ordinary inputs. Reads (lr, norms) are unaffected.
    tests/test_novograd_paths.py holds the minimal reproduction, marked xfail until torch fixes it.
    """
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, grad_norms = tensors

    def viewed(ts: list[Tensor]) -> list[Tensor]:
        return [t.view(1) if t.dim() == 0 else t for t in ts]

    return viewed(params), grads, viewed(exp_avgs), viewed(exp_avg_sqs), viewed(max_exp_avg_sqs), grad_norms
