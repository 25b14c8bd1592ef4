"""Small models and launchers shared by several test files (import as `from helpers import ...`)."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from diffit.nn import TMSA, ImageDiffiT


def tiny_image_diffit(num_classes: int | None = 3) -> ImageDiffiT:
    """An 8x8 single-channel ImageDiffiT small enough for training and sampling tests."""
    torch.manual_seed(0)
    return ImageDiffiT(
        resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4, num_heads=2,
        time_dim=16, num_classes=num_classes,
    )  # fmt: skip


def free_port() -> int:
    """A local TCP port nothing listens on now (for a job's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(script: Path, *args: str, timeout: float = 240) -> None:
    """Run ``script`` (with ``args``) as ranks 0 and 1 of a job on a free local port; both must exit with 0."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]


def layer_norm_reference(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis from its definition: no affine parameters, eps 1e-6 (the blocks' and the
    release's)."""
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-6)


def tmsa_reference(attn: TMSA, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Slow per-token TMSA straight from the paper's Eq. 3-6, one window (b, n, d) at a time."""
    d, h, e = attn.dim, attn.num_heads, attn.head_dim
    W_s, b_s = attn.qkv.weight.double(), attn.qkv.bias.double()
    table, index = attn.relative_position_bias_table.double(), attn.relative_position_index
    out = torch.zeros(x.shape, dtype=torch.float64)
    for bi in range(x.shape[0]):
        xt = torch.zeros(3 * d, dtype=torch.float64)  # plain attention (time_qkv=False)
        if attn.qkv_temb is not None:
            xt = attn.qkv_temb.weight.double() @ t[bi].double() + attn.qkv_temb.bias.double()  # x_t [W_qt W_kt W_vt]
        if attn.bias_temb is not None:  # time_bias: B(x_t) = B + x_t W_B, one table per sample
            shift = attn.bias_temb.weight.double() @ t[bi].double() + attn.bias_temb.bias.double()
            table = attn.relative_position_bias_table.double() + shift.reshape(-1, h)
        qkv = [W_s @ x[bi, i].double() + b_s + xt for i in range(x.shape[1])]  # q_s = x_s W_qs + x_t W_qt ...
        q = torch.stack([v[:d] for v in qkv]).reshape(-1, h, e)
        k = torch.stack([v[d : 2 * d] for v in qkv]).reshape(-1, h, e)
        v = torch.stack([v[2 * d :] for v in qkv]).reshape(-1, h, e)
        heads = []
        for hi in range(h):
            logits = torch.empty(x.shape[1], x.shape[1], dtype=torch.float64)
            for i in range(x.shape[1]):
                for j in range(x.shape[1]):
                    logits[i, j] = q[i, hi] @ k[j, hi] / math.sqrt(e) + table[index[i, j], hi]
            heads.append(torch.softmax(logits, dim=-1) @ v[:, hi])
        out[bi] = torch.cat(heads, dim=-1) @ attn.proj.weight.double().T + attn.proj.bias.double()
    return out
