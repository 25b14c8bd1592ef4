"""GELU-tanh (the latent release's) against exact GELU in the tiny preset's training step.

torch's CPU kernel for the tanh approximation is several times slower than the exact (erf) one, and at the tiny
preset's size the MLP's hidden activations are a large share of a step. Both models are built from one seed with
the same weights, and their steps are interleaved (rounds of ``--steps`` steps each), so that whatever else the
machine does falls on both alike. A step = forward, MSE loss, backward, AdamW update; fp32 and bf16 autocast.
Run: python benchmarks/bench_gelu.py [--device cuda] [--batch 128] [--rounds 8] [--steps 4]
"""

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from diffit.nn import diffit_tiny


def step_seconds(device: torch.device, precision: str, batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per training step of ``diffit_tiny(gelu=...)`` for "tanh" and "none", interleaved."""
    g = torch.Generator().manual_seed(0)
    x, sigma, y = torch.randn(batch, 1, 16, 16, generator=g), torch.randn(batch, generator=g), torch.arange(batch) % 10
    x, sigma, y = x.to(device), sigma.to(device), y.to(device)
    runs = {}
    for gelu in ("tanh", "none"):
        torch.manual_seed(0)
        model = diffit_tiny(gelu=gelu).to(device)
        runs[gelu] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {gelu: [] for gelu in runs}
    for r in range(rounds + 1):  # round 0 warms up
        for gelu, (model, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                    out = model(x, sigma, y)
                out.float().square().mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[gelu].append((time.perf_counter() - start) / steps)
    return {gelu: statistics.median(t) for gelu, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    table = Table(title=f"diffit_tiny training step, batch {args.batch}, {device.type}, {threads} threads")
    for column in ("precision", "GELU-tanh", "exact GELU", "tanh / exact"):
        table.add_column(column, justify="right")
    for precision in ("fp32", "bf16"):
        t = step_seconds(device, precision, args.batch, args.rounds, args.steps)
        tanh, exact = t["tanh"], t["none"]
        table.add_row(precision, f"{tanh * 1e3:.1f} ms", f"{exact * 1e3:.1f} ms", f"{tanh / exact:.3f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
