"""Helpers below every layer (nn, diffusion and data may all import them): atomic files, integer and device
checks, ranks and seeds, allocation failures."""

from diffit.util.files import (
    atomic_path,
    check_output_path,
    fsync_dir,
    fsync_file,
    locked_folder,
    write_json,
)
from diffit.util.runtime import (
    OutOfMemory,
    check_device,
    check_integer,
    is_integer,
    is_out_of_memory,
    mix_seed,
    out_of_memory_as,
    resolve_rank,
    split_batch,
    to_device,
)

__all__ = [
    "OutOfMemory",
    "atomic_path",
    "check_device",
    "check_integer",
    "check_output_path",
    "fsync_dir",
    "fsync_file",
    "is_integer",
    "is_out_of_memory",
    "locked_folder",
    "mix_seed",
    "out_of_memory_as",
    "resolve_rank",
    "split_batch",
    "to_device",
    "write_json",
]
