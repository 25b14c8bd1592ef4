"""torch.distributed set-up for torchrun: NCCL on GPU, gloo on CPU; single-process when not launched by torchrun."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: bool = False  # a process group exists (torchrun started this process, even with one rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Collectives and DDP are in use: several ranks, or one rank that torchrun started (so a one-GPU
        torchrun job runs the same DDP / NCCL code as a multi-GPU one)."""
        return self.world_size > 1 or self.group


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names (None: CUDA when available, else CPU); ValueError (one line) for an
    unknown name or a device this machine does not have (``diffit.data``'s encoding applies it too)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device: unknown device {device!r} (expected cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and (dev.index or 0) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise ValueError(
            f"device: {device!r} is not available on this machine (CUDA devices: {torch.cuda.device_count()})"
        )
    return dev


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    ``device`` None picks the local GPU when CUDA is available, else the CPU. Under torchrun a process group
    is created even for one rank (NCCL on GPU, gloo on CPU); without torchrun's variables the job is a single
    process and no group is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = check_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    launched = world > 1 or ("MASTER_ADDR" in os.environ and "RANK" in os.environ)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    group = dist.is_available() and dist.is_initialized()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, group=group)


def world_size() -> int:
    """The number of processes torchrun launched (1 outside torchrun), before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over ranks (a no-op in a single process)."""
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Max of ``x`` over ranks (a no-op in a single process)."""
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def shutdown(info: DistInfo, *, synchronize: bool = True) -> None:
    """Leave the process group.

    ``synchronize`` (a normal ending) first waits at a barrier for every rank, so that no rank tears the
    group down while another still has a collective in flight, and so that gloo's worker threads release the
    last collective's tensors while the interpreter is still alive: without it a rank that exits right after
    a collective can abort at exit ("terminate called without an active exception"). Pass False on an error
    path, where another rank may never reach the barrier.
    """
    if info.enabled and dist.is_initialized():
        if synchronize:
            dist.barrier(device_ids=[info.device.index]) if info.device.type == "cuda" else dist.barrier()
        dist.destroy_process_group()
