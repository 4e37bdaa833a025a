"""Run by tests/test_memory.py under torchrun (2 gloo CPU ranks): what each rank actually holds of a small model
under FSDP2's `fully_shard`, after one step of each optimizer the suite trains with (built as `make memory` builds
them), for the test to compare with scripts/memory.py's accounting of the same model on the meta device.

Writes, from rank 0, a JSON file (argv[1]) with one entry per rank: the bytes of the storage behind the rank's
parameter shards and behind its gradient shards (FSDP2 pads both to the first chunk's size), the bytes of each
optimizer's state on the rank (a DTensor's local shard, or a plain tensor), and how many of its state tensors
are plain 0-dim tensors on the rank (NovoGrad's second moments, Adam's steps: not sharded).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from script_modules import load_script

memory = load_script("memory")


def make_model() -> torch.nn.Sequential:
    """Sizes that do not divide by 2 (padded shards; the last layer's single row leaves rank 1 an empty shard)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Tanh(),
                               torch.nn.Linear(3, 1))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (FSDP2's gradient shards are views of one buffer)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def measure(mesh) -> dict:
    result: dict = {"state_bytes": {}, "plain_scalars": {}}
    for name in memory.OPTIMIZERS:
        model = make_model()
        for layer in model[::2]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = memory.build_optimizer(memory.optimizer_config(name), model)
        model(torch.randn(4, 5)).square().mean().backward()
        optimizer.step()
        params = list(model.parameters())
        result["param_bytes"] = storage_bytes(p.to_local() for p in params)
        result["grad_bytes"] = storage_bytes(p.grad.to_local() for p in params)
        states = [value for state in optimizer.state.values() for value in state.values()]
        result["state_bytes"][name] = sum(local_bytes(v) for v in states)
        result["plain_scalars"][name] = sum(not isinstance(v, DTensor) and v.dim() == 0 for v in states)
    return result


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    measured = measure(mesh)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, measured)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as out:
            json.dump(gathered, out)
    dist.barrier()  # no rank tears gloo down while another still uses it (it aborted a run once: "terminate called")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
