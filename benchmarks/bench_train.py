"""Training-step throughput (images/s) and peak memory: the tiny image preset and latent B/2, fp32 and bf16
autocast, with and without gradient checkpointing, against diffusers' DiT-B/2 step at equal width/depth.

Each configuration runs in its own subprocess so that its peak resident memory (CPU) or peak allocated memory
(CUDA) is its own. A step = forward, MSE loss, backward, AdamW update.
Run: python benchmarks/bench_train.py [--device cuda] [--steps 4] [--batch 8]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

CASES = [  # (label, model, precision, checkpointing)
    ("tiny 16x16x1", "tiny", "fp32", False),
    ("tiny 16x16x1", "tiny", "bf16", False),
    ("tiny 16x16x1", "tiny", "bf16", True),
    ("latent B/2 32x32x4", "b2", "fp32", False),
    ("latent B/2 32x32x4", "b2", "bf16", False),
    ("latent B/2 32x32x4", "b2", "bf16", True),
    ("diffusers DiT-B/2", "dit", "fp32", False),
    ("diffusers DiT-B/2", "dit", "bf16", False),
]


def build(name: str, checkpointing: bool, device: torch.device):  # -> (model, step inputs, forward fn)
    from diffit.nn import diffit_tiny, latent_diffit_b_2

    if name == "tiny":
        model = diffit_tiny().set_grad_checkpointing(checkpointing)
        return model, lambda x, t, y: model(x, t, y), (1, 16, 16), 10
    if name == "b2":
        model = latent_diffit_b_2(input_size=32).set_grad_checkpointing(checkpointing)
        return model, lambda x, t, y: model(x, t, y)[:, :4], (4, 32, 32), 1000
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=12, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
    )  # fmt: skip
    return model, lambda x, t, y: model(x, timestep=t, class_labels=y).sample[:, :4], (4, 32, 32), 1000


def child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model, fwd, shape, classes = build(args.model, args.checkpointing, dev)
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, *shape, device=dev)
    t = torch.rand(args.batch, device=dev) * 999
    y = torch.randint(0, classes, (args.batch,), device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = (fwd(x, t, y).float() - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    print(json.dumps({"seconds": times[len(times) // 2], "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = {}
    for label, model, precision, ckpt in CASES:
        cmd = [sys.executable, __file__, "--child", "--model", model, "--precision", precision, "--device",
               args.device, "--steps", str(args.steps), "--batch", str(args.batch)]  # fmt: skip
        proc = subprocess.run(cmd + (["--checkpointing"] if ckpt else []), capture_output=True, text=True)
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            results[(label, precision, ckpt)] = None
            Console(stderr=True).print(f"skipped {label} {precision}: {reason}")
            continue
        results[(label, precision, ckpt)] = json.loads(proc.stdout.strip().splitlines()[-1])
    table = Table(title=f"training step, batch {args.batch}, median of {args.steps} ({args.device})")
    for col in (
        "model",
        "precision",
        "grad ckpt",
        "images/s",
        "vs fp32 same model",
        "vs diffusers DiT same prec",
        "peak MiB",
    ):
        table.add_column(col)
    for (label, precision, ckpt), r in results.items():
        if r is None:
            continue
        ips = args.batch / r["seconds"]
        fp32 = results.get((label, "fp32", False))
        dit = results.get(("diffusers DiT-B/2", precision, False)) if label.startswith("latent") else None
        table.add_row(
            label, precision, "yes" if ckpt else "no", f"{ips:.1f}",
            f"{fp32['seconds'] / r['seconds']:.2f}x" if fp32 else "-",
            f"{dit['seconds'] / r['seconds']:.2f}x" if dit else "-", f"{r['peak_bytes'] / 2**20:.0f}",
        )  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
