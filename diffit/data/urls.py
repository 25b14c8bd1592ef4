"""Shard URLs and their expansion, the ranks that split a stream, and the seeds that drive it.

A URL argument is a brace pattern (``data/train-{000000..000127}.tar``), a ``::``-joined list of them, or a
Python list. Local paths, ``file:``, ``http(s):`` and ``pipe:`` URLs (``pipe:aws s3 cp s3://b/x.tar -``) are
opened by WebDataset's ``gopen``; only local paths can be checked for existence up front.
"""

import hashlib
import os
from urllib.parse import urlparse

import torch
from webdataset.shardlists import expand_urls as _wds_expand

__all__ = ["expand_urls", "is_local", "mix_seed", "resolve_rank"]


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on this machine (a bare path or ``file:``), as opposed to a stream."""
    scheme = urlparse(url).scheme
    # A one-letter scheme is a Windows drive letter, not a protocol.
    return scheme in ("", "file") or len(scheme) == 1


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def expand_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand brace patterns into a list of shard URLs, failing fast on an empty or nonexistent pattern.

    Raises ValueError naming the offending pattern when nothing matches or a local shard does not exist;
    remote and ``pipe:`` URLs are accepted unchecked (they fail when opened).
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns or any(not p.strip() for p in patterns):
        raise ValueError(
            f"urls: expected a shard path or pattern such as 'data/train-{{000000..000009}}.tar', got {urls!r}"
        )
    expanded: list[str] = []
    for pattern in patterns:
        expanded.extend(_wds_expand(pattern))
    missing = [u for u in expanded if is_local(u) and not os.path.isfile(_local_path(u))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"urls: shard {missing[0]!r} does not exist{more} (pattern {urls!r})")
    return expanded


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure, well-mixed function of integers (seed, step, epoch, rank, worker...).

    Hashing rather than adding keeps nearby tuples, e.g. (seed, rank=1) and (seed + 1, rank=0), unrelated.
    """
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the explicit values, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size
