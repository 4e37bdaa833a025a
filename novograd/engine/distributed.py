"""Process-group setup and the few collectives the engine needs.

One process works without torchrun (world size 1, no process group); under torchrun the environment variables it
sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...) select DDP with nccl on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def select_device(requested: str, local_rank: int) -> torch.device:
    """`auto` picks this rank's GPU when CUDA is available, else the CPU; `cpu` or `cuda` force one."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto.")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    raise ValueError(f"trainer.device must be auto, cuda or cpu, got {requested!r}.")


def _torchrun_environment_from_slurm() -> None:
    """Under SLURM with one task per GPU (srun, or launcher=slurm through submitit) and no torchrun, derive the
    variables torchrun would set from SLURM's: rank, local rank, world size, and the first node as rendezvous."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    import subprocess

    first_node = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"],
        LOCAL_RANK=os.environ["SLURM_LOCALID"],
        WORLD_SIZE=os.environ["SLURM_NTASKS"],
        MASTER_ADDR=first_node,
        # A port derived from the job id: concurrent jobs sharing a first node do not collide.
        MASTER_PORT=os.environ.get("MASTER_PORT", str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)),
    )


def init_distributed(requested_device: str, group_alone: bool = False) -> DistributedContext:
    """Join the process group torchrun (or SLURM) describes in the environment, or run alone when none does;
    `group_alone`: alone, still make a process group of one (FSDP2 shards over a process group, even of one rank,
    and a run sharded on N ranks resumes on one through it)."""
    _torchrun_environment_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank)
    if not dist.is_initialized() and (world_size > 1 or group_alone):
        backend = "nccl" if device.type == "cuda" else "gloo"
        device_id = device if device.type == "cuda" else None
        if world_size > 1:
            dist.init_process_group(backend=backend, device_id=device_id)
        else:  # no rendezvous to make: an in-memory store of one
            dist.init_process_group(backend=backend, device_id=device_id, store=dist.HashStore(), rank=0,
                                    world_size=1)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op alone) and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The maximum of `tensor` over ranks, in place (a no-op alone); on the device, so no host synchronisation."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class DeferredVote:
    """A vote of all ranks on a few integer flags (the maximum over ranks), cast at one step boundary and read at
    the next, so that it never waits for the device.

    The flags (a preemption signal's number, a checkpoint due by time) live on the host; an all-reduce of them on
    the training device would make the host wait for the device's queue every step. The vote goes through a gloo
    (CPU) group of its own, asynchronously: `cast` starts the all-reduce, and `result`, one step later, waits for it,
    by then long done. Every rank casts at the same boundaries and reads the same result at the same later
    boundary, so all ranks act on the same step. Alone, the result is the previous cast's flags: the same one-step
    delay whatever the world size.
    """

    def __init__(self, num_flags: int) -> None:
        self.num_flags = num_flags
        # A collective: every rank creates the group at the same point (the trainer's construction).
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._pending: tuple[torch.Tensor, Any] | None = None

    def cast(self, flags: list[int]) -> None:
        """Start the vote on this rank's `flags` (the previous vote must have been read)."""
        assert self._pending is None, "read the previous vote before casting the next"
        tensor = torch.tensor(flags, dtype=torch.int64)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group, async_op=True) if self.group else None
        self._pending = (tensor, work)

    def result(self) -> list[int]:
        """The maximum over ranks of each flag of the last cast (zeros when nothing was cast); clears it."""
        if self._pending is None:
            return [0] * self.num_flags
        tensor, work = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        return tensor.tolist()

    def close(self) -> None:
        """Finish an outstanding vote (no collective may be in flight when the process group is destroyed)."""
        self.result()
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None
