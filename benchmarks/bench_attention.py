"""Windowed TMSA (SDPA) against global attention and a naive softmax(QK^T + B)V of the same math.

Grid 32x32, 256 channels, 4 heads, window 8, batch 8; forward and forward+backward, fp32 and bf16 autocast.
Run: python benchmarks/bench_attention.py [--device cuda]
"""

import argparse
import sys
from pathlib import Path

import torch
from einops import rearrange
from rich.console import Console
from rich.table import Table

from diffit.nn import TMSA, window_merge, window_partition

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402


def naive_tmsa(attn: TMSA, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same windowed TMSA with an explicit (B, heads, n, n) logits tensor and softmax."""
    b, h, w, _ = x.shape
    windows = window_partition(x, attn.window)
    qkv_t = attn.qkv_temb(t)[:, None, :].repeat_interleave(windows.shape[0] // b, dim=0)
    q, k, v = rearrange(attn.qkv(windows) + qkv_t, "b n (three h e) -> three b h n e", three=3, h=attn.num_heads)
    logits = (q * attn.head_dim**-0.5) @ k.transpose(-2, -1) + attn.relative_position_bias().to(q.dtype)
    out = rearrange(logits.softmax(dim=-1) @ v, "b h n e -> b n (h e)")
    return window_merge(attn.proj(out), attn.window, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    b, res, dim, heads, window = 8, 32, 256, 4, 8
    windowed = TMSA(dim=dim, time_dim=dim, num_heads=heads, window=window).to(dev)
    global_ = TMSA(dim=dim, time_dim=dim, num_heads=heads, window=res).to(dev)
    x = torch.randn(b, res, res, dim, device=dev, requires_grad=True)
    t = torch.randn(b, dim, device=dev)
    impls = {
        "windowed SDPA": lambda: windowed.forward_grid(x, t),
        "naive windowed": lambda: naive_tmsa(windowed, x, t),
        "global SDPA": lambda: global_(x.reshape(b, res * res, dim), t),
    }

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    results: dict[tuple[str, str, str], float] = {}
    for precision in ("fp32", "bf16"):
        for mode in ("forward", "fwd+bwd"):
            for name, fn in impls.items():

                def step(fn=fn, mode=mode, precision=precision) -> None:
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        if mode == "forward":
                            with torch.no_grad():
                                fn()
                        else:
                            fn().float().square().mean().backward()
                    sync()

                results[(precision, mode, name)] = median_seconds(step, repeats=args.repeats)

    table = Table(title=f"TMSA attention, batch {b}, {res}x{res}x{dim}, {heads} heads, window {window} ({dev})")
    for col in ("precision", "pass", "implementation", "ms", "naive(same prec)/this", "naive(fp32)/this"):
        table.add_column(col)
    for (precision, mode, name), sec in results.items():
        same = results[(precision, mode, "naive windowed")]
        fp32_naive = results[("fp32", mode, "naive windowed")]
        table.add_row(precision, mode, name, f"{sec * 1e3:.1f}", f"{same / sec:.2f}x", f"{fp32_naive / sec:.2f}x")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
