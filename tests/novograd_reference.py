"""NovoGrad computed by hand: the formulas of Section 3 / Algorithm 1 in plain Python floats, for the tests.

Written from the paper's formulas (the way TF-Addons tests its NovoGrad), never from the optimizer's own code.
"""

from __future__ import annotations

import math


def reference_novograd(w, grads, *, lr, b1, b2, eps, wd, grad_averaging=False, amsgrad=False,
                       eps_inside_sqrt=True, moment_init="paper", maximize=False):
    """One layer, in plain Python floats, straight from the formulas. Returns the weights after each step.

    `lr` is a number or one per step; a gradient of None is a step the layer sits out (weights and moments
    unchanged, and its first step comes later)."""
    lrs = lr if isinstance(lr, list) else [lr] * len(grads)
    w = list(w)
    m = [0.0] * len(w)
    v = vmax = 0.0
    t = 0
    history = []
    for g, lr_t in zip(grads, lrs):
        if g is None:
            history.append(w)
            continue
        t += 1
        g = [-x for x in g] if maximize else list(g)
        norm_sq = sum(x * x for x in g)
        v = norm_sq if t == 1 else b2 * v + (1 - b2) * norm_sq
        vmax = v if t == 1 else max(vmax, v)
        vn = vmax if amsgrad else v
        denom = math.sqrt(vn + eps) if eps_inside_sqrt else math.sqrt(vn) + eps
        u = [gi / denom + wd * wi for gi, wi in zip(g, w)]
        c = (1 - b1) if grad_averaging else 1.0
        if t == 1 and moment_init == "paper":
            m = u
        else:
            m = [b1 * mi + c * ui for mi, ui in zip(m, u)]
        w = [wi - lr_t * mi for wi, mi in zip(w, m)]
        history.append(w)
    return history
