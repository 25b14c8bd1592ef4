"""Noise schedules and the conversions between their three coordinates.

Every sampler in ``diffit.diffusion`` works in the sigma-scaled ("VE") space of Karras et al. 2022
(EDM, Sec. 2): x = x0 + sigma * n. A discrete VP (DDPM) process with cumulative product alpha_bar_t is the
same process seen through x_vp = sqrt(alpha_bar) * x (EDM Eq. 4 with s = sqrt(alpha_bar)), so

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),        alpha_bar_t = 1 / (1 + sigma_t^2).

A schedule handed to a sampler is a 1-D descending tensor of sigmas ending with an exact zero
(k-diffusion's convention): ``n`` steps -> ``n + 1`` values.
"""

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.util import check_integer, is_integer

# Far more steps than any sampler needs (ADM's longest chain is 4000): beyond it a schedule alone takes gigabytes
# (karras_sigmas(10**10) asked the allocator for 80 GB), so a step count this large is a typo.
MAX_STEPS = 100_000


def check_steps(n: object, sigma_min: float, sigma_max: float, dtype: torch.dtype | None = None) -> None:
    """The arguments every closed-form step schedule takes: an integer ``1 <= n <= MAX_STEPS`` and
    ``0 < sigma_min < sigma_max < inf``, both representable in the schedule's ``dtype`` when given."""
    if not is_integer(n) or not 1 <= n <= MAX_STEPS:  # type: ignore[operator]
        raise ValueError(f"n (number of steps) must be an integer in [1, {MAX_STEPS}], got {n!r}")
    if not 0.0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if dtype is not None and dtype.is_floating_point:  # 1e300 became inf in float32, 1e-50 became 0
        info = torch.finfo(dtype)
        if sigma_max > info.max:
            raise ValueError(f"sigma_max={sigma_max} overflows the schedule's {dtype} (max {info.max:.4g})")
        if sigma_min < info.tiny:
            raise ValueError(f"sigma_min={sigma_min} underflows the schedule's {dtype} (smallest {info.tiny:.4g})")


def check_alphas_cumprod(alphas_cumprod: object, *, values: bool = True) -> None:
    """A discrete VP chain's alpha_bar: a 1-D tensor of T >= 2 values (free to check), and with ``values`` every
    value in (0, 1) (NaN and inf refused) and strictly decreasing, as the cumulative product of 1 - beta with
    every beta in (0, 1) is (one reduction: checked where a chain enters, not at every sampling step)."""
    if not isinstance(alphas_cumprod, Tensor) or alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 2:
        got = tuple(alphas_cumprod.shape) if isinstance(alphas_cumprod, Tensor) else type(alphas_cumprod).__name__
        raise ValueError(f"alphas_cumprod must be a 1-D tensor of T >= 2 values, got {got}")
    if not values:
        return
    a = alphas_cumprod.detach()
    if not bool(((a > 0) & (a < 1)).all()):
        raise ValueError("alphas_cumprod must hold values in (0, 1) (NaN and inf refused)")
    if not bool((a[1:] < a[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing (alpha_bar_t is a product of 1 - beta_s)")


def karras_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " n_plus_1"]:
    """EDM Eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then a zero.

    ``n = 1`` gives [sigma_max, 0]. rho = 7 concentrates steps at low noise, where the ODE curves most.
    """
    check_steps(n, sigma_min, sigma_max, dtype)
    if not 0.0 < rho < math.inf:
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


def linear_betas(num_timesteps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> Float[Tensor, " t"]:
    """DDPM / ADM linear betas (float64). ``beta_start``/``beta_end`` are the values for T = 1000 and are
    scaled by 1000 / T as ADM does, so any T describes the same continuous process."""
    check_integer("num_timesteps", num_timesteps)
    scale = 1000.0 / num_timesteps
    if not 0 < scale * beta_start <= scale * beta_end < 1:
        raise ValueError(
            f"betas must satisfy 0 < beta_start <= beta_end and, scaled by 1000/T, stay below 1; got "
            f"beta_start={beta_start}, beta_end={beta_end}, num_timesteps={num_timesteps}"
        )
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> Float[Tensor, " t"]:
    """Nichol & Dhariwal 2021 Eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2);
    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at ``max_beta`` to avoid the singularity at t = T."""
    check_integer("num_timesteps", num_timesteps)
    if not 0 <= s < math.inf:  # s = -1 divided by zero: NaN betas
        raise ValueError(f"s must be a finite number >= 0, got {s}")
    if not 0 < max_beta < 1:  # betas of 1 or more are no diffusion chain
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * torch.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def betas_to_alphas_cumprod(betas: Float[Tensor, " t"]) -> Float[Tensor, " t"]:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) (DDPM Eq. 4), in float64."""
    if not isinstance(betas, Tensor) or betas.ndim != 1 or len(betas) < 1:
        got = tuple(betas.shape) if isinstance(betas, Tensor) else type(betas).__name__
        raise ValueError(f"betas must be a non-empty 1-D tensor, got {got}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must lie in (0, 1)")
    return torch.cumprod(1 - betas.double(), dim=0)


def alpha_bar_to_sigma(alpha_bar: Float[Tensor, "*s"]) -> Float[Tensor, "*s"]:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar): the VE noise level of a VP marginal."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma: Float[Tensor, "*s"]) -> Float[Tensor, "*s"]:
    """alpha_bar = 1 / (1 + sigma^2): the inverse of :func:`alpha_bar_to_sigma`."""
    return 1 / (1 + sigma**2)


def timestep_to_sigma(t: Float[Tensor, "*s"], alphas_cumprod: Float[Tensor, " t"]) -> Float[Tensor, "*s"]:
    """Sigma at a (possibly fractional) DDPM timestep: linear interpolation of log sigma between the
    integer timesteps (the continuous extension k-diffusion uses for discrete models). Timesteps outside
    [0, T-1] clamp to its ends; NaN raises ValueError (it indexed the table at -2^63)."""
    check_alphas_cumprod(alphas_cumprod, values=False)  # its values: where the chain enters, not every step
    if bool(t.isnan().any()):
        raise ValueError("t (timestep) must not be NaN")
    log_sigmas = alpha_bar_to_sigma(alphas_cumprod.double()).log().to(t.device)
    t64 = t.double().clamp(0, len(alphas_cumprod) - 1)
    lo = t64.floor().long()
    hi = (lo + 1).clamp(max=len(alphas_cumprod) - 1)
    w = t64 - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp().to(t.dtype)


def sigma_to_timestep(
    sigma: Float[Tensor, "*s"], alphas_cumprod: Float[Tensor, " t"], *, continuous: bool = False
) -> Float[Tensor, "*s"]:
    """DDPM timestep of a noise level, as a float in [0, T-1].

    ``continuous=False``: the nearest integer timestep in log sigma (exact for sigmas taken from the same
    schedule, e.g. :func:`respaced_sigmas`). ``continuous=True``: the inverse of :func:`timestep_to_sigma`.
    Sigmas outside the schedule's range clamp to its ends; NaN or negative ones raise ValueError.
    """
    check_alphas_cumprod(alphas_cumprod, values=False)  # its values: where the chain enters, not every step
    # One reduction (NaN >= 0 is False), read once: samplers call this every step.
    if not bool((sigma >= 0).all()):
        bad = sigma[~(sigma >= 0)].flatten()[0].item()
        raise ValueError(f"sigma must be >= 0 (a noise level), got {bad}")
    log_sigmas = alpha_bar_to_sigma(alphas_cumprod.double()).log().to(sigma.device)  # ascending in t
    f64 = torch.finfo(torch.float64)
    log_sigma = sigma.double().clamp(f64.tiny, f64.max).log()  # finite: inf's distance to every level was inf
    if not continuous:
        t = (log_sigma[..., None] - log_sigmas).abs().argmin(dim=-1).double()
    else:
        hi = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        t = (lo.double() + w).clamp(0, len(log_sigmas) - 1)
    out_dtype = sigma.dtype if sigma.dtype == torch.float64 else torch.float32
    return t.to(out_dtype)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """The DDPM timesteps kept when respacing, with ADM's ``space_timesteps`` semantics (sorted ascending).

    ``section_counts`` is an int (e.g. 250 of 1000), a list of per-section counts (the T timesteps are cut
    into equal sections, each strided evenly with Python rounding), a comma string "10,15,20", or
    "ddimN" for DDIM's fixed integer stride.
    """
    check_integer("num_timesteps", num_timesteps)
    if isinstance(section_counts, str):
        text = section_counts.removeprefix("ddim")
        if not all(c.strip().isdigit() for c in text.split(",")) or (text != section_counts and "," in text):
            raise ValueError(
                f"section_counts must be an int, a list of ints, a comma string such as '10,15,20' or 'ddimN', "
                f"got {section_counts!r}"
            )
        if text != section_counts:
            wanted = int(text)
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"section_counts: no integer stride gives {wanted} of {num_timesteps} steps")
        section_counts = [int(c) for c in text.split(",")]
    if is_integer(section_counts):
        section_counts = [section_counts]  # type: ignore[list-item]
    if not isinstance(section_counts, Sequence) or not all(is_integer(c) for c in section_counts):
        raise ValueError(f"section_counts must be an int, a list of ints or a string, got {section_counts!r}")
    if not section_counts or min(section_counts) < 1:
        raise ValueError(f"section_counts must be >= 1 steps per section, got {list(section_counts)}")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"section_counts: cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0  # accumulated, not multiplied, to round exactly as ADM does
        for _ in range(count):
            kept.add(start + round(cur))
            cur += stride
        start += size
    return sorted(kept)


def respaced_sigmas(
    alphas_cumprod: Float[Tensor, " t"],
    section_counts: int | str | Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " n_plus_1"]:
    """Sigmas of the respaced DDPM process (descending, trailing zero) for DDPM/DDIM sampling.

    The respaced chain keeps alpha_bar at the chosen timesteps (its betas are 1 - alpha_bar_i/alpha_bar_j
    for consecutive kept steps), so it is fully described by those sigmas; the final step goes to sigma 0
    (alpha_bar = 1), where ADM returns the predicted x0.
    """
    check_alphas_cumprod(alphas_cumprod)
    kept = torch.tensor(space_timesteps(len(alphas_cumprod), section_counts))
    sigmas = alpha_bar_to_sigma(alphas_cumprod.double()[kept]).flip(0)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)
