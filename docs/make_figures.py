"""Generate the pictures of the README and the guides into docs/figures/ (committed; `make figures`).

    python docs/make_figures.py                 # all of them (a few minutes on a 2-core CPU)
    python docs/make_figures.py --only grid architecture samplers

- grid: the demo's sample grid from the bundled checkpoint (what `make demo` writes), seconds.
- architecture: the image-space and latent DiffiT drawn from the presets' real configs (`model.config`,
  `ImageDiffiT.stages()`, parameter counts on the meta device), seconds.
- samplers: sampling error against network evaluations (NFE) on the 16-D Gaussian mixture with an exact
  denoiser (diffit.diffusion.GaussianMixture), seconds. The FID-against-NFE sweep of the digits model is
  `python benchmarks/bench_quality.py --sweep` (benchmarks/results/quality_sweep.png).
- sweep: copies that sweep's plot to docs/figures/quality_sweep.png (the site cannot link outside docs/).
- training: loss against steps of a short digits run (the bundled checkpoint's own 6000-step run kept no
  log), plus FID of a few hundred EMA samples at a few checkpoints; a few minutes.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures"


def figure_grid(out: Path) -> None:
    """The bundled checkpoint's 10 x 10 grid: Heun, 18 steps (35 NFE), fp32, seeds 0..99, class = column
    (what `diffit sample --class 0-9` draws)."""
    from diffit.checkpoint import BUNDLED_CHECKPOINT, load_weights
    from diffit.diffusion import sample_heun
    from diffit.generate import default_sigmas, make_grid, sample, save_png, to_uint8

    model, _ = load_weights(BUNDLED_CHECKPOINT)
    labels = torch.arange(10).repeat(10)
    x = sample(model, sampler=sample_heun, sigmas=default_sigmas(model, 18), seeds=range(100), labels=labels)
    save_png(make_grid(to_uint8(x), nrow=10), out / "demo_grid.png", upscale=4)


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 8) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="0.3", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def figure_architecture(out: Path) -> None:
    """Two panels: the U-shaped image-space preset (cifar10) and the latent XL/2, annotated from their configs."""
    from diffit.nn import count_params, diffit_cifar10, latent_diffit_xl_2

    with torch.device("meta"):
        image, latent = diffit_cifar10(), latent_diffit_xl_2()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.35, 1]})

    # Image space: encoder stages go down the left, the bottleneck sits at the bottom, the decoder climbs right.
    cfg, stages = image.config, image.stages()
    n = len(stages)
    ax1.set_title(
        f"ImageDiffiT: diffit_cifar10(), {count_params(image) / 1e6:.1f}M parameters\n"
        f"input {cfg['resolution']}x{cfg['resolution']}x{cfg['in_channels']}, time token {cfg['time_dim']}-d",
        fontsize=10,
    )
    _box(ax1, -0.3, n + 0.25, 3.5, 0.5, "x (noisy image) -> Conv3x3 tokenizer", "#dde8f5")
    _box(ax1, 4.8, n + 0.25, 3.5, 0.5, "GN -> SiLU -> Conv3x3 (zero-init) -> out", "#dde8f5")
    for s, row in enumerate(stages):
        y = n - 1 - s
        per_side = cfg["blocks_per_stage"][s]
        text = (
            f"stage {s}: {row['resolution']}, {row['channels']} ch\n"
            f"{per_side} ResBlock(s), TMSA in {row['window']} windows ({row['windows']} per map)"
        )
        if s == n - 1:
            _box(ax1, 2.25, y + 0.1, 3.5, 0.75, "bottleneck " + text, "#f6e3c8", 7)
        else:
            _box(ax1, -0.3, y + 0.1, 3.5, 0.75, "encoder " + text, "#e2f0d9", 7)
            _box(ax1, 4.8, y + 0.1, 3.5, 0.75, "decoder " + text, "#e2f0d9", 7)
            ax1.annotate(
                "", xy=(4.9, y + 0.47), xytext=(3.1, y + 0.47), arrowprops={"arrowstyle": "->", "color": "0.4"}
            )
            ax1.text(4.0, y + 0.55, "concat + 1x1 conv", ha="center", fontsize=7, color="0.3")
            ax1.text(-0.2, y + 0.02, "stride-2 Conv3x3 down", fontsize=6.5, color="0.4")
            ax1.text(5.0, y + 0.02, "nearest x2 + Conv3x3 up", fontsize=6.5, color="0.4")
    ax1.text(
        4.0,
        -0.45,
        "ResBlock: x + TMSABlock(Conv3x3(SiLU(GN(x))))  (Eq. 9-10); time token = TimestepEmbedding(c_noise)"
        " [+ LabelEmbedding(y)]",
        ha="center",
        fontsize=7.5,
    )
    ax1.set_xlim(-0.4, 8.4)
    ax1.set_ylim(-0.7, n + 0.9)
    ax1.axis("off")

    # Latent: a ViT of global-attention TMSA blocks over 2x2 patches of the 32x32x4 VAE latent.
    lc = latent.config
    tokens = (lc["input_size"] // lc["patch_size"]) ** 2
    ax2.set_title(
        f"LatentDiffiT: latent_diffit_xl_2(), {count_params(latent) / 1e6:.1f}M parameters\n"
        f"input {lc['input_size']}x{lc['input_size']}x{lc['in_channels']} SD-VAE latent (256 px image)",
        fontsize=10,
    )
    rows = [
        ("z (noisy latent) -> patch embed", f"{lc['patch_size']}x{lc['patch_size']} patches -> {tokens} tokens"),
        ("+ fixed 2-D sin-cos position codes", f"{lc['hidden_size']}-d tokens"),
        (
            f"{lc['depth']} x TMSABlock (global attention)",
            f"{lc['num_heads']} heads, window = {tokens} tokens, relative position bias",
        ),
        ("LN -> SiLU -> Linear (zero-init)", "per token"),
        ("unpatchify", f"eps and variance: {2 * lc['in_channels']} channels" if lc["learn_sigma"] else "eps"),
    ]
    for i, (a, b) in enumerate(rows):
        y = len(rows) - 1 - i
        _box(ax2, 0.3, y + 0.15, 4.4, 0.7, f"{a}\n{b}", "#f6e3c8" if "TMSA" in a else "#dde8f5")
        if i:
            ax2.annotate("", xy=(2.5, y + 0.85), xytext=(2.5, y + 1.15), arrowprops={"arrowstyle": "->"})
    ax2.text(
        2.5,
        -0.4,
        f"time token c = TimestepEmbedding(t) + LabelEmbedding(y), {lc['num_classes']} classes + null;\n"
        "q, k, v are linear in both the spatial tokens and c (TMSA, Eq. 3-6)",
        ha="center",
        fontsize=7.5,
    )
    ax2.set_xlim(0, 5)
    ax2.set_ylim(-0.8, len(rows) + 0.2)
    ax2.axis("off")
    fig.tight_layout()
    fig.savefig(out / "architecture.png", dpi=130)
    plt.close(fig)


def figure_samplers(out: Path) -> None:
    """Error against NFE of the deterministic samplers on a 16-D Gaussian mixture with an exact denoiser.

    The mixture and the reference (DOP853 on the probability-flow ODE) are those of the main branch's
    benchmarks/bench_samplers.py: 10 components, 512 paths from sigma 80 to 0.002, then D(x, 0.002).
    """
    import math

    from scipy.integrate import solve_ivp

    from diffit.diffusion import GaussianMixture, karras_sigmas, sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun

    f64, sigma_min, sigma_max = torch.float64, 0.002, 80.0
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 16, generator=g, dtype=f64) * 0.5
    stds = 0.05 + 0.3 * torch.rand(10, generator=g, dtype=f64)
    mixture = GaussianMixture(means, stds, 0.5 + torch.rand(10, generator=g, dtype=f64))
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1), dtype=f64) * sigma_max

    def rhs(log_sigma: float, flat):  # dx/dln(sigma) = x - D(x, sigma)
        xs = torch.from_numpy(flat).view(x.shape)
        return (xs - mixture(xs, torch.full(x.shape[:1], math.exp(log_sigma), dtype=f64))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), x.reshape(-1).numpy(), method="DOP853",
                    rtol=1e-10, atol=1e-10)  # fmt: skip
    reference = mixture(torch.from_numpy(sol.y[:, -1]).view(x.shape), torch.full(x.shape[:1], sigma_min, dtype=f64))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sampler in [
        ("Euler", sample_euler),
        ("DDIM (eta 0)", sample_ddim),
        ("Heun (EDM Alg. 1)", sample_heun),
        ("DPM-Solver++(2M)", sample_dpmpp_2m),
    ]:
        points = []
        for steps in (3, 4, 5, 6, 8, 10, 14, 20, 30, 40):
            nfe: list[int] = []
            sigmas = karras_sigmas(steps, sigma_min, sigma_max, 7.0, dtype=f64)
            y = sampler(mixture, x, sigmas, callback=lambda s, nfe=nfe: nfe.append(s["nfe"]))
            points.append((nfe[-1], (y - reference).norm(dim=1).mean().item()))
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=name, ls="--" if "DDIM" in name else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([3, 5, 10, 20, 40, 79])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("mean ||x - x_ode|| (exact ODE solution)")
    ax.set_title("Sampler error on a 16-D Gaussian mixture (exact denoiser)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samplers_nfe.png", dpi=130)
    plt.close(fig)


def figure_training(
    out: Path, *, steps: int = 240, batch_size: int = 32, fid_every: int = 80, n_fid: int = 100, n_real: int = 300
) -> None:
    """Loss against steps of a short digits run and FID of ``n_fid`` EMA samples at every ``fid_every`` steps."""
    from diffit.data import digits_urls, load_images, memory_batches
    from diffit.diffusion import sample_heun
    from diffit.distributed import init_distributed
    from diffit.evaluation import feature_statistics, frechet_distance, load_inception
    from diffit.generate import default_sigmas, sample, to_uint8
    from diffit.nn import diffit_tiny
    from diffit.objectives import EDMObjective
    from diffit.train import train

    images, labels = load_images(digits_urls())
    inception = load_inception()

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([inception(x[i : i + 100]) for i in range(0, len(x), 100)])

    real = feature_statistics(
        features(images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n_real]])
    )
    fids: list[tuple[int, float]] = []

    def on_sample(step: int, ema: torch.nn.Module) -> None:
        seeds, classes = range(n_fid), torch.arange(n_fid) % 10
        x = sample(ema, sampler=sample_heun, sigmas=default_sigmas(ema, 18), seeds=seeds, labels=classes)
        fake = feature_statistics(features(to_uint8(x).permute(0, 3, 1, 2).contiguous()))
        fids.append((step, frechet_distance(fake.mu, fake.sigma, real.mu, real.sigma)))

    losses: list[tuple[int, float]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(
            model=diffit_tiny(),
            objective=EDMObjective(),
            data=lambda s: memory_batches(images, labels, batch_size=batch_size, seed=0, start_step=s),
            run_dir=Path(tmp) / "run",
            dist=init_distributed("cpu"),
            steps=steps,
            batch_size=batch_size,
            lr=6e-4,
            warmup=50,
            ema=0.999,
            seed=0,
            ckpt_every=steps,
            log_every=4,
            sample_every=fid_every,
            on_sample=on_sample,
            callback=lambda e: losses.append((e["step"], e["loss"])) if e.get("event") == "log" else None,
        )
    seconds = time.perf_counter() - start
    record = {"steps": steps, "batch_size": batch_size, "n_fid": n_fid, "n_real": n_real, "seconds": round(seconds),
              "loss": losses, "fid": fids}  # fmt: skip
    (out / "training_curve.json").write_text(json.dumps(record) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*losses, strict=True), color="C0", lw=1, label="training loss (EDM, per log step)")
    ax.set_xlabel(f"optimizer step (batch {batch_size})")
    ax.set_ylabel("EDM loss", color="C0")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(*zip(*fids, strict=True), color="C3", marker="o", label=f"FID, {n_fid} EMA samples vs {n_real} real")
    ax2.set_ylabel(f"FID ({n_fid} samples, Heun 35 NFE)", color="C3")
    ax.set_title(
        f"diffit_tiny on the bundled digits: {steps} steps, fp32, {seconds / 60:.1f} min on a shared 2-core CPU",
        fontsize=10,
    )
    fig.legend(loc="upper right", fontsize=8, bbox_to_anchor=(0.88, 0.88))
    fig.tight_layout()
    fig.savefig(out / "training_curve.png", dpi=130)
    plt.close(fig)


def figure_sweep(out: Path) -> None:
    """A copy of the FID-against-NFE sweep that `benchmarks/bench_quality.py --sweep` writes (68 min: not rerun)."""
    import shutil

    shutil.copyfile(
        Path(__file__).resolve().parent.parent / "benchmarks/results/quality_sweep.png", out / "quality_sweep.png"
    )


FIGURES = {
    "grid": figure_grid,
    "architecture": figure_architecture,
    "samplers": figure_samplers,
    "training": figure_training,
    "sweep": figure_sweep,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=list(FIGURES))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in args.only:
        start = time.perf_counter()
        FIGURES[name](args.out)
        print(f"{name}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
