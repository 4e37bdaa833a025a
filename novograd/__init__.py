"""The NovoGrad reproduction suite.

`from novograd import NovoGrad` gives the paper's optimizer (Algorithm 1) as a torch.optim.Optimizer. The import
is lazy so that `python -m novograd.train --cfg job` and other torch-free entry points start quickly.
"""

__all__ = ["NovoGrad"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "NovoGrad":
        from novograd.optim.novograd import NovoGrad

        return NovoGrad
    raise AttributeError(f"module 'novograd' has no attribute {name!r}")
