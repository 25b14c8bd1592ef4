"""Deterministic samplers: RMS error vs NFE against the exact probability-flow ODE on Gaussian mixtures.

The reference is the ODE solution at sigma = 0 from the same start (DOP853 at tolerance 1e-10 on the exact
mixture denoiser: in ln(sigma) from 80 down to 0.002, then in sigma down to 0). RMS error = sqrt(mean over
paths and coordinates of (x - x_ode)^2). Three held-out mixtures vary dimension, mode width and separation
(fixed seeds); the development mixture (R^16, 10 modes) is reported apart.

Peers: k-diffusion's DPM-Solver++(2M) and LMS (order 4), both on Karras sigmas (sigma in [0.002, 80],
rho 7), written here from their published equations (``peer_lms``; our ``sample_dpmpp_2m`` matches
k-diffusion's to rounding). ``--kdiffusion PATH`` also runs k-diffusion's own code from a --no-deps install
(``pip install --no-deps --target PATH k-diffusion``) as a cross-check. Ours: DPM-Solver++(3M), UniPC and
iPNDM on every schedule; "optimized" is fitted per mixture by ``optimized_sigmas`` on 64 *other* starts.

Also: the measured convergence order of each sampler (log2 of the error ratio from 32 to 64 steps, Karras
and log-SNR schedules), the planner's choice (``plan_sampling``) per NFE, and the sampler overhead outside
the network for the bundled digits model: the time of a 10-step run with a free denoiser (returns x), per
step, as a share of one network evaluation of the model at the same batch size.

    .venv/bin/python benchmarks/bench_samplers.py [--kdiffusion /tmp/kdiff] [--paths 512]
"""

import argparse
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from _timing import median_seconds
from scipy.integrate import solve_ivp

from diffit.checkpoint import BUNDLED_CHECKPOINT, load_weights
from diffit.diffusion import (
    GaussianMixture,
    final_for,
    karras_sigmas,
    optimized_sigmas,
    plan_sampling,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_ipndm,
    sample_unipc,
    schedule_sigmas,
)

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
NFES = (5, 6, 8, 10, 15)
F64 = torch.float64


def make_mixture(
    dim: int, components: int, spread: float, std_range: tuple[float, float], seed: int
) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=F64) * spread
    lo, hi = std_range
    stds = lo + (hi - lo) * torch.rand(components, generator=g, dtype=F64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=F64)
    return GaussianMixture(means, stds, weights)


# name -> (dim, components, mean spread, mode std range, seed)
DEV_MIXTURE = {"dev: d16 k10": (16, 10, 0.5, (0.05, 0.35), 0)}
TEST_MIXTURES = {
    "A: d4 k6 wide": (4, 6, 1.0, (0.3, 0.6), 11),
    "B: d32 k20 narrow": (32, 20, 0.4, (0.02, 0.08), 12),
    "C: d64 k8 separated": (64, 8, 2.0, (0.1, 0.3), 13),
}


def ode_reference(gm: GaussianMixture, x: torch.Tensor, *, denoise_at_sigma_min: bool = False) -> torch.Tensor:
    """DOP853 on dx/dln(sigma) = x - D(x, sigma) from sigma_max to sigma_min, then on dx/dsigma = (x - D)/sigma
    from sigma_min to exactly 0 (or, with ``denoise_at_sigma_min``, D(x(sigma_min), sigma_min): the limit of
    samplers whose last step returns D there)."""

    def denoise(flat: np.ndarray, sigma: float) -> torch.Tensor:
        xs = torch.from_numpy(flat).view(x.shape)
        return xs, gm(xs, torch.full(x.shape[:1], sigma, dtype=F64))

    def rhs_log(log_sigma: float, flat: np.ndarray) -> np.ndarray:
        xs, d = denoise(flat, math.exp(log_sigma))
        return (xs - d).reshape(-1).numpy()

    def rhs_lin(sigma: float, flat: np.ndarray) -> np.ndarray:
        if sigma <= 0:
            return np.zeros_like(flat)  # (x - D)/sigma -> 0 as sigma -> 0 for modes of positive width
        xs, d = denoise(flat, sigma)
        return ((xs - d) / sigma).reshape(-1).numpy()

    tol = {"method": "DOP853", "rtol": 1e-10, "atol": 1e-10}
    sol = solve_ivp(rhs_log, (math.log(SIGMA_MAX), math.log(SIGMA_MIN)), x.reshape(-1).numpy(), **tol)
    if denoise_at_sigma_min:
        return denoise(sol.y[:, -1], SIGMA_MIN)[1]
    sol = solve_ivp(rhs_lin, (SIGMA_MIN, 0.0), sol.y[:, -1], **tol)
    return torch.from_numpy(sol.y[:, -1]).view(x.shape)


def lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """Integral over [a, b] of the Lagrange basis polynomial of node j (exact, via numpy polynomials)."""
    poly = np.poly1d([1.0])
    for k, t in enumerate(nodes):
        if k != j:
            poly = poly * np.poly1d([1.0, -t]) / (nodes[j] - t)
    antiderivative = poly.integ()
    return float(antiderivative(b) - antiderivative(a))


@torch.no_grad()
def peer_lms(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    """k-diffusion's sample_lms from its equations: variable-step Adams-Bashforth of order min(i + 1, 4) on
    dx/dsigma = (x - D)/sigma, the coefficients integrating the Lagrange basis over [sigma_i, sigma_(i+1)]
    with nodes sigma_i, sigma_(i-1), ...; the step to 0 is an AB step too. n steps = n NFE."""
    sig = sigmas.tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        denoised = denoiser(x, torch.full(x.shape[:1], sig[i], dtype=x.dtype))
        ds = [(x - denoised) / sig[i], *ds][:order]
        nodes = [sig[i - k] for k in range(len(ds))]
        for k, d in enumerate(ds):
            x = x + lagrange_integral(nodes, k, sig[i], sig[i + 1]) * d
    return x


def load_kdiffusion(path: str) -> dict[str, Callable]:
    """k-diffusion's sampling.py from a --no-deps install, with its unused optional imports stubbed."""
    for missing in ("torchdiffeq", "torchsde"):
        if importlib.util.find_spec(missing) is None:
            stub = types.ModuleType(missing)
            stub.odeint = None  # type: ignore[attr-defined]
            stub.BrownianTree = object  # type: ignore[attr-defined]
            sys.modules[missing] = stub
    package = types.ModuleType("k_diffusion")
    package.__path__ = [f"{path}/k_diffusion"]  # type: ignore[attr-defined]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", f"{path}/k_diffusion/sampling.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]

    def wrap(fn: Callable) -> Callable:
        return lambda model, x, sigmas: fn(model, x, sigmas, disable=True)

    def dpmpp_3m(model: Callable, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        # Its deterministic limit (eta = 0); a zero noise sampler avoids the torchsde Brownian tree.
        zero = lambda *_: torch.zeros_like(x)  # noqa: E731
        return module.sample_dpmpp_3m_sde(model, x, sigmas, eta=0.0, noise_sampler=zero, disable=True)

    return {
        "k-diff dpm++(2m)": wrap(module.sample_dpmpp_2m),
        "k-diff lms": wrap(module.sample_lms),
        "k-diff dpm++(3m)": dpmpp_3m,
    }


OURS: dict[str, Callable] = {"dpmpp-3m": sample_dpmpp_3m, "unipc": sample_unipc, "ipndm": sample_ipndm}
SCHEDULE_NAMES = ("karras", "log-snr", "vp-time", "optimized")


def rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out - ref).pow(2).mean().sqrt().item()


def run_mixture(name: str, spec: tuple, paths: int, kdiff: dict[str, Callable]) -> dict[str, list[float]]:
    dim, components, spread, stds, seed = spec
    gm = make_mixture(dim, components, spread, stds, seed)
    x = torch.randn(paths, dim, generator=torch.Generator().manual_seed(seed + 1000), dtype=F64) * SIGMA_MAX
    fit = torch.randn(64, dim, generator=torch.Generator().manual_seed(seed + 2000), dtype=F64) * SIGMA_MAX
    start = time.perf_counter()
    ref = ode_reference(gm, x)
    ref_s = time.perf_counter() - start
    rows: dict[str, list[float]] = {}
    karras = {n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, RHO, dtype=F64) for n in NFES}
    rows["peer dpm++(2m) karras"] = [rms(sample_dpmpp_2m(gm, x, karras[n]), ref) for n in NFES]
    rows["peer lms karras"] = [rms(peer_lms(gm, x, karras[n]), ref) for n in NFES]
    for peer, fn in kdiff.items():
        rows[f"{peer} karras"] = [rms(fn(gm, x, karras[n]), ref) for n in NFES]
    fitted = {n: optimized_sigmas(gm, fit, n, SIGMA_MIN, SIGMA_MAX) for n in NFES}
    for sched in SCHEDULE_NAMES:
        for solver, fn in OURS.items():
            # The schedule ends as the sampler needs (final_for): iPNDM and UniPC skip sigma_min.
            sigmas = {
                n: fitted[n] if sched == "optimized"
                else schedule_sigmas(sched, n, SIGMA_MIN, SIGMA_MAX, final=final_for(solver), dtype=F64)
                for n in NFES
            }  # fmt: skip
            rows[f"{solver} {sched}"] = [rms(fn(gm, x, sigmas[n]), ref) for n in NFES]
    print(f"\n{name}: {paths} paths, reference in {ref_s:.1f}s")
    return rows


def print_table(rows: dict[str, list[float]]) -> None:
    best_peer = [min(v[i] for k, v in rows.items() if "peer" in k or "k-diff" in k) for i in range(len(NFES))]
    i10 = NFES.index(10)
    header = f"{'sampler schedule':<28}" + "".join(f"{f'NFE {n}':>10}" for n in NFES) + f"{'x peer@10':>11}"
    print(header)
    print("-" * len(header))
    for name, errs in rows.items():
        print(f"{name:<28}" + "".join(f"{e:>10.2e}" for e in errs) + f"{errs[i10] / best_peer[i10]:>10.2f}x")


def convergence_orders(kdiff: dict[str, Callable]) -> None:
    spec = TEST_MIXTURES["A: d4 k6 wide"]
    gm = make_mixture(*spec)
    x = torch.randn(128, spec[0], generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    refs = {"sigma_min": ode_reference(gm, x, denoise_at_sigma_min=True), "zero": ode_reference(gm, x)}
    samplers = {"euler": sample_euler, "heun": sample_heun, "dpmpp-2m": sample_dpmpp_2m, **OURS}
    samplers["unipc(order=2)"] = partial(sample_unipc, order=2)
    if "k-diff dpm++(3m)" in kdiff:
        samplers["k-diff-dpm++(3m)"] = kdiff["k-diff dpm++(3m)"]
    print("\nmeasured convergence order, log2 of the error ratio 32 -> 64 and 64 -> 128 steps (mixture A; reference:")
    print("D(x_ode(sigma_min)) for samplers whose last step returns D there, the ODE at 0 for iPNDM and UniPC)")
    for sched in ("karras", "log-snr"):
        cells = []
        for name, fn in samplers.items():
            ref = refs[final_for(name.split("(")[0])]  # k-diffusion's 3M returns D at sigma_min too
            sigmas = [schedule_sigmas(sched, n, SIGMA_MIN, SIGMA_MAX, dtype=F64) for n in (32, 64, 128)]
            errs = [rms(fn(gm, x, s), ref) for s in sigmas]
            cells.append(f"{name} {math.log2(errs[0] / errs[1]):.2f}/{math.log2(errs[1] / errs[2]):.2f}")
        print(f"  {sched:<8} " + ", ".join(cells))


def sampler_overhead() -> None:
    from diffit.generate import Guidance, guided_denoiser

    model, _ = load_weights(str(BUNDLED_CHECKPOINT))
    samplers = {"euler": sample_euler, "dpm++(2m)": sample_dpmpp_2m, **OURS}
    print("\nsampler overhead outside the network (bundled digits model, fp32, 10 steps), % of one evaluation:")
    for batch in (1, 100):
        denoiser = guided_denoiser(model, torch.arange(batch) % 10, Guidance())
        x = torch.randn(batch, 1, 16, 16) * SIGMA_MAX
        s = torch.full((batch,), 1.0)
        with torch.no_grad():
            net = median_seconds(lambda d=denoiser, x=x, s=s: d(x, s), repeats=20)
        sigmas = schedule_sigmas("vp-time", 10, SIGMA_MIN, SIGMA_MAX)
        cells = []
        for name, fn in samplers.items():
            free = median_seconds(lambda fn=fn, x=x, s=sigmas: fn(lambda y, sig: y, x, s), repeats=20) / 10
            cells.append(f"{name} {100 * free / net:.2f}%")
        print(f"  batch {batch:>3} (one evaluation {1000 * net:.1f} ms): " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kdiffusion", default=None, help="folder holding a --no-deps k-diffusion install")
    parser.add_argument("--paths", type=int, default=512)
    parser.add_argument("--skip-orders", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kdiff = load_kdiffusion(args.kdiffusion) if args.kdiffusion else {}
    print("RMS error against the exact ODE solution; 'x peer@10' = error / best peer's error at 10 NFE")
    ratios: dict[str, list[float]] = {}
    for name, spec in {**TEST_MIXTURES, **DEV_MIXTURE}.items():
        rows = run_mixture(name, spec, args.paths, kdiff)
        print_table(rows)
        if name in TEST_MIXTURES:
            i10 = NFES.index(10)
            peer = min(v[i10] for k, v in rows.items() if "peer" in k or "k-diff" in k)
            for k, v in rows.items():
                ratios.setdefault(k, []).append(v[i10] / peer)
    print("\nat 10 NFE, error / best peer's, geometric mean over the three held-out mixtures (worst in brackets):")
    for k, v in sorted(ratios.items(), key=lambda kv: math.prod(kv[1])):
        print(f"  {k:<28} {math.prod(v) ** (1 / len(v)):.2f}x  ({max(v):.2f}x)")
    print("\nplan_sampling(nfe) -> " + ", ".join(f"{n}: {plan_sampling(n).describe()}" for n in NFES))
    if not args.skip_orders:
        convergence_orders(kdiff)
    sampler_overhead()


if __name__ == "__main__":
    main()
