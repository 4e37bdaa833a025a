"""NovoGrad (Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep
Networks") as a torch.optim optimizer, and LARC; the modules of the NovoGrad reproduction suite, packaged alone."""

from .larc import LARC
from .novograd import NovoGrad, novograd

__all__ = ["LARC", "NovoGrad", "novograd"]
