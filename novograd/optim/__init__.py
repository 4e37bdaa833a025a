"""Optimizers of the suite: NovoGrad (the paper's), and the factory that builds it or a torch.optim baseline."""

from novograd.optim.novograd import NovoGrad, novograd

__all__ = ["NovoGrad", "novograd"]
