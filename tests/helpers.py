"""Small models and launchers shared by several test files (import as `from helpers import ...`)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from diffit.nn import ImageDiffiT


def tiny_image_diffit(num_classes: int | None = 3) -> ImageDiffiT:
    """An 8x8 single-channel ImageDiffiT small enough for training and sampling tests."""
    torch.manual_seed(0)
    return ImageDiffiT(
        resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4, num_heads=2,
        time_dim=16, num_classes=num_classes,
    )  # fmt: skip


def run_two_ranks(script: Path, *args: str, timeout: float = 240) -> None:
    """Run ``script`` (with ``args``) as ranks 0 and 1 of a job on a free local port; both must exit with 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]
