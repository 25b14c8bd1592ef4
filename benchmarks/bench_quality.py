"""Quality of the bundled digits checkpoint: conditional accuracy and FID against the real digits.

1. A scikit-learn SVM is trained on half of the real 16x16 digits and tested on the other half (held-out
   accuracy); it then labels generated samples, which should carry their conditioning class.
2. FID (TF-FID Inception features of images upsampled to 299x299) of the samples against real half A, beside
   the real-vs-real FID of half B against half A at the same sample count (the floor for this data size).

Protocol: EMA weights, Heun 18 steps (35 NFE), fp32, no guidance (scale 1), seeds 0..n-1, class i % 10.
Run: python benchmarks/bench_quality.py [--ckpt PATH] [--n 898] [--steps 18] [--cfg 1.0]

``--sweep`` runs the same protocol for every (sampler, schedule) of ``SWEEP`` at 5, 8, 10, 15 and 35 NFE
(each sampler takes the most steps whose NFE fits) on n = 200 samples by default, the size that keeps the
whole sweep near 13 minutes on 2 CPU cores (Inception dominates), and writes a table (.md), the numbers
(.json) and a plot (.png, NFE on x, FID on y, one line per sampler) to ``benchmarks/results/``. The
"optimized" schedule is fitted once per step count by ``optimized_sigmas`` on 32 seeds outside 0..n-1.
Run: python benchmarks/bench_quality.py --sweep [--n 200]
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from diffit.checkpoint import BUNDLED_CHECKPOINT, load_weights
from diffit.data import digits_urls, load_images
from diffit.diffusion import SAMPLERS, final_for, optimized_sigmas, sample_heun, schedule_sigmas, steps_for_nfe
from diffit.evaluation import feature_statistics, frechet_distance, load_inception
from diffit.generate import Guidance, default_sigmas, guided_denoiser, sample, to_uint8

SWEEP_NFES = (5, 8, 10, 15, 35)
# (label, sampler, schedule): the baselines on EDM's Karras schedule, ours on the schedules they do best on
# in benchmarks/bench_samplers.py.
SWEEP = (
    ("heun / karras", "heun", "karras"),
    ("dpm++(2m) / karras", "dpmpp-2m", "karras"),
    ("dpm++(3m) / log-snr", "dpmpp-3m", "log-snr"),
    ("unipc / vp-time", "unipc", "vp-time"),
    ("ipndm / vp-time", "ipndm", "vp-time"),
    ("ipndm / optimized", "ipndm", "optimized"),
)
FIT_SEEDS = range(1_000_000, 1_000_032)  # starting points of the fitted schedule, disjoint from 0..n-1


def features(inception: torch.nn.Module, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Inception pool features of uint8 (N, C, H, W) images."""
    with torch.no_grad():
        return torch.cat([inception(images[i : i + batch]) for i in range(0, len(images), batch)])


def generate_digits(model: torch.nn.Module, sampler: str, sigmas: torch.Tensor, n: int, batch: int, cfg: float,
                    objective: Any = None):  # fmt: skip
    """uint8 (n, 1, 16, 16) samples for seeds 0..n-1, class i % 10, and the NFE per image actually spent
    (``objective``: the model's, default :func:`~diffit.objectives.default_objective`)."""
    cls = torch.arange(n) % model.num_classes
    generated, nfe = [], [0]
    for i in range(0, n, batch):
        x = sample(model, sampler=SAMPLERS[sampler], sigmas=sigmas, seeds=list(range(i, min(i + batch, n))),
                   labels=cls[i : i + batch], guidance=Guidance(scale=cfg), objective=objective,
                   callback=lambda s: nfe.__setitem__(0, s["nfe"]))  # fmt: skip
        generated.append(to_uint8(x).permute(0, 3, 1, 2))
    return torch.cat(generated), nfe[0]


def fitted_sigmas(model: torch.nn.Module, steps: int, cfg: float) -> torch.Tensor:
    labels = torch.tensor(list(FIT_SEEDS)) % model.num_classes
    denoiser = guided_denoiser(model, labels, Guidance(scale=cfg))
    g = torch.Generator().manual_seed(FIT_SEEDS[0])
    x = torch.randn(len(FIT_SEEDS), model.in_channels, model.resolution, model.resolution, generator=g) * 80.0
    return optimized_sigmas(denoiser, x, steps, 0.002, 80.0)


def plot_png(rows: list[dict], path: Path, title: str) -> None:
    """NFE on x, FID on y (log), one line per sampler; drawn with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 900, 560, 70, 230, 40, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    fids = [r["fid"] for r in rows]
    lo, hi = np.log(min(fids) * 0.9), np.log(max(fids) * 1.1)
    x_of = lambda nfe: left + (nfe - 4) / (36 - 4) * (w - left - right)  # noqa: E731
    y_of = lambda fid: top + (hi - np.log(fid)) / (hi - lo) * (h - top - bottom)  # noqa: E731
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for nfe in SWEEP_NFES:
        draw.line([x_of(nfe), h - bottom, x_of(nfe), h - bottom + 5], fill="black")
        draw.text((x_of(nfe) - 6, h - bottom + 8), str(nfe), fill="black")
    for tick in (5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300):
        if lo <= np.log(tick) <= hi:
            draw.line([left - 5, y_of(tick), left, y_of(tick)], fill="black")
            draw.text((left - 30, y_of(tick) - 6), str(tick), fill="black")
    draw.text((left + 200, h - 22), "NFE (network evaluations per image)", fill="black")
    draw.text((8, top - 25), "FID (log scale)", fill="black")
    draw.text((left + 150, 8), title, fill="black")
    colours = ["#000000", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728"]
    for k, (label, _, _) in enumerate(SWEEP):
        pts = [(x_of(r["nfe"]), y_of(r["fid"])) for r in rows if r["label"] == label]
        draw.line(pts, fill=colours[k % len(colours)], width=3)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[k % len(colours)])
        draw.line([w - right + 15, top + 20 * k + 7, w - right + 40, top + 20 * k + 7], fill=colours[k], width=3)
        draw.text((w - right + 45, top + 20 * k), label, fill="black")
    img.save(path)


def sweep(args: argparse.Namespace, model: torch.nn.Module, clf: SVC, images: torch.Tensor, idx_a, idx_b) -> None:
    inception = load_inception()
    real_a = feature_statistics(features(inception, images[idx_a]))
    real_b = feature_statistics(features(inception, images[idx_b[: args.n]]))
    floor = frechet_distance(real_b.mu, real_b.sigma, real_a.mu, real_a.sigma)
    rows = []
    start = time.perf_counter()
    for label, sampler, schedule in SWEEP:
        for budget in SWEEP_NFES:
            steps = steps_for_nfe(sampler, budget, guidance_scale=args.cfg)
            if schedule == "optimized":
                sigmas = fitted_sigmas(model, steps, args.cfg)
            else:
                sigmas = schedule_sigmas(schedule, steps, 0.002, 80.0, final=final_for(sampler))
            fake, nfe = generate_digits(model, sampler, sigmas, args.n, args.batch_size, args.cfg)
            cls = torch.arange(args.n) % model.num_classes
            accuracy = float((clf.predict(fake.reshape(len(fake), -1).float().numpy() / 255.0) == cls.numpy()).mean())
            stats = feature_statistics(features(inception, fake))
            fid = frechet_distance(stats.mu, stats.sigma, real_a.mu, real_a.sigma)
            rows.append({"label": label, "sampler": sampler, "schedule": schedule, "budget": budget, "steps": steps,
                         "nfe": nfe, "fid": fid, "accuracy": accuracy})  # fmt: skip
            print(f"{label:<22} NFE {nfe:>2} ({steps} steps): FID {fid:6.2f}  accuracy {accuracy:.3f}", flush=True)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "cfg": args.cfg, "real_real_fid": floor, "seconds": seconds, "torch": torch.__version__}
    (out / "quality_sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    heun35 = next(r["fid"] for r in rows if r["sampler"] == "heun" and r["budget"] == 35)
    lines = [
        f"FID vs real half A ({len(idx_a)}) of n = {args.n} samples (seeds 0..{args.n - 1}, class i % 10, cfg "
        f"{args.cfg}); real-vs-real FID at the same n: {floor:.2f}. Cell: FID / conditional accuracy "
        f"(NFE actually spent). Ratio: FID at 10 NFE / Heun's at 35 NFE ({heun35:.2f}). Sweep: {seconds / 60:.1f} min.",
        "",
        "| sampler / schedule | " + " | ".join(f"NFE {b}" for b in SWEEP_NFES) + " | 10 NFE vs Heun 35 |",
        "|---|" + "---|" * (len(SWEEP_NFES) + 1),
    ]
    for label, _, _ in SWEEP:
        cells = [r for r in rows if r["label"] == label]
        fid10 = next(r["fid"] for r in cells if r["budget"] == 10)
        lines.append(f"| {label} | " + " | ".join(f"{r['fid']:.2f} / {r['accuracy']:.3f} ({r['nfe']})" for r in cells)
                     + f" | {fid10 / heun35:.2f}x |")  # fmt: skip
    (out / "quality_sweep.md").write_text("\n".join(lines) + "\n")
    plot_png(rows, out / "quality_sweep.png", f"bundled digits model: FID vs NFE (n = {args.n})")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default=str(BUNDLED_CHECKPOINT))
    parser.add_argument("--n", type=int, default=None, help="generated samples (default: 898, the size of "
                        "real half A; 200 with --sweep)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="every sampler of SWEEP at 5, 8, 10, 15, 35 NFE")
    parser.add_argument("--out", default="benchmarks/results", help="where --sweep writes its table and plot")
    args = parser.parse_args()
    args.n = args.n or (200 if args.sweep else 898)
    torch.manual_seed(0)

    images, labels = load_images(digits_urls())  # uint8 (1797, 1, 16, 16)
    idx_a, idx_b = train_test_split(np.arange(len(images)), test_size=0.5, stratify=labels.numpy(), random_state=0)
    flat = images.reshape(len(images), -1).float().numpy() / 255.0
    clf = SVC(C=10.0, gamma="scale").fit(flat[idx_a], labels[idx_a].numpy())
    held_out = float((clf.predict(flat[idx_b]) == labels[idx_b].numpy()).mean())

    model, _ = load_weights(args.ckpt)
    if args.sweep:
        sweep(args, model, clf, images, idx_a, idx_b)
        return
    start = time.perf_counter()
    cls = torch.arange(args.n) % model.num_classes
    generated = []
    for i in range(0, args.n, args.batch_size):
        x = sample(model, sampler=sample_heun, sigmas=default_sigmas(model, args.steps),
                   seeds=list(range(i, min(i + args.batch_size, args.n))), labels=cls[i : i + args.batch_size],
                   guidance=Guidance(scale=args.cfg))  # fmt: skip
        generated.append(to_uint8(x).permute(0, 3, 1, 2))  # uint8 (b, 1, 16, 16)
    fake = torch.cat(generated)
    sample_seconds = time.perf_counter() - start
    accuracy = float((clf.predict(fake.reshape(len(fake), -1).float().numpy() / 255.0) == cls.numpy()).mean())

    inception = load_inception()
    real_a = feature_statistics(features(inception, images[idx_a]))
    real_b = feature_statistics(features(inception, images[idx_b]))
    fake_s = feature_statistics(features(inception, fake))
    fid_fake = frechet_distance(fake_s.mu, fake_s.sigma, real_a.mu, real_a.sigma)
    fid_real = frechet_distance(real_b.mu, real_b.sigma, real_a.mu, real_a.sigma)

    table = Table(
        title=f"bundled digits checkpoint: Heun {args.steps} steps ({2 * args.steps - 1} NFE), cfg {args.cfg}"
    )
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("classifier held-out accuracy (real half B)", f"{held_out:.4f}")
    table.add_row(f"conditional accuracy of {args.n} samples", f"{accuracy:.4f}")
    table.add_row(f"FID samples ({args.n}) vs real A ({len(idx_a)})", f"{fid_fake:.2f}")
    table.add_row(f"FID real B ({len(idx_b)}) vs real A ({len(idx_a)})", f"{fid_real:.2f}")
    table.add_row("sampling wall time (s)", f"{sample_seconds:.1f}")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
