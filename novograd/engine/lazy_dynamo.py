"""A process that compiles nothing need not import TorchDynamo: 3.8 s of the launcher's check and 5.8 s of a
worker's start on the shared 2-core CPU machine where it was measured (`python -X importtime`), for smoke runs that
train for a few seconds.

torch wraps methods that every run calls (`Optimizer.add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict`, `DistributedDataParallel._inside_ddp_forward`) with `torch._disable_dynamo`, so that
`torch.compile` leaves them out of its graphs. The wrapper imports torch._dynamo on its first call to build the
disabled function, and caches it on the function as `__dynamo_disable`. Outside `torch.compile` the disabled function
does what the function does, so where nothing is compiled `dynamo_import_skipped` caches the function itself. Used by
the launcher (its checks build stand-in optimizers) and by `python -m novograd.train` when neither
`trainer.compile` nor the optimizer's `fused` (NovoGrad's compiled step) asks for torch.compile. Should torch change
the wrapper, this does nothing and the import happens as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: The name under which torch._compile._disable_dynamo caches the disabled function.
_CACHE = "__dynamo_disable"


@contextmanager
def dynamo_import_skipped() -> Iterator[None]:
    """Within the block, torch's `_disable_dynamo`-wrapped methods run without importing torch._dynamo; use it only
    where nothing calls torch.compile. On leaving, the methods are as they were (tests call entry points in one
    process)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.optim import Optimizer

    methods = [getattr(Optimizer, name) for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")]
    methods.append(DistributedDataParallel._inside_ddp_forward)
    cached = []
    for wrapper in methods:
        function = getattr(wrapper, "__wrapped__", None)
        if function is not None and _is_disable_dynamo_wrapper(wrapper) and not hasattr(function, _CACHE):
            setattr(function, _CACHE, function)
            cached.append(function)
    try:
        yield
    finally:
        for function in cached:
            delattr(function, _CACHE)


def _is_disable_dynamo_wrapper(wrapper: object) -> bool:
    code = getattr(wrapper, "__code__", None)
    return code is not None and os.path.basename(code.co_filename) == "_compile.py"
