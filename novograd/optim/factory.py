"""Build the optimizer of a run from its config (configs/optimizer/*.yaml).

The baselines are torch.optim's own classes: `sgd` = torch.optim.SGD (heavy-ball momentum, L2 weight decay added
to the gradient), `adam` = torch.optim.Adam (L2 decay), `adamw` = torch.optim.AdamW (decoupled decay); `novograd`
is this package's NovoGrad. A config with `_target_` instead of `name` names any optimizer class, which hydra
instantiates with the param groups as its first argument.

Weight decay applies to every parameter unless `exclude_from_weight_decay` is true; then biases (every 1-D
parameter) and every parameter of a normalisation module get none, as the authors' SGD configs did. With
`larc.enabled` the optimizer is wrapped in `LARC` (see larc.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from novograd.optim.larc import LARC
from novograd.optim.novograd import NovoGrad

_OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    "novograd": NovoGrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
OPTIMIZER_NAMES = tuple(_OPTIMIZER_CLASSES)

# Keys every config may hold; the factory consumes them rather than passing them to the optimizer class.
_FACTORY_KEYS = {"name", "exclude_from_weight_decay", "larc"}
_COMMON_KEYS = {"lr", "weight_decay", "foreach", "fused"}
# Keys passed through to each class; an absent key takes the class's own default.
_CLASS_KEYS = {
    "novograd": _COMMON_KEYS | {"betas", "eps", "grad_averaging", "amsgrad", "eps_inside_sqrt", "moment_init"},
    "sgd": _COMMON_KEYS | {"momentum", "dampening", "nesterov"},
    "adam": _COMMON_KEYS | {"betas", "eps", "amsgrad"},
    "adamw": _COMMON_KEYS | {"betas", "eps", "amsgrad"},
}
_LARC_KEYS = {"enabled", "trust_coefficient", "clip", "eps"}

# Modules whose parameters are normalisation scales and shifts. _NormBase is the common base of every BatchNorm
# and InstanceNorm variant (SyncBatchNorm and the lazy ones included).
_NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm)

ParamsLike = nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def build_optimizer(cfg: Mapping[str, Any], model_or_params: ParamsLike) -> Optimizer:
    """The optimizer described by `cfg` over `model_or_params` (a module, parameters, or param-group dicts)."""
    cfg = _to_dict(cfg)
    larc_cfg = _larc_settings(cfg.get("larc"))
    exclude = bool(cfg.get("exclude_from_weight_decay", False))
    if "_target_" in cfg:
        optimizer = _instantiate_target(cfg, model_or_params, exclude)
    else:
        optimizer = _build_named(cfg, model_or_params, exclude)
    if larc_cfg.pop("enabled"):
        optimizer = LARC(optimizer, **larc_cfg)
    return optimizer


def param_groups(model_or_params: ParamsLike, exclude_from_weight_decay: bool) -> list[dict[str, Any]]:
    """Param groups with weight decay on all parameters, or none on biases and normalisation parameters.

    The excluded group carries `weight_decay=0.0`; the other group takes the optimizer's default. Empty groups
    are dropped. Groups given as dicts are returned as they are (their own settings win).
    """
    if isinstance(model_or_params, torch.Tensor):
        raise TypeError("pass an iterable of tensors (e.g. [tensor]) or a module, not a single tensor")
    if isinstance(model_or_params, nn.Module):
        params = list(model_or_params.parameters())
        norm_modules = [module for module in model_or_params.modules() if isinstance(module, _NORM_MODULES)]
        in_norm_module = {id(p) for module in norm_modules for p in module.parameters()}
    else:
        params = list(model_or_params)
        if params and all(isinstance(item, dict) for item in params):
            if exclude_from_weight_decay:
                raise ValueError(
                    "exclude_from_weight_decay needs the model or a flat list of parameters, not param-group dicts: "
                    "pass the module, or set weight_decay per group yourself"
                )
            return params
        in_norm_module = set()
    if not params:
        raise ValueError("there are no parameters to optimize")
    if not exclude_from_weight_decay:
        return [{"params": params}]
    no_decay = [p for p in params if p.ndim <= 1 or id(p) in in_norm_module]
    no_decay_ids = {id(p) for p in no_decay}
    decay = [p for p in params if id(p) not in no_decay_ids]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _build_named(cfg: dict[str, Any], model_or_params: ParamsLike, exclude: bool) -> Optimizer:
    name = cfg.get("name")
    if name not in OPTIMIZER_NAMES:
        raise ValueError(
            f"Unknown optimizer name {name!r}: set optimizer.name to one of {', '.join(OPTIMIZER_NAMES)}, "
            "or give optimizer._target_ (a class path) instead"
        )
    valid = _CLASS_KEYS[name] | _FACTORY_KEYS
    unknown = set(cfg) - valid
    if unknown:
        raise ValueError(f"Unknown keys {sorted(unknown)} for optimizer {name!r}: valid keys are {sorted(valid)}")
    if cfg.get("lr") is None:
        raise ValueError(f"optimizer.lr is missing for optimizer {name!r}: set it in the config or on the command line")
    if isinstance(cfg["lr"], bool) or not isinstance(cfg["lr"], (int, float)) or not cfg["lr"] > 0:
        raise ValueError(f"optimizer.lr must be a positive number, got {cfg['lr']!r}: set optimizer.lr=<value > 0>")
    if isinstance(cfg.get("weight_decay"), (int, float)) and cfg["weight_decay"] < 0:
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {cfg['weight_decay']}")
    kwargs = {key: cfg[key] for key in _CLASS_KEYS[name] if key in cfg}
    if "betas" in kwargs:
        kwargs["betas"] = _betas(kwargs["betas"])
    groups = param_groups(model_or_params, exclude)
    return _OPTIMIZER_CLASSES[name](groups, **kwargs)


def _instantiate_target(cfg: dict[str, Any], model_or_params: ParamsLike, exclude: bool) -> Optimizer:
    import hydra.utils

    if cfg.get("name") is not None:
        raise ValueError(f"optimizer config has both name={cfg['name']!r} and _target_={cfg['_target_']!r}: keep one")
    target_cfg = {key: value for key, value in cfg.items() if key not in _FACTORY_KEYS}
    optimizer = hydra.utils.instantiate(target_cfg, param_groups(model_or_params, exclude))
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer._target_={cfg['_target_']!r} built a {type(optimizer).__name__}, not an Optimizer")
    return optimizer


def _larc_settings(larc_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """`enabled` plus the LARC arguments the config sets (LARC's own defaults for the others)."""
    settings = dict(larc_cfg or {})
    unknown = set(settings) - _LARC_KEYS
    if unknown:
        raise ValueError(f"Unknown keys {sorted(unknown)} in optimizer.larc: valid keys are {sorted(_LARC_KEYS)}")
    settings.setdefault("enabled", False)
    return settings


def _betas(betas: Any) -> tuple[float, float]:
    if isinstance(betas, str) or len(betas) != 2:
        raise ValueError(f"optimizer.betas must be a pair [beta1, beta2], got {betas!r}")
    return float(betas[0]), float(betas[1])


def _to_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of `cfg` (hydra DictConfig or mapping), interpolations resolved."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)
