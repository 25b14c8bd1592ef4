import inspect
import math
from functools import partial

import pytest
import torch

from diffit.diffusion import (
    alpha_bar_to_sigma,
    betas_to_alphas_cumprod,
    cosine_betas,
    karras_sigmas,
    linear_betas,
    respaced_sigmas,
    sigma_to_alpha_bar,
    sigma_to_timestep,
    space_timesteps,
    timestep_to_sigma,
)


def test_karras_sigmas_match_edm_eq5() -> None:
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    s = karras_sigmas(n, lo, hi, rho, dtype=torch.float64)
    expected = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    assert s.shape == (n + 1,)
    torch.testing.assert_close(s[:-1], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s[-1] == 0 and s[0] == pytest.approx(hi) and s[-2] == pytest.approx(lo)
    assert bool((s[:-1] > s[1:]).all())
    assert karras_sigmas(1, lo, hi).tolist() == [hi, 0.0]
    assert karras_sigmas(5, 1, 80).tolist() == karras_sigmas(5, 1.0, 80.0).tolist()  # ints pass the type checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n"),
        ({"sigma_min": 100.0}, "sigma_min"),
        ({"sigma_max": math.inf}, "sigma_max < inf"),
        ({"sigma_max": math.nan}, "sigma_max < inf"),
        ({"rho": 0.0}, "rho"),
        ({"rho": math.nan}, "rho must be a finite number"),
        ({"rho": math.inf}, "rho must be a finite number"),
    ],
)
def test_karras_sigmas_bad_input(kwargs: dict, match: str) -> None:
    args = {"n": 10, "sigma_min": 0.002, "sigma_max": 80.0} | kwargs
    with pytest.raises(ValueError, match=match):
        karras_sigmas(**args)


def test_linear_and_cosine_betas() -> None:
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    # ADM's 1000/T rescaling: 4000 steps of a quarter the size.
    assert linear_betas(4000)[-1].item() == pytest.approx(0.02 / 4)
    acp = betas_to_alphas_cumprod(cosine_betas(1000))
    t = torch.arange(1, 900, dtype=torch.float64)  # away from the max_beta clipping near t = T
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(acp[t.long() - 1], f, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="betas"):
        betas_to_alphas_cumprod(torch.tensor([0.5, 1.5], dtype=torch.float64))
    for kwargs in ({"beta_start": -1.0}, {"beta_start": 0.1, "beta_end": 0.01}, {"num_timesteps": 10}):
        with pytest.raises(ValueError, match="betas must satisfy 0 < beta_start <= beta_end"):
            linear_betas(**kwargs)  # 10 steps scale beta_end 0.02 to 2.0: beyond 1


def test_cosine_betas_match_adm_and_clip_at_max_beta() -> None:
    """ADM's betas_for_alpha_bar: beta_t = min(1 - alpha_bar(t + 1) / alpha_bar(t), 0.999), the last ones clipped."""
    f = [math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(1001)]
    expected = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(1000)], dtype=torch.float64)
    torch.testing.assert_close(cosine_betas(1000), expected, rtol=1e-12, atol=0)
    assert cosine_betas(1000)[-1].item() == 0.999


def test_sigma_alpha_bar_timestep_round_trips() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    sig = alpha_bar_to_sigma(acp)
    torch.testing.assert_close(sigma_to_alpha_bar(sig), acp, rtol=1e-12, atol=0)
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(timestep_to_sigma(t, acp), sig, rtol=1e-12, atol=0)
    # Integer timesteps are recovered exactly, also from float32 sigmas; fractional ones continuously.
    assert torch.equal(sigma_to_timestep(sig.float(), acp), t.float())
    frac = torch.tensor([0.25, 10.5, 500.75, 998.9], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_timestep(timestep_to_sigma(frac, acp), acp, continuous=True), frac)
    # Out-of-range timesteps and sigmas clamp to the chain's ends (-2 read log_sigmas[-2], 1500 an IndexError).
    ends = timestep_to_sigma(torch.tensor([-2.0, -0.5, 999.5, 1500.0], dtype=torch.float64), acp)
    torch.testing.assert_close(ends, sig[[0, 0, -1, -1]], rtol=1e-12, atol=0)
    assert sigma_to_timestep(torch.tensor([1e-9, 1e9]), acp, continuous=True).tolist() == [0.0, 999.0]


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("bad", [math.nan, -0.5, -math.inf])
def test_a_nan_or_negative_sigma_is_refused_not_read_as_timestep_0(continuous: bool, bad: float) -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    ends = sigma_to_timestep(torch.tensor([0.0, math.inf]), acp, continuous=continuous)
    assert ends.tolist() == [0.0, 999.0]  # inf is the noisiest end (the nearest-step search said 0)
    with pytest.raises(ValueError, match=f"^sigma must be >= 0 \\(a noise level\\), got {bad}$"):
        sigma_to_timestep(torch.tensor([1.0, bad, 2.0]), acp, continuous=continuous)  # it said 0 for NaN
    with pytest.raises(ValueError, match="^t \\(timestep\\) must not be NaN$"):
        timestep_to_sigma(torch.tensor([3.0, math.nan]), acp)  # an IndexError at -2^63 before


def test_space_timesteps_adm_semantics() -> None:
    kept = space_timesteps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    # ADM's documented example: 300 steps in 3 sections of 100, strided to 10, 15 and 20 steps.
    kept = space_timesteps(300, [10, 15, 20])
    counts = [sum(lo <= k < lo + 100 for k in kept) for lo in (0, 100, 200)]
    assert counts == [10, 15, 20] and kept[:2] == [0, 11] and kept[-1] == 299
    assert space_timesteps(300, "10,15,20") == kept
    assert space_timesteps(10, 10) == list(range(10))
    with pytest.raises(ValueError, match="section_counts"):
        space_timesteps(100, 101)


@pytest.mark.parametrize(
    ("num_timesteps", "counts", "expected"),
    [
        # sections of T // k + 1 for the first T % k of them: 10 in 3 is 4, 3, 3
        (10, [2, 3, 3], [0, 3, 4, 5, 6, 7, 8, 9]),
        # Python's rounding of the accumulated stride 99 / 14: the ninth step is round(56.57) = 57, not 56
        (100, [15], [0, 7, 14, 21, 28, 35, 42, 49, 57, 64, 71, 78, 85, 92, 99]),
        # 1000 in 3 is 334, 333, 333; strides 55.5 (round half to even: 56, 166, 278), 33.2 and 27.75
        (
            1000,
            [7, 11, 13],
            [
                0,
                56,
                111,
                166,
                222,
                278,
                333,
                334,
                367,
                400,
                434,
                467,
                500,
                533,
                566,
                600,
                633,
                666,
                667,
                695,
                722,
                750,
                778,
                805,
                833,
                861,
                888,
                916,
                944,
                971,
                999,
            ],
        ),  # fmt: skip
    ],
)
def test_space_timesteps_matches_adm_also_for_uneven_sections(
    num_timesteps: int, counts: list[int], expected: list[int]
) -> None:
    """ADM's respacing: T split into len(counts) sections, the first T % k one step longer; section i keeps
    counts[i] steps at start + round(j * (size - 1) / (counts[i] - 1))."""
    assert space_timesteps(num_timesteps, counts) == expected


def test_respaced_sigmas() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    s = respaced_sigmas(acp, 250, dtype=torch.float64)
    assert s.shape == (251,) and s[-1] == 0 and bool((s[:-1] > s[1:]).all())
    kept = torch.tensor(space_timesteps(1000, 250))
    torch.testing.assert_close(s[:-1].flip(0), alpha_bar_to_sigma(acp[kept]))
    assert torch.equal(sigma_to_timestep(s[:-1], acp).long().flip(0), kept)


_ACP = betas_to_alphas_cumprod(linear_betas(50))


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [  # torch's linspace() TypeError; a 2-point schedule for True; an 80 GB allocation for 10**10
        (karras_sigmas, (2.5, 0.002, 80), r"^n \(number of steps\) must be an integer in \[1, 100000\], got 2.5$"),
        (karras_sigmas, (True, 0.002, 80), r"^n \(number of steps\) must be an integer .*, got True$"),
        (karras_sigmas, (10**10, 0.002, 80), r"^n \(number of steps\) must be an integer .*, got 10000000000$"),
        (karras_sigmas, (3, 0.002, 1e300), r"^sigma_max=1e\+300 overflows the schedule's torch.float32"),  # an inf
        (partial(karras_sigmas, dtype=torch.float16), (3, 1e-10, 80), r"^sigma_min=1e-10 underflows .*float16"),
        (linear_betas, (10.5,), r"^num_timesteps must be an integer >= 1, got 10.5$"),  # named the betas before
        (partial(cosine_betas, s=-1), (10,), r"^s must be a finite number >= 0, got -1$"),  # NaN betas before
        (partial(cosine_betas, s=math.nan), (10,), r"^s must be a finite number >= 0, got nan$"),
        (partial(cosine_betas, max_beta=2), (10,), r"^max_beta must be in \(0, 1\), got 2$"),  # betas of 2 before
        (betas_to_alphas_cumprod, (torch.zeros(0),), r"^betas must be a non-empty 1-D tensor, got \(0,\)$"),
        (betas_to_alphas_cumprod, (torch.full((2, 3), 0.1),), r"^betas must be a non-empty 1-D tensor, got \(2, 3\)"),
        (betas_to_alphas_cumprod, ([0.1, 0.2],), r"^betas must be a non-empty 1-D tensor, got list$"),
        (space_timesteps, (100, "ddimx"), r"^section_counts must be .* or 'ddimN', got 'ddimx'$"),  # int()'s error
        (space_timesteps, (100, "10,a"), r"^section_counts must be .*, got '10,a'$"),
        (space_timesteps, (100, 10.5), r"^section_counts must be an int, a list of ints or a string, got 10.5$"),
        (space_timesteps, (0, 10), r"^num_timesteps must be an integer >= 1, got 0$"),
        (respaced_sigmas, (_ACP[None], 5), r"^alphas_cumprod must be a 1-D tensor of T >= 2 values, got \(1, 50\)$"),
        (respaced_sigmas, (_ACP.flip(0), 5), r"^alphas_cumprod must be strictly decreasing"),  # garbage before
        (respaced_sigmas, (torch.cat([torch.ones(1, dtype=torch.float64), _ACP]), 5), r"^alphas_cumprod must hold"),
        (sigma_to_timestep, (torch.ones(1), torch.zeros(0)), r"^alphas_cumprod must be a 1-D tensor of T >= 2"),
    ],
)
def test_bad_schedule_inputs_are_refused_naming_the_argument(fn: object, args: tuple, match: str) -> None:
    bare = partial(inspect.unwrap(fn.func), **fn.keywords) if isinstance(fn, partial) else inspect.unwrap(fn)
    with pytest.raises(ValueError, match=match):
        bare(*args)  # as users run it: the suite's type checks would answer first
