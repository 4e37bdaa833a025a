"""optimizer=apex_novograd: the import guard's advice, and the config reaching apex's FusedNovoGrad in the paper's
mode (apex is not installable here: a stand-in module with apex's signature takes its place)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from novograd.engine.compose import compose_config
from novograd.optim.factory import build_optimizer
from novograd.optim.larc import LARC


class RecordingFusedNovoGrad(torch.optim.Optimizer):
    """apex.optimizers.FusedNovoGrad's constructor signature and defaults; records what it was given."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, reg_inside_moment=False, grad_averaging=True, norm_type=2, init_zero=False,
                 set_grad_none=True):
        self.received = dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
                             amsgrad=amsgrad, reg_inside_moment=reg_inside_moment, grad_averaging=grad_averaging,
                             norm_type=norm_type, init_zero=init_zero, set_grad_none=set_grad_none)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def zero_grad(self):  # apex's takes no set_to_none
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


@pytest.fixture
def fake_apex(monkeypatch):
    apex = types.ModuleType("apex")
    apex.optimizers = types.ModuleType("apex.optimizers")
    apex.optimizers.FusedNovoGrad = RecordingFusedNovoGrad
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", apex.optimizers)


def test_without_apex_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # importing it raises ImportError, installed or not
    cfg = compose_config(["experiment=table1/novograd_100ep", "optimizer=apex_novograd"]).optimizer
    with pytest.raises(InstantiationException) as error:  # hydra's wrapper around apex_novograd's ImportError
        build_optimizer(cfg, nn.Linear(3, 2))
    assert isinstance(error.value.__cause__, ImportError)
    message = str(error.value)
    assert "https://github.com/NVIDIA/apex" in message and "--cuda_ext" in message
    assert "`pip install apex` installs an unrelated project" in message
    assert "optimizer.eps_inside_sqrt=false optimizer.moment_init=zero" in message


def test_a_row_reaches_fused_novograd_in_the_paper_mode(fake_apex):
    # Table 6's NovoGrad row: its lr, weight decay and betas; the table's clipping is the engine's business.
    cfg = compose_config(["experiment=table6/novograd_12b", "optimizer=apex_novograd"])
    optimizer = build_optimizer(cfg.optimizer, nn.Linear(3, 2))
    assert isinstance(optimizer, RecordingFusedNovoGrad)
    assert optimizer.received == dict(
        lr=cfg.optimizer.lr, bias_correction=False, betas=tuple(cfg.optimizer.betas), eps=1e-8,
        weight_decay=cfg.optimizer.weight_decay, amsgrad=False, reg_inside_moment=True, grad_averaging=False,
        norm_type=2, init_zero=False, set_grad_none=True,
    )


def test_larc_and_the_engines_zero_grad_work_with_it(fake_apex):
    cfg = compose_config(["experiment=table4/novograd", "optimizer=apex_novograd"])  # Jasper rows use LARC
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(cfg.optimizer, model)
    assert isinstance(optimizer, LARC) and isinstance(optimizer.optimizer, RecordingFusedNovoGrad)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.zero_grad(set_to_none=True)  # as the trainer calls it; apex's own zero_grad() would refuse the keyword
    assert all(p.grad is None for p in model.parameters())
