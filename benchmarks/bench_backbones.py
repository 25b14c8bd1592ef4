"""Latent DiffiT-B/2 forward (32x32x4 latents, batch 4) in fp32 and bf16 autocast, against a naive fp32
reference of the same math (explicit softmax attention) and diffusers' DiT of equal width/depth/patch.

Also prints the achieved GFLOP/s (FlopCounterMode, multiply-add = 2) against the machine's measured matmul
GFLOP/s in each precision, and the image-space presets' forward time.
Run: python benchmarks/bench_backbones.py [--device cuda] [--repeats 3] [--threads 2]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from rich.console import Console
from rich.table import Table

from diffit.nn import LatentDiffiT, count_flops, diffit_tiny, latent_diffit_b_2

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402


def naive_latent(model: LatentDiffiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same forward with explicit (B, heads, T, T) logits and softmax, all in fp32 and without SDPA."""
    tokens = rearrange(model.x_embedder.proj(x), "b d h w -> b (h w) d") + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks:
        attn = block.attn
        h = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6)
        qkv = attn.qkv(h) + attn.qkv_temb(c)[:, None]
        q, k, v = rearrange(qkv, "b n (three h e) -> three b h n e", three=3, h=attn.num_heads)
        logits = (q * attn.head_dim**-0.5) @ k.transpose(-2, -1) + attn.relative_position_bias()
        tokens = tokens + attn.proj(rearrange(logits.softmax(-1) @ v, "b h n e -> b n (h e)"))
        tokens = tokens + block.mlp(F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6))
    out = model.final_layer.linear(F.silu(F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6)))
    return model.unpatchify(out)


def matmul_gflops(dev: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)

    def run() -> None:
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 / median_seconds(run, repeats=3, warmup=1) / 1e9


def interleaved_medians(steps: dict, *, repeats: int) -> dict:
    """Median seconds of each step, timed round-robin (one call of each per round, after one warm-up round)
    so that a load change on a shared machine hits every implementation alike."""
    times: dict = {key: [] for key in steps}
    for round_ in range(repeats + 1):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    b = 4
    model = latent_diffit_b_2().to(dev).eval()
    with torch.no_grad():  # non-zero output layer, so every implementation does real work
        model.final_layer.linear.weight.normal_(0, 0.02)
    x = torch.randn(b, 4, 32, 32, device=dev)
    t = torch.rand(b, device=dev) * 999
    y = torch.randint(0, 1000, (b,), device=dev)
    flops = count_flops(model, x, t, y)

    impls = {"DiffiT-B/2 (SDPA)": lambda: model(x, t, y), "naive reference": lambda: naive_latent(model, x, t, y)}
    try:
        from diffusers import DiTTransformer2DModel

        dit = DiTTransformer2DModel(
            num_attention_heads=12, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
            sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        ).to(dev).eval()  # fmt: skip
        impls["diffusers DiT-B/2"] = lambda: dit(x, timestep=t, class_labels=y).sample
    except ImportError:
        pass

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    steps = {}
    for precision in ("fp32", "bf16"):
        for name, fn in impls.items():

            def step(fn=fn, precision=precision) -> None:
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    fn()
                sync()

            steps[(precision, name)] = step
    with torch.no_grad():
        torch.testing.assert_close(naive_latent(model, x, t, y), model(x, t, y), atol=1e-4, rtol=1e-4)
    results = interleaved_medians(steps, repeats=args.repeats)
    peak = {"fp32": matmul_gflops(dev, torch.float32), "bf16": matmul_gflops(dev, torch.bfloat16)}

    table = Table(
        title=f"Latent B/2 forward, batch {b}, 32x32x4, {flops / 1e9:.0f} GFLOPs ({dev}, "
        f"{torch.get_num_threads()} threads); matmul peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s"
    )
    for col in ("precision", "implementation", "ms", "vs naive fp32", "vs diffusers (same prec)",
                "GFLOP/s", "of matmul peak"):  # fmt: skip
        table.add_column(col)
    for (precision, name), sec in results.items():
        dit_sec = results.get((precision, "diffusers DiT-B/2"))
        table.add_row(
            precision, name, f"{sec * 1e3:.0f}", f"{results[('fp32', 'naive reference')] / sec:.2f}x",
            "-" if dit_sec is None else f"{dit_sec / sec:.2f}x", f"{flops / sec / 1e9:.0f}",
            f"{flops / sec / 1e9 / peak[precision]:.0%}",
        )  # fmt: skip
    console = Console(width=120)
    console.print(table)

    tiny = diffit_tiny().to(dev)
    xi, si, yi = torch.randn(64, 1, 16, 16, device=dev), torch.randn(64, device=dev), torch.randint(0, 10, (64,))
    yi = yi.to(dev)

    def train_step() -> None:
        tiny(xi, si, yi).square().mean().backward()
        sync()

    sec = median_seconds(train_step, repeats=args.repeats, warmup=1)
    console.print(
        f"diffit_tiny forward+backward, batch 64 at 16x16: {sec * 1e3:.0f} ms "
        f"({3 * count_flops(tiny, xi, si, yi) / sec / 1e9:.0f} GFLOP/s, counting backward as 2x forward)"
    )


if __name__ == "__main__":
    main()
