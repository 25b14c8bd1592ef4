"""torch.distributed set-up for torchrun: NCCL on GPU, gloo on CPU; single-process when not launched by torchrun."""

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffit.util import check_device


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


SETTLE_TIMEOUT_S = 5.0  # the longest a collective waits for gloo's threads to let go of its tensors
_settling = [True]  # turned off (with one warning) if a wait ever times out


def _holds(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Each tensor's Python refcount and C++ use count: while a backend thread holds a tensor, the use count is
    higher, and where freeing it takes the GIL (torch 2.13 here) so is the refcount."""
    return [(sys.getrefcount(t), t._use_count()) for t in tensors]


def _collective(run: Callable[[], object], tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Run a blocking collective over ``tensors``; on gloo, return only once its worker thread has let go of them.

    A gloo worker thread drops its references to a collective's tensors just after the collective completes,
    and for a tensor Python also holds, dropping the last of them takes the GIL. When that happens while the
    interpreter shuts down, the process aborts ("terminate called without an active exception"): a rank that
    exits right after a collective could crash. While the thread holds them each tensor's counts are higher
    (see ``_holds``), so waiting (GIL released) until they are back makes every collective of diffit end with
    its tensors in Python's hands alone.
    """
    before = _holds(tensors)
    run()
    if info.device.type != "cpu" or not _settling[0]:
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any(r > r0 or u > u0 for (r, u), (r0, u0) in zip(_holds(tensors), before, strict=True)):
        if time.monotonic() > deadline:
            _settling[0] = False
            warnings.warn(
                "gloo kept a collective's tensors for more than "
                f"{SETTLE_TIMEOUT_S:g} s; later collectives no longer wait for it",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        time.sleep(1e-4)


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType, info: DistInfo) -> torch.Tensor:
    """A reduced copy of ``x`` (``x`` itself in a single process)."""
    if info.enabled:
        x = x.clone()
        _collective(lambda: dist.all_reduce(x, op=op), [x], info)
    return x


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over ranks (a no-op in a single process)."""
    return _all_reduce(x, dist.ReduceOp.SUM, info) / info.world_size if info.enabled else x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Max of ``x`` over ranks (a no-op in a single process)."""
    return _all_reduce(x, dist.ReduceOp.MAX, info)


def all_gather(x: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``x`` in rank order (``[x]`` in a single process), on ``x``'s device.

    Ranks may pass different shapes (a rank with nothing to give passes 0 rows) of one dtype and number of
    dimensions: the shapes are gathered first, then the flattened tensors padded to the longest.
    """
    if not info.enabled:
        return [x]
    shape = torch.tensor(x.shape, dtype=torch.int64, device=info.device)
    shapes = [torch.empty_like(shape) for _ in range(info.world_size)]
    _collective(lambda: dist.all_gather(shapes, shape), [shape, *shapes], info)
    sizes = [torch.Size(s.tolist()) for s in shapes]
    longest = max(s.numel() for s in sizes)
    flat = torch.zeros(longest, dtype=x.dtype, device=info.device)
    flat[: x.numel()] = x.detach().reshape(-1)
    flats = [torch.empty_like(flat) for _ in range(info.world_size)]
    _collective(lambda: dist.all_gather(flats, flat), [flat, *flats], info)
    return [f[: s.numel()].reshape(s).to(x.device) for f, s in zip(flats, sizes, strict=True)]


def shutdown(info: DistInfo) -> None:
    """Leave the process group (nothing in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
