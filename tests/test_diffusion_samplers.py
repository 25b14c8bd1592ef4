import inspect
import math
from functools import partial

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffit.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    GaussianMixture,
    PerSampleNoise,
    VPEpsDenoiser,
    betas_to_alphas_cumprod,
    bind_labels,
    check_sigmas,
    karras_sigmas,
    linear_betas,
    per_sample_noise,
    respaced_sigmas,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_edm_stochastic,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
)
from diffit.diffusion.sampling import find_method

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DETERMINISTIC = {"euler": sample_euler, "heun": sample_heun, "dpmpp-2m": sample_dpmpp_2m, "ddim": sample_ddim}


def mixture() -> GaussianMixture:
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=F64)
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.2], dtype=F64), torch.tensor([0.5, 0.3, 0.2], dtype=F64))


def numpy_mixture_denoiser(gm: GaussianMixture, x: np.ndarray, sigma: float) -> np.ndarray:
    """E[x0 | x] of the mixture written independently of the library (plain NumPy, Tweedie)."""
    mu, s, w = gm.means.numpy(), gm.stds.numpy(), gm.weights.numpy()
    var = s**2 + sigma**2  # (k,)
    log_r = np.log(w) - x.shape[1] / 2 * np.log(var) - ((x[:, None] - mu[None]) ** 2).sum(-1) / (2 * var)
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    post = mu[None] + (s**2 / var)[None, :, None] * (x[:, None] - mu[None])
    return (r[..., None] * post).sum(axis=1)


def ode_reference(gm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Brute force: DOP853 at tolerance 1e-11 on dx/dln(sigma) = x - D(x, sigma), sigma_max -> sigma_min, then the
    same final denoising step D(x, sigma_min) every schedule ends with (its last step goes to sigma = 0)."""
    shape = x.shape

    def rhs(log_sigma: float, flat: np.ndarray) -> np.ndarray:
        xs = flat.reshape(shape)
        return (xs - numpy_mixture_denoiser(gm, xs, math.exp(log_sigma))).reshape(-1)

    span = (math.log(SIGMA_MAX), math.log(SIGMA_MIN))
    sol = solve_ivp(rhs, span, x.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
    return torch.from_numpy(numpy_mixture_denoiser(gm, sol.y[:, -1].reshape(shape), SIGMA_MIN))


@pytest.fixture(scope="module")
def ode_problem() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    gm = mixture()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    return gm, x, ode_reference(gm, x)


def error(sampler, gm: GaussianMixture, x: torch.Tensor, ref: torch.Tensor, n: int) -> float:
    out = sampler(gm, x, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, dtype=F64))
    return (out - ref).norm(dim=1).mean().item()


@pytest.mark.parametrize(("name", "order"), [("euler", 1), ("heun", 2), ("dpmpp-2m", 2), ("ddim", 1)])
def test_ode_samplers_converge_with_their_order(ode_problem, name: str, order: int) -> None:
    gm, x, ref = ode_problem
    e32, e64 = (error(DETERMINISTIC[name], gm, x, ref, n) for n in (32, 64))
    measured = math.log2(e32 / e64)  # error ~ C h^order: doubling the steps divides it by 2^order
    assert abs(measured - order) < 0.3, f"{name}: measured order {measured:.2f}"
    assert e64 < (0.05 if order == 1 else 0.005)


def test_ddim_eta0_is_euler_and_churn0_is_heun() -> None:
    gm, sigmas = mixture(), karras_sigmas(12, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    x = torch.randn(16, 2, dtype=F64) * SIGMA_MAX
    torch.testing.assert_close(sample_ddim(gm, x, sigmas), sample_euler(gm, x, sigmas), rtol=1e-9, atol=1e-9)
    assert torch.equal(sample_edm_stochastic(gm, x, sigmas), sample_heun(gm, x, sigmas))


def test_ddim_eta1_is_ddpm_with_posterior_variance() -> None:
    gm, sigmas = mixture(), respaced_sigmas(betas_to_alphas_cumprod(linear_betas()), 20, dtype=F64)
    x = torch.randn(16, 2, dtype=F64) * sigmas[0]
    a = sample_ddim(gm, x, sigmas, eta=1.0, noise=per_sample_noise(range(16), (2,), dtype=F64))
    b = sample_ddpm(gm, x, sigmas, variance="small", noise=per_sample_noise(range(16), (2,), dtype=F64))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_euler_maruyama_step_is_the_reverse_sde_discretisation() -> None:
    """One step sigma -> sigma' of dx = -2 sigma score dsigma + sqrt(2 sigma) dW with score (D - x) / sigma^2:
    x' = x + 2 (sigma' - sigma) (x - D) / sigma + sqrt(2 sigma (sigma - sigma')) z (the moments test cannot see
    a noise 2.5% too weak)."""
    x, z, steps = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64), []
    denoiser = lambda v, sigma: 0.3 * v  # noqa: E731
    sample_euler_maruyama(denoiser, x, torch.tensor([2.0, 1.5, 0.0], dtype=F64), noise=lambda: z,
                          callback=lambda state: steps.append(state["x"]))  # fmt: skip
    expected = x + 2 * (1.5 - 2.0) * (x - 0.3 * x) / 2.0 + math.sqrt(2 * 2.0 * (2.0 - 1.5)) * z
    torch.testing.assert_close(steps[0], expected, rtol=1e-12, atol=1e-12)


def test_edm_stochastic_churns_exactly_the_steps_with_sigma_in_s_tmin_s_tmax() -> None:
    """EDM Algorithm 2: gamma_i > 0 for t_i in [S_tmin, S_tmax], both ends included."""
    sigmas, churned = karras_sigmas(8, SIGMA_MIN, SIGMA_MAX, dtype=F64), []
    watch = lambda state: churned.append(state["sigma_hat"] > state["sigma"])  # noqa: E731
    sample_edm_stochastic(mixture(), torch.zeros(4, 2, dtype=F64), sigmas, S_churn=10.0, S_tmin=float(sigmas[5]),
                          S_tmax=float(sigmas[2]), callback=watch)  # fmt: skip
    assert churned == [False, False, True, True, True, True, False, False]


def assert_moments(samples: torch.Tensor, gm: GaussianMixture, n_se: float = 5.0) -> None:
    """Mean and covariance within n_se standard errors (estimated from exact samples of the same size)."""
    n = samples.shape[0]
    exact = gm.sample(200_000, generator=torch.Generator().manual_seed(0))
    centred = exact - gm.mean()
    se_mean = centred.std(dim=0) / math.sqrt(n)
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.flatten(1).std(dim=0).view(2, 2) / math.sqrt(n)
    mean_err = (samples.mean(0) - gm.mean()).abs()
    cov_err = (torch.cov(samples.T) - gm.covariance()).abs()
    assert bool((mean_err < n_se * se_mean).all()), (mean_err, se_mean)
    assert bool((cov_err < n_se * se_cov).all()), (cov_err, se_cov)


@pytest.mark.parametrize(
    ("name", "steps", "kwargs"),
    [
        ("edm-stochastic", 64, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.0}),
        ("euler-maruyama", 200, {}),
        ("ddpm", 250, {}),
        ("ddim", 250, {"eta": 1.0}),
    ],
)
def test_stochastic_samplers_reproduce_mixture_moments(name: str, steps: int, kwargs: dict) -> None:
    gm, n = mixture(), 4000
    if name in ("ddpm", "ddim"):
        sigmas = respaced_sigmas(betas_to_alphas_cumprod(linear_betas()), steps, dtype=F64)
    else:
        sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g, dtype=F64) * sigmas[0]
    out = SAMPLERS[name](gm, x, sigmas, noise=lambda: torch.randn(n, 2, generator=g, dtype=F64), **kwargs)
    assert_moments(out, gm)


def gaussian_eps_model(alphas_cumprod: torch.Tensor, mu: torch.Tensor, v_value: float):
    """Exact ADM-style model for x0 ~ N(mu, I): x_t ~ N(sqrt(a) mu, I), E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu);
    the variance channels output the constant v_value."""

    def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        a = alphas_cumprod[t.round().long()][:, None]
        eps = (1 - a).sqrt() * (x_t - a.sqrt() * mu)
        return torch.cat([eps, torch.full_like(eps, v_value)], dim=1)

    return model


def test_ddpm_with_exact_gaussian_eps_matches_target_in_distribution() -> None:
    # For x0 ~ N(mu, I) the DDPM reverse kernel with variance beta (learned v = +1) is exact at ANY step count
    # (Ho et al. 2020, Sec. 3.2), so 5 respaced steps must already give N(mu, I); the posterior variance
    # (v = -1) is only exact for a point mass and visibly shrinks the spread at 5 steps.
    acp = betas_to_alphas_cumprod(linear_betas())
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    sigmas = respaced_sigmas(acp, 5, dtype=F64)
    n = 20_000

    def run(v_value: float) -> torch.Tensor:
        denoiser = VPEpsDenoiser(gaussian_eps_model(acp, mu, v_value), alphas_cumprod=acp)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(n, 2, generator=g, dtype=F64) * sigmas[0]
        return sample_ddpm(denoiser, x, sigmas, noise=lambda: torch.randn(n, 2, generator=g, dtype=F64))

    exact = run(+1.0)
    torch.testing.assert_close(exact.mean(0), mu, atol=5 / math.sqrt(n), rtol=0)
    torch.testing.assert_close(torch.cov(exact.T), torch.eye(2, dtype=F64), atol=5 * math.sqrt(2 / n), rtol=0)
    small = run(-1.0)
    assert bool((torch.cov(small.T).diagonal() < 0.9).all())


def test_nfe_and_callback() -> None:
    gm, n = mixture(), 7
    sigmas = karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    x = torch.randn(4, 2, dtype=F64) * SIGMA_MAX
    expected = {"euler": n, "heun": 2 * n - 1, "dpmpp-2m": n, "ddim": n, "edm-stochastic": 2 * n - 1}
    expected |= {"euler-maruyama": n, "ddpm": n, "dpmpp-3m": n, "unipc": n, "ipndm": n}
    for name, sampler in SAMPLERS.items():
        states: list[dict] = []
        sampler(gm, x, sigmas, callback=states.append)
        assert [s["i"] for s in states] == list(range(n))
        assert {"i", "x", "sigma", "sigma_next", "denoised", "nfe"} <= states[0].keys()
        assert states[-1]["nfe"] == expected[name], name
        assert states[-1]["sigma_next"] == 0 and states[0]["sigma"] == pytest.approx(SIGMA_MAX)


def test_guidance_passes_are_counted() -> None:
    gm, n = mixture(), 10
    sigmas = karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    x = torch.randn(4, 2, dtype=F64) * SIGMA_MAX
    y = torch.tensor([0, 1, 2, 0])
    lo, hi = 0.3, 5.0
    cfg = ClassifierFreeGuidance(gm, num_classes=3, scale=2.0, interval=(lo, hi))
    inside = sum(lo <= s <= hi for s in sigmas[:-1].tolist())
    states: list[dict] = []
    sample_euler(partial(cfg, y=y), x, sigmas, callback=states.append)
    assert states[-1]["nfe"] == n + inside
    states.clear()
    heun_sigmas = sigmas[:-1].tolist() + sigmas[1:-1].tolist()  # Heun evaluates at sigma_i and sigma_{i+1} > 0
    sample_heun(partial(cfg, y=y), x, sigmas, callback=states.append)
    assert states[-1]["nfe"] == len(heun_sigmas) + sum(lo <= s <= hi for s in heun_sigmas)


STOCHASTIC = [
    ("ddpm", {}),
    ("edm-stochastic", {"S_churn": 10.0}),
    ("euler-maruyama", {}),
    ("ddim", {"eta": 0.5}),
    ("heun", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), STOCHASTIC)
def test_per_sample_seeds_are_batch_invariant(name: str, kwargs: dict) -> None:
    gm, seeds = mixture(), list(range(100, 108))
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cfg = ClassifierFreeGuidance(gm, num_classes=3, scale=1.5)

    def run(batch_seeds: list[int], labels: torch.Tensor) -> torch.Tensor:
        noise = per_sample_noise(batch_seeds, (2,), dtype=F64)
        return SAMPLERS[name](partial(cfg, y=labels), noise() * sigmas[0], sigmas, noise=noise, **kwargs)

    whole = run(seeds, y)
    for size in (1, 3):
        parts = [run(seeds[i : i + size], y[i : i + size]) for i in range(0, 8, size)]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(whole[0], whole[1])


def test_bad_input_raises_clear_errors() -> None:
    gm = mixture()
    x = torch.randn(2, 2, dtype=F64)
    good = karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    bad = {
        "strictly decreasing": torch.tensor([1.0, 2.0, 0.0], dtype=F64),
        "end with 0": torch.tensor([2.0, 1.0], dtype=F64),
        "1-D": good[None],
        "at least 2": torch.tensor([0.0], dtype=F64),
        "finite": torch.tensor([float("inf"), 1.0, 0.0], dtype=F64),
    }
    with pytest.raises(ValueError, match="sigmas must be a 1-D tensor, got list"):
        inspect.unwrap(check_sigmas)([80.0, 1.0, 0.0])  # AttributeError before (unwrapped: no type checks)
    for sampler in SAMPLERS.values():
        for match, sigmas in bad.items():
            with pytest.raises(ValueError, match=match):
                sampler(gm, x, sigmas)
        with pytest.raises(ValueError, match="x must be finite"):
            sampler(gm, torch.full_like(x, float("nan")), good)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(gm, x, good, eta=-0.1)
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(gm, x, good, variance="learned")
    with pytest.raises(ValueError, match="S_churn"):
        sample_edm_stochastic(gm, x, good, S_churn=-1.0)
    with pytest.raises(ValueError, match="noise must return"):
        sample_euler_maruyama(gm, x, good, noise=lambda: torch.randn(3, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"^noise must return tensors shaped \(2, 2\), got a str$"):  # AttributeError
        sample_euler_maruyama(gm, x, good, noise=lambda: "noise")
    nan = float("nan")
    for bad_option, call in [
        ("eta must be a finite number", lambda: sample_ddim(gm, x, good, eta=nan)),
        ("^S_churn must be a finite number >= 0, got nan$", lambda: sample_edm_stochastic(gm, x, good, S_churn=nan)),
        (
            "^S_noise must be a finite number >= 0, got inf$",
            lambda: sample_edm_stochastic(gm, x, good, S_noise=math.inf),
        ),
        (
            "^S_tmin and S_tmax must satisfy 0 <= S_tmin <= S_tmax",
            lambda: sample_edm_stochastic(gm, x, good, S_tmax=nan),
        ),
        ("^S_tmin and S_tmax must satisfy", lambda: sample_edm_stochastic(gm, x, good, S_tmin=2, S_tmax=1)),
    ]:
        with pytest.raises(ValueError, match=bad_option):
            call()


def test_a_bad_starting_point_denoiser_or_noise_shape_is_named_for_every_sampler() -> None:
    gm, sigmas = mixture(), karras_sigmas(3, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    for sampler in SAMPLERS.values():
        bare = inspect.unwrap(sampler)  # as users run it: the suite's type checks would answer first
        with pytest.raises(ValueError, match=r"^x must be a floating-point tensor, got torch.int64$"):
            bare(gm, torch.zeros(2, 2, dtype=torch.long), sigmas)  # every sigma became an integer: garbage, before
        with pytest.raises(ValueError, match=r"^x must be a tensor with a batch dimension \(B, ...\), got shape \(\)$"):
            bare(gm, torch.tensor(1.0, dtype=F64), sigmas)  # IndexError before
        with pytest.raises(ValueError, match=r"^x must be a tensor with a batch dimension .*, got list$"):
            bare(gm, [[0.0, 0.0]], sigmas)
        with pytest.raises(TypeError, match=r"^denoiser must be a callable denoiser\(x, sigma\), got a str$"):
            bare("gm", torch.zeros(2, 2, dtype=F64), sigmas)  # "'str' object is not callable" in the loop, before
        assert sampler(gm, torch.zeros(0, 2, dtype=F64), sigmas).shape == (0, 2)  # an empty batch is no error
    with pytest.raises(ValueError, match=r"^shape must be a sequence of positive integers .*, got \(2.5,\)$"):
        inspect.unwrap(PerSampleNoise.__init__)(PerSampleNoise.__new__(PerSampleNoise), [0], (2.5,))  # randn() failed


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("wrong", ["fewer rows", "fewer columns", "more rows"])
def test_a_denoiser_output_of_another_shape_is_refused_not_broadcast(name: str, wrong: str) -> None:
    x = torch.randn(3, 2, dtype=F64)
    cut = {"fewer rows": lambda d: d[:1], "fewer columns": lambda d: d[:, :1], "more rows": lambda d: d.repeat(2, 1)}
    gm = mixture()
    with pytest.raises(ValueError, match=r"denoiser must return a tensor shaped like x \(3, 2\)"):
        SAMPLERS[name](lambda x, s: cut[wrong](gm(x, s)), x, karras_sigmas(3, SIGMA_MIN, SIGMA_MAX, dtype=F64))


def test_per_sample_noise_draws_one_stream_whatever_the_dtype_and_takes_every_64_bit_seed() -> None:
    """Half-precision noise is the float32 stream cast (drawn in bf16, 16 of 27 values differed on CPU), and a
    seed is any integer in [0, 2**64): torch would take -1 and 2**64 modulo 2**64 (or overflow)."""
    seeds, shape = [3, 2**64 - 1], (3, 3, 3)  # not a multiple of 16: CPU's vectorised randn draws the tail apart
    ref = per_sample_noise(seeds, shape)()
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(per_sample_noise(seeds, shape, dtype=dtype)(), ref.to(dtype)), dtype
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match=rf"^seeds must be integers in \[0, 2\*\*64\), got {bad}$"):
            per_sample_noise([0, bad], shape)


def test_a_repeated_sigma_is_not_strictly_decreasing() -> None:
    x, repeated = torch.randn(2, 2, dtype=F64), torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=F64)
    for sampler in SAMPLERS.values():  # a zero-length step: a division by sigma - sigma_next = 0 in some
        with pytest.raises(ValueError, match="^sigmas must be strictly decreasing$"):
            sampler(mixture(), x, repeated)


class LearnedVariance:
    """A denoiser with ADM's learned variance (v = 0: halfway between small and large) costing 2 per call."""

    def __init__(self) -> None:
        self.gm, self.labels = mixture(), []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma, y)[0]

    def denoise_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.labels.append(y)
        return self.gm(x, sigma), torch.zeros_like(x)

    def evaluations(self, sigma: torch.Tensor) -> int:
        return 2


def test_ddpm_counts_the_evaluations_of_a_learned_variance_denoiser_and_binds_the_outer_labels() -> None:
    n, den = 5, LearnedVariance()
    sigmas = respaced_sigmas(betas_to_alphas_cumprod(linear_betas()), n, dtype=F64)
    states: list[dict] = []
    sample_ddpm(den, torch.randn(3, 2, dtype=F64) * sigmas[0], sigmas, callback=states.append)
    assert [s["nfe"] for s in states] == [2, 4, 6, 8, 10] and den.labels == [None] * n
    # Class-conditional: the labels bound to the denoiser reach its learned variance too.
    y0, y1 = torch.tensor([0, 0, 0]), torch.tensor([1, 2, 0])
    den.labels.clear()
    sample_ddpm(bind_labels(den, y0), torch.randn(3, 2, dtype=F64) * sigmas[0], sigmas)
    assert len(den.labels) == n and all(v is y0 for v in den.labels)
    # Labels bound twice: the outer binding wins, as it does when the partial itself is called.
    rebound = partial(bind_labels(den, y0), y=y1)
    method = find_method(rebound, "denoise_with_variance")
    den.labels.clear()
    x, sigma = torch.zeros(3, 2, dtype=F64), torch.ones(3, dtype=F64)
    rebound(x, sigma)
    method(x, sigma)
    assert [v is y1 for v in den.labels] == [True, True]
