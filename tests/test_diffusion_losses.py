import inspect
import math

import pytest
import torch
from torch import nn

from diffit.diffusion import (
    EDMPrecond,
    GaussianMixture,
    adm_hybrid_loss,
    alpha_bar_to_sigma,
    betas_to_alphas_cumprod,
    discretized_gaussian_log_likelihood,
    edm_loss,
    karras_sigmas,
    linear_betas,
    normal_kl,
    sample_timesteps,
    space_timesteps,
)
from diffit.objectives import ADMObjective, EDMObjective

F64 = torch.float64


class TinyNet(nn.Module):
    """A 2-D MLP backbone with a noise-level input, output width ``out`` (2 or 4 for eps + v)."""

    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, out))

    def forward(self, x: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, noise[:, None].to(x.dtype)], dim=1))


def data() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[0.5, 0.0], [-0.5, 0.3]]), torch.tensor([0.1, 0.2]))


def test_edm_loss_is_per_sample_reproducible_and_decreases() -> None:
    torch.manual_seed(0)
    den, gm = EDMPrecond(TinyNet()), data()
    x0 = gm.sample(256, generator=torch.Generator().manual_seed(1))

    def held_out(denoiser=den) -> float:
        with torch.no_grad():
            return edm_loss(denoiser, x0, generator=torch.Generator().manual_seed(2)).mean().item()

    loss = edm_loss(den, x0[:8], generator=torch.Generator().manual_seed(3))
    assert loss.shape == (8,) and bool(torch.isfinite(loss).all())
    assert torch.equal(loss, edm_loss(den, x0[:8], generator=torch.Generator().manual_seed(3)))
    before = held_out()
    opt = torch.optim.Adam(den.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(4)
    for _ in range(60):
        opt.zero_grad()
        edm_loss(den, gm.sample(128, generator=g), generator=g).mean().backward()
        opt.step()
    # Measured above the irreducible loss of the exact denoiser E[x0 | x] (the mixture's own).
    optimum = held_out(gm)
    assert 0 <= held_out() - optimum < 0.6 * (before - optimum), (before, held_out(), optimum)


def test_edm_loss_draws_sigma_from_the_log_normal_training_distribution() -> None:
    seen = []

    def spy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(sigma)
        return torch.zeros_like(x)

    edm_loss(spy, torch.zeros(20_000, 2), generator=torch.Generator().manual_seed(0))
    log_sigma = seen[0].log()  # ln sigma ~ N(P_mean, P_std^2) = N(-1.2, 1.2^2) (EDM Table 1); 0.05 is 6 std errors
    assert abs(log_sigma.mean().item() + 1.2) < 0.05 and abs(log_sigma.std().item() - 1.2) < 0.05


def test_edm_loss_with_given_sigma_and_noise_matches_the_formula() -> None:
    den = EDMPrecond(TinyNet())
    x0, n = torch.randn(4, 2), torch.randn(4, 2)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    expected = weight * ((den(x0 + sigma[:, None] * n, sigma) - x0) ** 2).mean(1)
    torch.testing.assert_close(edm_loss(den, x0, sigma=sigma, noise=n), expected)


def test_normal_kl_and_discretized_likelihood_brute_force() -> None:
    m1, m2 = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    lv1, lv2 = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))
    # The 256 bins of [-1, 1] partition the real line: their probabilities sum to one.
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in [(0.1, -3.0), (-0.9, -1.0), (0.95, -5.0)]:
        logp = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert logp.exp().sum().item() == pytest_approx_one()


def pytest_approx_one() -> object:
    import pytest

    return pytest.approx(1.0, abs=1e-9)


def test_adm_hybrid_loss_vanishes_for_the_exact_model_and_stops_the_mean_gradient() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    x0_star = torch.tensor([0.3, -0.7], dtype=F64)
    x0 = x0_star.expand(6, 2)
    t = torch.tensor([1, 5, 100, 500, 999, 0])

    def oracle(x_t: torch.Tensor, tt: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # Point-mass data: exact eps, and v = -1 selects the (clipped) posterior variance beta~_t.
        a = acp[tt.long()][:, None]
        eps = (x_t - a.sqrt() * x0_star) / (1 - a).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)

    loss = adm_hybrid_loss(oracle, x0, t, y=None, alphas_cumprod=acp, noise=torch.randn(6, 2, dtype=F64))
    torch.testing.assert_close(loss[:5], torch.zeros(5, dtype=F64), rtol=0, atol=1e-8)
    assert math.isfinite(loss[5].item()) and loss[5].item() > 0  # the t = 0 decoder NLL
    # The VLB term trains only the variance: eps receives exactly the MSE gradient.
    out = torch.randn(6, 4, dtype=F64, requires_grad=True)
    noise = torch.randn(6, 2, dtype=F64)
    adm_hybrid_loss(lambda *_: out, x0, t, y=None, alphas_cumprod=acp, noise=noise).sum().backward()
    torch.testing.assert_close(out.grad[:, :2], 2 * (out[:, :2] - noise).detach() / 2)
    assert out.grad[:, 2:].abs().sum() > 0


def test_adm_hybrid_loss_decreases_on_a_toy_fit() -> None:
    torch.manual_seed(0)
    acp = betas_to_alphas_cumprod(linear_betas(100))
    net, gm = TinyNet(out=4), data()
    model = lambda x, t, y: net(x, t / 100)  # noqa: E731
    fixed = torch.Generator().manual_seed(1)
    x0_eval = gm.sample(512, generator=fixed)
    t_eval = sample_timesteps(512, 100, generator=fixed)
    noise_eval = torch.randn(512, 2, generator=fixed)

    def held_out() -> float:
        with torch.no_grad():
            return adm_hybrid_loss(model, x0_eval, t_eval, y=None, alphas_cumprod=acp, noise=noise_eval).mean().item()

    before = held_out()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(80):
        x0 = gm.sample(128, generator=g)
        loss = adm_hybrid_loss(
            model, x0, sample_timesteps(128, 100, generator=g), y=None, alphas_cumprod=acp, generator=g
        )
        assert loss.shape == (128,) and bool(torch.isfinite(loss).all())
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert held_out() < 0.7 * before


def test_loss_arguments_are_named_not_broadcast_or_turned_into_nan() -> None:
    net, x0, y = EDMPrecond(TinyNet()), torch.randn(4, 2), None
    loss = inspect.unwrap(edm_loss)  # as users run it: the suite's type checks would answer first
    with pytest.raises(ValueError, match=r"^noise must have x0's shape \(4, 2\), got \(1, 2\)$"):
        loss(net, x0, noise=torch.randn(1, 2))  # one noise sample for the whole batch, before
    with pytest.raises(ValueError, match=r"^sigma must have shape \(4,\), one noise level per sample of x, got \(\)$"):
        loss(net, x0, sigma=torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"^P_std must be a finite number > 0, got nan$"):
        edm_loss(net, x0, P_std=math.nan)  # a NaN loss before
    with pytest.raises(ValueError, match=r"^sigma_data must be a finite number > 0, got 0"):
        edm_loss(net, x0, sigma_data=0)
    with pytest.raises(ValueError, match=r"^x0 must be a floating-point tensor, got torch.int64$"):
        loss(net, x0.long())  # torch's "normal_kernel_cpu not implemented for 'Long'" before
    acp = betas_to_alphas_cumprod(linear_betas(50))
    adm = inspect.unwrap(adm_hybrid_loss)
    with pytest.raises(
        ValueError, match=r"^t must hold one integer timestep per sample of x0 \(4,\), got torch.float32"
    ):
        adm(TinyNet(4), x0, torch.zeros(4), y=y, alphas_cumprod=acp)  # an IndexError before
    with pytest.raises(ValueError, match=r"^t must hold one integer timestep .*, got torch.int64 \(1,\)$"):
        adm(TinyNet(4), x0, torch.zeros(1, dtype=torch.long), y=y, alphas_cumprod=acp)
    with pytest.raises(ValueError, match=r"^alphas_cumprod must be a 1-D tensor of T >= 2 values, got \(1,\)$"):
        adm(TinyNet(4), x0, torch.zeros(4, dtype=torch.long), y=y, alphas_cumprod=acp[:1])
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got 2.5$"):
        inspect.unwrap(sample_timesteps)(2.5, 10)  # torch's randint() TypeError before


class TanhNet(nn.Module):
    """A parameter-free image backbone F(x, c_noise) = tanh(x) (1 + c_noise)."""

    def forward(self, x: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(x) * (1 + noise[:, None, None, None].to(x.dtype))


def test_objectives_apply_their_own_settings() -> None:
    """EDMObjective's sigma_data reaches both the preconditioning and the loss weight, its rho the sampling
    schedule; ADMObjective samples ADM's respaced chain (it keeps T - 1, the noisiest step)."""
    edm, model = EDMObjective(sigma_data=1.0, sigma_min=0.01, sigma_max=10.0, rho=3.0), TanhNet()
    torch.testing.assert_close(edm.sampling_sigmas(5), karras_sigmas(5, 0.01, 10.0, rho=3.0))
    x0, noise, sigma = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), torch.tensor([0.1, 1.0, 5.0])
    den = EDMPrecond(model, sigma_data=1.0)
    weight = (sigma**2 + 1.0) / sigma**2  # (sigma^2 + s_d^2) / (sigma s_d)^2 at s_d = 1
    expected = weight * ((den(x0 + sigma[:, None, None, None] * noise, sigma) - x0) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(edm.loss(model, x0, None, {"sigma": sigma, "noise": noise}), expected)
    adm, kept = ADMObjective(), space_timesteps(1000, 100)
    assert kept[-1] == 999
    want = torch.cat([alpha_bar_to_sigma(adm.alphas_cumprod[kept]).flip(0), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(adm.sampling_sigmas(100), want.float())
