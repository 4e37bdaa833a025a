"""The optimizer factory: torch's own baselines, param groups, LARC, hydra configs and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from novograd.optim.factory import OPTIMIZER_NAMES, build_optimizer, param_groups
from novograd.optim.larc import LARC

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm([4, 2, 2])  # a 3-D normalisation weight: excluded by module, not by shape
        self.fc = nn.Linear(16, 2)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_shipped_config_builds_its_class(name):
    cfg = OmegaConf.load(CONFIG_DIR / "optimizer" / f"{name}.yaml")
    optimizer = build_optimizer(cfg, _Net())
    from novograd.optim.novograd import NovoGrad

    expected = {"novograd": NovoGrad, "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    assert type(optimizer) is expected[name], "baselines must be torch.optim's own classes"
    assert optimizer.param_groups[0]["lr"] == cfg.lr
    assert optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay


def test_paper_era_defaults_in_configs():
    load = lambda name: OmegaConf.load(CONFIG_DIR / "optimizer" / f"{name}.yaml")  # noqa: E731
    assert list(load("novograd").betas) == [0.95, 0.98] and load("novograd").weight_decay == 0.0
    assert load("sgd").momentum == 0.9 and load("sgd").exclude_from_weight_decay
    for name in ("adam", "adamw"):
        assert list(load(name).betas) == [0.9, 0.999] and load(name).eps == 1e-8


def test_hyperparameters_reach_the_optimizer():
    sgd = build_optimizer({"name": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, _Net())
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 1e-4
    adamw = build_optimizer({"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.997], "eps": 1e-9}, _Net())
    assert adamw.defaults["betas"] == (0.9, 0.997) and adamw.defaults["eps"] == 1e-9
    novograd = build_optimizer(
        {"name": "novograd", "lr": 7e-3, "betas": [0.95, 0.99], "grad_averaging": True, "moment_init": "zero"}, _Net()
    )
    assert novograd.defaults["betas"] == (0.95, 0.99) and novograd.defaults["grad_averaging"]
    assert novograd.defaults["moment_init"] == "zero"


def test_weight_decay_on_every_parameter_by_default():
    model = _Net()
    groups = param_groups(model, exclude_from_weight_decay=False)
    assert len(groups) == 1 and _ids(groups[0]["params"]) == _ids(model.parameters())


def test_exclusion_covers_biases_and_normalisation_parameters():
    model = _Net()
    optimizer = build_optimizer(
        {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "exclude_from_weight_decay": True}, model
    )
    decay, no_decay = optimizer.param_groups
    assert _ids(decay["params"]) == {id(model.conv.weight), id(model.fc.weight)}
    assert _ids(no_decay["params"]) == _ids(
        [model.conv.bias, model.fc.bias, model.bn.weight, model.bn.bias, model.ln.weight, model.ln.bias]
    )
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0


def test_exclusion_on_a_flat_parameter_list_uses_the_1d_rule():
    weight, bias = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    groups = param_groups([weight, bias], exclude_from_weight_decay=True)
    assert groups == [{"params": [weight]}, {"params": [bias], "weight_decay": 0.0}]


def test_excluded_parameters_really_get_no_decay():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    cfg = {"name": "sgd", "lr": 1.0, "weight_decay": 0.5, "exclude_from_weight_decay": True}
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), torch.full((2, 2), 0.5))
    torch.testing.assert_close(model.bias.detach(), torch.ones(2))


def test_larc_wraps_when_enabled():
    cfg = OmegaConf.load(CONFIG_DIR / "optimizer" / "sgd.yaml")
    cfg.larc.enabled = True
    optimizer = build_optimizer(cfg, _Net())
    assert isinstance(optimizer, LARC) and isinstance(optimizer.optimizer, torch.optim.SGD)
    assert optimizer.trust_coefficient == 0.001 and optimizer.clip and optimizer.fold_weight_decay
    adamw = build_optimizer({"name": "adamw", "lr": 1e-3, "larc": {"enabled": True, "clip": False}}, _Net())
    assert isinstance(adamw, LARC) and not adamw.clip and not adamw.fold_weight_decay


def test_target_config_is_instantiated_with_hydra():
    cfg = OmegaConf.create({"_target_": "torch.optim.RMSprop", "lr": 0.01, "weight_decay": 1e-3,
                            "exclude_from_weight_decay": True, "larc": {"enabled": False}})
    model = _Net()
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.RMSprop and optimizer.defaults["lr"] == 0.01
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-3, 0.0]


def test_param_group_dicts_pass_through():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer({"name": "adam", "lr": 1e-3}, [{"params": [a]}, {"params": [b], "lr": 0.5}])
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 0.5]


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "lamb", "lr": 0.1}, "novograd, sgd, adam, adamw"),
        ({"lr": 0.1}, "one of novograd"),
        ({"name": "sgd"}, "optimizer.lr is missing"),
        ({"name": "sgd", "lr": 0.0}, "optimizer.lr must be a positive number, got 0.0"),
        ({"name": "adamw", "lr": -0.001}, "optimizer.lr must be a positive number, got -0.001"),
        ({"name": "novograd", "lr": 0.01, "weight_decay": -0.1}, "optimizer.weight_decay must be >= 0"),
        ({"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}, "Unknown keys \\['betas'\\]"),
        ({"name": "adam", "lr": 0.1, "betas": [0.9]}, "pair"),
        ({"name": "sgd", "lr": 0.1, "larc": {"enabled": True, "trust": 0.1}}, "optimizer.larc"),
        ({"name": "sgd", "_target_": "torch.optim.SGD", "lr": 0.1}, "keep one"),
    ],
)
def test_bad_configs_are_rejected_with_the_valid_options(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(cfg, _Net())


def test_bad_parameter_arguments_are_rejected():
    groups = [{"params": [nn.Parameter(torch.zeros(1))]}]
    with pytest.raises(ValueError, match="param-group dicts"):
        build_optimizer({"name": "sgd", "lr": 0.1, "exclude_from_weight_decay": True}, groups)
    with pytest.raises(TypeError, match="single tensor"):
        build_optimizer({"name": "sgd", "lr": 0.1}, nn.Parameter(torch.zeros(2)))
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer({"name": "sgd", "lr": 0.1}, nn.ReLU())
