"""Compile time and step time of ``train(compile=...)``'s modes: eager, the whole model (``compile=True``) and its
repeated blocks (``compile="blocks"``, regional compilation), for latent DiffiTs of growing depth and the U-Net.

    python benchmarks/bench_compile.py [--cases s2-4,s2-12,tiny] [--device cpu]

Cases: ``s2-D`` is the latent S/2 (width 384, 6 heads) with D blocks on 16x16x4 latents; ``tiny``, ``cifar10`` and
``ffhq64`` are the image presets at 16, 32 and 64 px. Each mode runs in its own process with an empty inductor
cache, so every first step pays the full compile. A step is forward and backward at batch 8 in fp32; the first
step's time is mostly compilation, the steady time is the mean of 5 steps after 2 more. Ratios are against the
whole-model compile of the same case, measured in the same run.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, tempfile, time
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
import torch
from diffit.nn.latent import latent_diffit_s_2
from diffit.runs import IMAGE_PRESETS
from diffit.train import compiled_blocks
case, mode, device = sys.argv[1:4]
torch.manual_seed(0)
if case.startswith("s2-"):
    model, shape, t = latent_diffit_s_2(input_size=16, num_classes=10, depth=int(case[3:])), (4, 16), 999.0
else:
    res = {"tiny": 16, "cifar10": 32, "ffhq64": 64}[case]
    model, shape, t = IMAGE_PRESETS[case](resolution=res, in_channels=3, num_classes=10), (3, res), 1.0
model = model.to(device)
net = torch.compile(model) if mode == "model" else model
regional = compiled_blocks(model)  # kept: a dropped context manager's generator is closed, undoing it
if mode == "blocks":
    regional.__enter__()
x = torch.randn(8, shape[0], shape[1], shape[1], device=device)
noise, y = torch.rand(8, device=device) * t, torch.randint(0, 10, (8,), device=device)
def step():
    net(x, noise, y).square().mean().backward()
    if device != "cpu":
        torch.cuda.synchronize()
start = time.perf_counter(); step(); first = time.perf_counter() - start
for _ in range(2): step()
start = time.perf_counter()
for _ in range(5): step()
print(json.dumps({"first": first, "steady": (time.perf_counter() - start) / 5}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="s2-4,s2-12,tiny")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{'case':>8} | {'mode':>6} | {'first step s':>12} | {'vs model':>8} | {'steady ms':>9} | {'vs model':>8}")
    for case in args.cases.split(","):
        got = {}
        for mode in ("eager", "model", "blocks"):
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, case, mode, args.device], capture_output=True, text=True
            )
            if proc.returncode != 0:
                sys.exit(f"{case} {mode} failed: {proc.stderr[-2000:]}")
            got[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        for mode, r in got.items():
            first, steady = r["first"] / got["model"]["first"], got["model"]["steady"] / r["steady"]
            print(f"{case:>8} | {mode:>6} | {r['first']:>12.1f} | {first:>7.2f}x | {1000 * r['steady']:>9.0f} | "
                  f"{steady:>7.2f}x")  # fmt: skip
    print("first step: time / the model's (lower is better); steady: the model's time / this one's (higher is faster)")


if __name__ == "__main__":
    main()
