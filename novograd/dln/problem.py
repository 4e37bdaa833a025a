"""The two-layer deep linear network of Section 4: y = (w1 * w2) * x, trained so that y = 1 at x = 1.

The loss L(w1, w2) = (w1 w2 - 1)^2 has its minima on the hyperbola w1 w2 = 1; the flattest of them are (1, 1) and
(-1, -1), minima near the axes are sharp (the Hessian's top eigenvalue on the hyperbola is 2 (w1^2 + w2^2)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The flat minima of the loss: the end point's distance to the nearer one measures how flat it is.
FLAT_MINIMA = ((1.0, 1.0), (-1.0, -1.0))


class DeepLinearNetwork(nn.Module):
    """Two bias-free 1x1 linear layers without a non-linearity, so each weight is its own layer for NovoGrad."""

    def __init__(self, w1: float, w2: float, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.layer1 = nn.Linear(1, 1, bias=False, dtype=dtype)
        self.layer2 = nn.Linear(1, 1, bias=False, dtype=dtype)
        with torch.no_grad():
            self.layer1.weight.fill_(w1)
            self.layer2.weight.fill_(w2)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(x))

    def weights(self) -> Tensor:
        """(w1, w2) as a tensor of shape (2,)."""
        return torch.cat([self.layer1.weight.detach().reshape(1), self.layer2.weight.detach().reshape(1)])

    def loss(self) -> Tensor:
        """The paper's loss at its one training example x = 1, y = 1."""
        x = torch.ones(1, 1, dtype=self.layer1.weight.dtype)
        return (self(x) - 1.0).square().sum()


def loss(w1: Tensor, w2: Tensor) -> Tensor:
    """(w1 w2 - 1)^2 elementwise, for any number of independent problems."""
    return (w1 * w2 - 1.0).square()


def loss_and_grads(w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The loss and its gradients for a batch of independent problems, without autograd.

    The products are taken in the order autograd takes them through `DeepLinearNetwork` (dL/dy = 2 r, then times
    the other weight), so the gradients are bitwise those of the module; a test checks it.
    """
    residual = w1 * w2 - 1.0
    dloss_dy = 2.0 * residual
    return residual.square(), dloss_dy * w2, dloss_dy * w1


def flat_distance(w: Tensor) -> Tensor:
    """Euclidean distance from points w (..., 2) to the nearer flat minimum, (1, 1) or (-1, -1)."""
    minima = torch.tensor(FLAT_MINIMA, dtype=w.dtype)
    return torch.linalg.vector_norm(w.unsqueeze(-2) - minima, dim=-1).amin(dim=-1)
