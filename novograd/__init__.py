"""The NovoGrad reproduction suite.

`from novograd import NovoGrad` gives the paper's optimizer (Algorithm 1) as a torch.optim.Optimizer.
"""

from novograd.optim.novograd import NovoGrad

__all__ = ["NovoGrad"]
__version__ = "0.1.0"
