"""One command that proves diffit correct and fast on a CUDA GPU (issue 13), in under 8 minutes on an H100.

Parts (each in its own subprocess with a time budget, so a hang or a crashed CUDA context costs only its part):
1. correctness: CUDA fp32 (TF32 off) against CPU fp32, forward and every gradient (relative error < 1e-4), of
   diffit_tiny, diffit_cifar10 and latent_diffit_s_2; bf16 autocast against fp32 on the device.
2. attention: which SDPA kernel TMSA runs (forward / backward, windowed / global), the cost of TMSA's SDPA and
   flex cores against an unbiased flash call of the same shape, and what the "auto" backend picks.
3. train step: latent_diffit_xl_2 at 256 px (32x32x4 latents), bf16, the largest batch that fits (an OOM is
   reported and the next smaller batch tried): images/s, peak memory, MFU against the card's dense bf16
   peak; eager, then ``torch.compile`` at that batch, then its blocks compiled (``train(compile="blocks")``).
4. sampling: XL/2 with guidance at batch 64 (a few DDPM steps timed, extrapolated to 250), and
   diffit_cifar10 Heun-18 images/s.
5. train CLI: ``diffit train`` on the digits with ``--precision bf16 --compile``, and through torchrun with
   world size 1, each resumed from its final checkpoint.
6. teardown: processes that exit right after diffit's collectives (and, for comparison, torch's
   ``all_gather_object``) while DDP holds the process group; how many exit non-zero.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``. ``--device cpu --quick`` runs the same code on tiny
shapes (compiling with the eager backend: Dynamo's tracing, not inductor's code generation) so the script
cannot rot where no GPU is around; the test suite runs it.
Run: python benchmarks/gpu_check.py [--device cuda] [--quick] [--out runs/gpu-check]   (or: make gpu-check)
"""

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import gpu_check_parts as parts
except ImportError as missing:  # a GPU machine's own Python often lacks some of diffit's dependencies
    print(f"error: {missing}: this Python lacks a dependency of diffit; install it, or pip install --target DIR and "
          "set PYTHONPATH=DIR (make gpu-check keeps it)", file=sys.stderr)  # fmt: skip
    sys.exit(2)

PART_NAMES = [
    "correctness", "attention", "train_step_eager", "train_step_compiled", "train_step_compiled_blocks", "sampling",
    "train_cli", "teardown",
]  # fmt: skip
# Seconds per part on a GPU (caps, not expectations); the whole run also stops at --budget-s.
GPU_BUDGETS = {"correctness": 45, "attention": 150, "train_step_eager": 75, "train_step_compiled": 240,
               "train_step_compiled_blocks": 120, "sampling": 50, "train_cli": 180, "teardown": 60}  # fmt: skip
QUICK_BUDGETS = {name: 150 if name == "train_cli" else 90 for name in PART_NAMES}
RESERVE_S = 5.0  # kept back for writing the record


def environment(device: str) -> dict[str, Any]:
    """Card name, torch / CUDA versions and the card's dense bf16 peak (None where unknown)."""
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else (platform.processor() or "cpu")
    return {
        "device": device, "card": name, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
        "bf16_dense_peak_flops": parts.dense_bf16_peak(name) if cuda else None,
    }  # fmt: skip


def run_part(name: str, args: argparse.Namespace, budget: float, extra: dict[str, Any]) -> dict[str, Any]:
    """Run one part in a subprocess (its own session, killed whole at ``budget`` seconds)."""
    result_path = parts.part_result_path(Path(args.out), name)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--part", name, "--device", args.device, "--out", args.out,
           "--part-extra", json.dumps(extra)] + (["--quick"] if args.quick else [])  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=budget)
        status = "ok" if proc.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it started (torchrun's workers)
        log, _ = proc.communicate()
        status = "timeout"
    record: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - start, 1), "budget_s": budget}
    if result_path.is_file():
        record["result"] = json.loads(result_path.read_text())
        if status == "ok" and record["result"].get("failures"):
            record["status"] = "failed"
    if status != "ok":
        record["log_tail"] = (log or "")[-3000:]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: the same code paths in seconds")
    parser.add_argument("--out", default="runs/gpu-check", help="directory for the JSON record and the table")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help="comma-separated subset of the parts")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting parts after this long")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--part-extra", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        sys.exit(2)
    if not args.device.startswith(("cuda", "cpu")):
        print(f"error: --device must be cuda[:i] or cpu, got {args.device!r}", file=sys.stderr)
        sys.exit(2)
    selected = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(selected) - set(PART_NAMES))
    if unknown:
        print(f"error: --parts: unknown {', '.join(unknown)} (known: {', '.join(PART_NAMES)})", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:  # a child: run one part and write its result
        result = parts.PARTS[args.part](device=args.device, quick=args.quick, out=out, **json.loads(args.part_extra))
        parts.save_part_result(out, args.part, result)
        return

    start = time.perf_counter()
    record: dict[str, Any] = {
        "schema": 1, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "environment": environment(args.device), "parts": {},
    }  # fmt: skip
    budgets = QUICK_BUDGETS if args.quick else GPU_BUDGETS
    found_batch: int | None = None  # the compiled step runs at the batch the eager step found
    for name in selected:
        left = args.budget_s - (time.perf_counter() - start) - RESERVE_S
        if left < 10:
            record["parts"][name] = {"status": "skipped", "reason": "out of time budget"}
            continue
        print(f"[gpu-check] {name} (budget {min(budgets[name], left):.0f} s) ...", file=sys.stderr, flush=True)
        extra = {"batch": found_batch} if name.startswith("train_step_compiled") and found_batch else {}
        rec = run_part(name, args, min(budgets[name], left), extra)
        record["parts"][name] = rec
        print(f"[gpu-check] {name}: {rec['status']} in {rec['seconds']} s", file=sys.stderr, flush=True)
        if name == "train_step_eager":
            found_batch = rec.get("result", {}).get("batch")
    record["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1, default=str))
    table = parts.markdown(record)
    (out / "gpu_check.md").write_text(table)
    print(table)
    print(f"[gpu-check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {record['wall_s']} s")
    bad = [n for n, r in record["parts"].items() if r["status"] != "ok"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:  # part 5's launcher: `gpu_check.py --cli BACKEND -- <diffit arguments>`
        parts.run_cli(sys.argv[2], sys.argv[4:])
    else:
        main()
