"""Helpers below every layer (nn, diffusion and data may all import them): atomic files, integer and device
checks, ranks and seeds."""

from diffit.util.files import atomic_path, check_output_path, fsync_dir, fsync_file, write_json
from diffit.util.runtime import check_device, is_integer, mix_seed, resolve_rank, split_batch

__all__ = [
    "atomic_path",
    "check_device",
    "check_output_path",
    "fsync_dir",
    "fsync_file",
    "is_integer",
    "mix_seed",
    "resolve_rank",
    "split_batch",
    "write_json",
]
