"""What every layer checks about a run: integer arguments, devices, ranks, seeds derived from them, and
allocation failures restated as the argument that sets the memory."""

import hashlib
import numbers
import re
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's), not a bool and not a float such as 1.5 or 2.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> None:
    """ValueError (one line) naming ``name`` unless ``value`` is an integer (:func:`is_integer`: not a bool, not a
    float such as 2.0, which torch refuses deep inside or int() would truncate) in [minimum, maximum]."""
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
        expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names (None: CUDA when available, else CPU); ValueError (one line) for an
    unknown name or a device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device: unknown device {device!r} (expected cpu, cuda, cuda:1, ...)") from None
    if dev.type not in ("cpu", "cuda"):  # others (meta, mps, xpu...) fail later, in autocast or in sampling
        raise ValueError(f"device: diffit runs on cpu or cuda devices, got {device!r}")
    if dev.type == "cuda" and (dev.index or 0) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise ValueError(
            f"device: {device!r} is not available on this machine (CUDA devices: {torch.cuda.device_count()})"
        )
    return dev


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the explicit values, else torch.distributed's when initialised, else (0, 1)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if dist else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if dist else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def split_batch(batch_size: int, rank: int | None, world_size: int | None) -> tuple[int, int, int]:
    """``(rank, world_size, per_rank)``: :func:`resolve_rank`'s pair and this rank's share of the global
    ``batch_size``; ValueError unless it is a positive multiple of the world size."""
    rank, world_size = resolve_rank(rank, world_size)
    if not is_integer(batch_size) or batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"batch_size: expected a positive multiple of world_size={world_size} (the global batch is split "
            f"between ranks), got {batch_size}"
        )
    return rank, world_size, batch_size // world_size


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure, well-mixed function of integers (seed, step, epoch, rank, worker...).

    Hashing rather than adding keeps nearby tuples, e.g. (seed, rank=1) and (seed + 1, rank=0), unrelated.
    """
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class OutOfMemory(torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError since torch 2.5
    """An allocation failure restated in one line that starts with the argument setting the memory it needed
    (``batch_size``, say) and says what to change; the allocator's error is the ``__cause__``. Still caught as
    torch's ``OutOfMemoryError``."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: CUDA's ``OutOfMemoryError``, the CPU allocator's RuntimeError
    ("can't allocate memory", on Windows "not enough memory"), another backend's "out of memory", or a
    MemoryError (numpy, Python). Any other error is not."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        words in text for words in ("can't allocate memory", "not enough memory", "out of memory")
    )


@contextmanager
def out_of_memory_as(error: Callable[[str], OutOfMemory], *, restate_inner: bool = False) -> Iterator[None]:
    """Inside the block, an allocation failure (:func:`is_out_of_memory`) is raised as ``error(tried)`` from it,
    ``tried`` being " (it tried to allocate 2.00 GiB)" when the allocator said how much, else "". Every other
    error passes unchanged, and so does an :class:`OutOfMemory` raised inside (its message is the nearer one)
    unless ``restate_inner``: the block's own argument is then the one to change."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err) or (isinstance(err, OutOfMemory) and not restate_inner):
            raise
        allocator = err.__cause__ if isinstance(err, OutOfMemory) and err.__cause__ is not None else err
        size = re.search(r"(?i)allocate (\d[\d.]* ?(?:bytes|[KMGTPE]i?B))", str(allocator))
        raise error(f" (it tried to allocate {size.group(1)})" if size else "") from allocator


Module = typing.TypeVar("Module", bound=torch.nn.Module)


def to_device(module: Module, device: str | torch.device) -> Module:
    """``module.to(device)``; a module too large for the device's free memory raises :class:`OutOfMemory` naming
    device, with the weights' size (it was a torch traceback, after the checks and the loading had passed)."""
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers())) / 2**30
    with out_of_memory_as(
        lambda tried: OutOfMemory(
            f"device: {type(module).__name__} ({size:.2f} GiB of weights) does not fit in the free memory of "
            f"{device}{tried}; use a device with more free memory (or cpu)"
        )
    ):
        return module.to(device)
