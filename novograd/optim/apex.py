"""NVIDIA apex's `FusedNovoGrad` in the paper's mode, as `optimizer=apex_novograd` (configs/optimizer/).

apex's NovoGrad defaults to a layer-wise Adam (bias correction on, weight decay applied outside the moment). Its
paper mode is `reg_inside_moment=True, bias_correction=False`, with the second moment started from the first
gradient's norm (`init_zero=False`) and the L2 norm (`norm_type=2`). apex stores the norm rather than its square and
adds eps outside the square root, and starts the momentum at zero, so it computes this package's
`NovoGrad(eps_inside_sqrt=False, moment_init="zero")` with the same `grad_averaging` (the comparison table in
docs/optimizer.md).

apex is not on the package registries (the `apex` there is another project): it is built from NVIDIA's sources
with its CUDA extensions, and runs on CUDA parameters only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

INSTALL_HINT = (
    "optimizer=apex_novograd needs NVIDIA apex built with its CUDA extensions, which the package registries do not "
    "have (`pip install apex` installs an unrelated project). On a machine with the CUDA toolkit of your torch: "
    "git clone https://github.com/NVIDIA/apex && cd apex && "
    "uv pip install -v --no-build-isolation --config-settings \"--build-option=--cpp_ext\" "
    "--config-settings \"--build-option=--cuda_ext\" . (apex's README gives the current command); "
    "or use optimizer=novograd with optimizer.eps_inside_sqrt=false optimizer.moment_init=zero, the same update."
)

#: FusedNovoGrad's arguments that make it the paper's NovoGrad; the config cannot change them.
PAPER_MODE = {"bias_correction": False, "reg_inside_moment": True, "init_zero": False, "norm_type": 2}


def fused_novograd_class() -> type[Optimizer]:
    """`apex.optimizers.FusedNovoGrad`, or an ImportError that says how to install apex."""
    try:
        from apex.optimizers import FusedNovoGrad
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return FusedNovoGrad


def apex_novograd(
    params: Iterable[Any],
    lr: float,
    betas: Sequence[float] = (0.95, 0.98),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_averaging: bool = False,
) -> Optimizer:
    """FusedNovoGrad over `params` in the paper's mode (`PAPER_MODE`), with the hyperparameters of the config."""
    fused_novograd = fused_novograd_class()

    class PaperModeFusedNovoGrad(fused_novograd):  # type: ignore[misc, valid-type]
        """apex's `zero_grad()` takes no `set_to_none`, which the engine passes (as torch.optim's does)."""

        def zero_grad(self, set_to_none: bool = True) -> None:
            if set_to_none:
                super().zero_grad()  # set_grad_none=True: every gradient to None
            else:
                torch.optim.Optimizer.zero_grad(self, set_to_none=False)

    beta1, beta2 = betas
    return PaperModeFusedNovoGrad(
        params, lr=lr, betas=(float(beta1), float(beta2)), eps=eps, weight_decay=weight_decay,
        grad_averaging=grad_averaging, set_grad_none=True, **PAPER_MODE,
    )
