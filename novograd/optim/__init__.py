"""Optimizers of the suite: NovoGrad (the paper's), LARC, learning-rate schedules, and the factory that builds
NovoGrad or a torch.optim baseline from a config."""

from novograd.optim.novograd import NovoGrad

__all__ = ["NovoGrad"]
