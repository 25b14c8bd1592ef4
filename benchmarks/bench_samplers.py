"""Deterministic samplers: error vs NFE on a Gaussian mixture with an exact denoiser.

The error is the mean L2 distance, over 512 starting points in R^16, between a sampler's output and the
probability-flow ODE solution from the same start (DOP853 at tolerance 1e-10 on the exact mixture
denoiser, followed by the same final denoising step every schedule ends with). All samplers use the EDM
schedule (karras_sigmas, sigma in [0.002, 80], rho 7). Heun costs 2n - 1 NFE for n steps, so it runs the
largest n whose NFE fits the budget; the table prints the NFE actually spent. The ratio column is the error
relative to Euler at the same budget (the baseline, measured in the same run).

Optional yardstick: ``--kdiffusion PATH`` compares with k-diffusion's Euler / Heun / DPM++(2M) from a
separate install (``pip install --no-deps --target PATH k-diffusion``; its optional imports are stubbed).

    .venv/bin/python benchmarks/bench_samplers.py [--kdiffusion /tmp/kdiff]
"""

import argparse
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffit.diffusion import GaussianMixture, karras_sigmas, sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
BUDGETS = (10, 20, 35, 79)
F64 = torch.float64


def make_mixture(dim: int = 16, components: int = 10, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=F64) * 0.5
    stds = 0.05 + 0.3 * torch.rand(components, generator=g, dtype=F64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=F64)
    return GaussianMixture(means, stds, weights)


def ode_reference(gm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """DOP853 on dx/dln(sigma) = x - D(x, sigma) from sigma_max to sigma_min, then D(., sigma_min)."""

    def rhs(log_sigma: float, flat: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(flat).view(x.shape)
        return (xs - gm(xs, torch.full(x.shape[:1], math.exp(log_sigma), dtype=F64))).reshape(-1).numpy()

    span = (math.log(SIGMA_MAX), math.log(SIGMA_MIN))
    sol = solve_ivp(rhs, span, x.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10)
    x_min = torch.from_numpy(sol.y[:, -1]).view(x.shape)
    return gm(x_min, torch.full(x.shape[:1], SIGMA_MIN, dtype=F64))


def steps_for(name: str, budget: int) -> int:
    return (budget + 1) // 2 if "heun" in name else budget


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

    return {
        "k-diff euler": wrap(module.sample_euler),
        "k-diff heun": wrap(module.sample_heun),
        "k-diff dpm++(2m)": wrap(module.sample_dpmpp_2m),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kdiffusion", default=None, help="folder holding a --no-deps k-diffusion install")
    args = parser.parse_args()
    torch.set_num_threads(1)

    gm = make_mixture()
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    start = time.perf_counter()
    ref = ode_reference(gm, x)
    ref_seconds = time.perf_counter() - start

    samplers: dict[str, Callable] = {
        "euler": sample_euler,
        "ddim (eta=0)": sample_ddim,
        "heun": sample_heun,
        "dpm++(2m)": sample_dpmpp_2m,
    }
    if args.kdiffusion:
        samplers |= load_kdiffusion(args.kdiffusion)

    errors: dict[str, list[tuple[int, float]]] = {}
    for name, sampler in samplers.items():
        row = []
        for budget in BUDGETS:
            nfe: list[int] = []
            sigmas = karras_sigmas(steps_for(name, budget), SIGMA_MIN, SIGMA_MAX, RHO, dtype=F64)
            if name.startswith("k-diff"):
                out = sampler(gm, x, sigmas)
                nfe.append(2 * (len(sigmas) - 1) - 1 if "heun" in name else len(sigmas) - 1)
            else:
                out = sampler(gm, x, sigmas, callback=lambda s, nfe=nfe: nfe.append(s["nfe"]))
            row.append((nfe[-1], (out - ref).norm(dim=1).mean().item()))
        errors[name] = row

    print(f"Gaussian mixture in R^16 (10 components), 512 paths; reference DOP853 in {ref_seconds:.1f}s")
    print("error = mean ||x - x_ode||; ratio = error / Euler's error at the same NFE budget\n")
    header = f"{'sampler':<18}" + "".join(f"{f'NFE<={b}':>24}" for b in BUDGETS)
    print(header)
    print("-" * len(header))
    baseline = [err for _, err in errors["euler"]]
    for name, row in errors.items():
        cells = [f"{err:.2e} ({nfe:>2}) x{err / base:.3f}" for (nfe, err), base in zip(row, baseline, strict=True)]
        print(f"{name:<18}" + "".join(f"{cell:>24}" for cell in cells))
    print("\ncell: error (NFE actually spent) xratio-to-Euler")


if __name__ == "__main__":
    main()
