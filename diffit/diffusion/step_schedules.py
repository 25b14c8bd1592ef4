"""Step schedules: where a sampler spends its evaluations between sigma_max and 0.

Every schedule is a pure function returning ``n + 1`` strictly descending sigmas that start at sigma_max and
end with an exact zero (k-diffusion's convention, see ``diffit.diffusion.schedules``). ``SCHEDULES`` maps the
names the CLI accepts to the closed-form ones; :func:`optimized_sigmas` fits a schedule to a model instead.
"""

import math
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.diffusion.sampling import Denoiser, check_x
from diffit.diffusion.schedules import check_steps, karras_sigmas
from diffit.util import check_integer

# Linear-beta VP process of Song et al. 2021 (beta_min = 0.1, beta_max = 20), EDM Table 1.
VP_BETA_MIN, VP_BETA_D = 0.1, 19.9


def _finish(sigmas: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


def _ramp(n: int) -> Tensor:
    """u_i = i / (n - 1), i = 0..n-1 (a single 0 for n = 1), float64."""
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


def loglinear_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " n_plus_1"]:
    """Uniform in log-SNR (DPM-Solver's "logSNR" spacing, Lu et al. 2022): equal steps h in lambda = -log sigma,
    the variable of the exponential integrators. Then a zero."""
    check_steps(n, sigma_min, sigma_max, dtype)
    log_sigmas = math.log(sigma_max) + _ramp(n) * (math.log(sigma_min) - math.log(sigma_max))
    return _finish(log_sigmas.exp(), device, dtype)


def vp_time_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    power: float = 2.0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " n_plus_1"]:
    """Polynomial in the time of the linear-beta VP SDE (Lu et al. 2022 "time-uniform" for power 1,
    "time-quadratic" for 2): t_i = (t_max^(1/p) + u_i (t_min^(1/p) - t_max^(1/p)))^p, mapped through
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1). Then a zero."""
    check_steps(n, sigma_min, sigma_max, dtype)
    if not 0.0 < power < math.inf:
        raise ValueError(f"power must be a finite number > 0, got {power}")

    def time_of(sigma: float) -> float:  # inverse of sigma(t), EDM Table 1
        return (math.sqrt(VP_BETA_MIN**2 + 2 * VP_BETA_D * math.log1p(sigma**2)) - VP_BETA_MIN) / VP_BETA_D

    lo, hi = time_of(sigma_min) ** (1 / power), time_of(sigma_max) ** (1 / power)
    t = (hi + _ramp(n) * (lo - hi)) ** power
    sigmas = torch.expm1(0.5 * VP_BETA_D * t**2 + VP_BETA_MIN * t).sqrt()
    # Pin the ends exactly (the round trip through t loses a few ulps).
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min
    return _finish(sigmas, device, dtype)


def _karras(n: int, sigma_min: float, sigma_max: float, *, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
    return karras_sigmas(n, sigma_min, sigma_max, device=device, dtype=dtype)


# Name -> closed-form schedule (n, sigma_min, sigma_max, *, device, dtype), for the CLI and the planner.
SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": _karras,
    "log-snr": loglinear_sigmas,
    "vp-time": vp_time_sigmas,
}


# Every schedule name the planner and the CLI accept: the closed forms, and "optimized" (fitted to the model
# by :func:`optimized_sigmas`, which needs the denoiser and starting points).
SCHEDULE_NAMES = (*SCHEDULES, "optimized")


def schedule_sigmas(
    name: str,
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    final: str = "sigma_min",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " n_plus_1"]:
    """The closed-form schedule ``name`` (see ``SCHEDULES``) with n steps.

    ``final="sigma_min"``: n sigmas from sigma_max down to sigma_min, then 0 (k-diffusion; one of the n
    evaluations is spent at sigma_min, where D(x) ~ x). ``final="zero"``: the (n + 1)-point schedule with its
    sigma_min replaced by 0, so the last step goes straight to 0 and no evaluation is spent at sigma_min (the
    DEIS / iPNDM convention of returning the last point unevaluated); for samplers whose final step
    extrapolates from their history (iPNDM, UniPC). Unknown names raise a ValueError naming ``schedule``.
    """
    if name not in SCHEDULES:
        hint = " ('optimized' needs the model: optimized_sigmas)" if name == "optimized" else ""
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}{hint}")
    if final not in ("sigma_min", "zero"):
        raise ValueError(f"final must be 'sigma_min' or 'zero', got {final!r}")
    check_steps(n, sigma_min, sigma_max, dtype)  # n, not the n + 1 that final="zero" asks the schedule for
    if final == "sigma_min":
        return SCHEDULES[name](n, sigma_min, sigma_max, device=device, dtype=dtype)
    sigmas = SCHEDULES[name](n + 1, sigma_min, sigma_max, device=device, dtype=dtype)
    return torch.cat([sigmas[:-2], sigmas[-1:]])  # drop sigma_min, keep the trailing 0


@torch.no_grad()
def optimized_sigmas(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    fine_steps: int = 100,
    rho: float = 7.0,
) -> Float[Tensor, " n_plus_1"]:
    """A schedule fitted to the model (GITS, Chen et al. 2024, Alg. 1): n of the ``fine_steps`` Karras
    sigmas chosen by dynamic programming to minimise the summed local error of one Euler step against a
    Heun teacher trajectory from the starting points ``x`` (already times sigma_max).

    Cost: 2 * fine_steps - 1 evaluations of the denoiser on ``x``, once per model; a few dozen starting
    points are enough. The local error of a step i -> j is mean_b ||x_i + (sigma_j - sigma_i) d_i - x_j||
    (d = (x - D)/sigma), and of the final step i -> 0 it is mean_b ||D_i - x_end||.
    """
    check_steps(n, sigma_min, sigma_max)
    check_integer("fine_steps", fine_steps)
    if fine_steps < n:
        raise ValueError(f"fine_steps must be >= n ({n}), got {fine_steps}")
    check_x(x)
    fine = karras_sigmas(fine_steps, sigma_min, sigma_max, rho=rho, dtype=torch.float64).tolist()

    # Teacher: Heun (EDM Alg. 1) on the fine grid, keeping x and D at every node.
    def slope_at(y: Tensor, sigma: float) -> Tensor:
        return (y - denoiser(y, torch.full((y.shape[0],), sigma, device=y.device, dtype=y.dtype))) / sigma

    xs, ds = [], []
    cur = x
    for sigma, sigma_next in zip(fine[:-1], fine[1:], strict=True):
        xs.append(cur)
        ds.append(slope_at(cur, sigma))
        # Euler step, then the 2nd order correction except on the final step to 0.
        nxt = cur + (sigma_next - sigma) * ds[-1]
        if sigma_next > 0:
            nxt = cur + (sigma_next - sigma) * (ds[-1] + slope_at(nxt, sigma_next)) / 2
        cur = nxt
    x_end = cur
    k = fine_steps  # node k (sigma = 0) is the end
    traj = torch.stack(xs).flatten(2)  # (k, b, dim)
    slope = torch.stack(ds).flatten(2)
    cost = torch.full((k + 1, k + 1), math.inf, dtype=torch.float64)
    sig = torch.tensor(fine[:-1], dtype=traj.dtype, device=traj.device)
    for i in range(k):
        # One Euler step from teacher node i to every later node j, against the teacher there.
        pred = traj[i][None] + (sig[i + 1 :] - sig[i])[:, None, None] * slope[i][None]
        cost[i, i + 1 : k] = (pred - traj[i + 1 :]).norm(dim=-1).mean(-1).double().cpu()
        cost[i, k] = (traj[i] - sig[i] * slope[i] - x_end.flatten(1)).norm(dim=-1).mean().double().cpu()
    # Dynamic programming over paths 0 -> k with exactly n steps.
    best = torch.full((k + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    parents = []
    for _ in range(n):
        total = best[:, None] + cost  # (from, to)
        best, parent = total.min(dim=0)
        parents.append(parent)
    path = [k]
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    path = path[::-1]
    if path[0] != 0:
        raise RuntimeError("optimized_sigmas: no path from sigma_max (should not happen)")
    values = [fine[j] if j < k else 0.0 for j in path]
    return torch.tensor(values, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
