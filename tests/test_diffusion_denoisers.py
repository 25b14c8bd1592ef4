import inspect
import math
import re

import pytest
import torch

from diffit.diffusion import (
    EDMPrecond,
    VPEpsDenoiser,
    betas_to_alphas_cumprod,
    edm_coefficients,
    linear_betas,
    respaced_sigmas,
    sample_ddpm,
    space_timesteps,
)

F64 = torch.float64


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_coefficients_match_table_1(sigma_data: float) -> None:
    sigma = torch.tensor([0.002, 0.1, sigma_data, 1.0, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sigma_data**2 / (s**2 + sigma_data**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sigma_data / math.sqrt(s**2 + sigma_data**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sigma_data**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
    # The design goals (EDM App. B.6): unit-variance network input and unit-variance training target.
    torch.testing.assert_close(c_in**2 * (sigma_data**2 + sigma**2), torch.ones_like(sigma))
    target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))


def test_edm_precond_wraps_the_backbone() -> None:
    seen: dict[str, torch.Tensor | None] = {}

    def backbone(x_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.update(x_in=x_in, c_noise=c_noise, y=y)
        return torch.tanh(x_in) + c_noise[:, None, None, None]

    den = EDMPrecond(backbone, sigma_data=0.5)
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=F64)
    y = torch.tensor([1, 0, 2])
    out = den(x, sigma, y)
    c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in edm_coefficients(sigma, 0.5))
    torch.testing.assert_close(seen["x_in"], c_in * x)
    torch.testing.assert_close(seen["c_noise"], c_noise.flatten())
    assert torch.equal(seen["y"], y)
    torch.testing.assert_close(out, c_skip * x + c_out * (torch.tanh(c_in * x) + c_noise))
    den(x, sigma)
    assert seen["y"] is None
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(backbone, sigma_data=0.0)


def test_vp_eps_denoiser_is_exact_with_an_oracle_and_maps_timesteps() -> None:
    # A point mass x0*: the exact eps is (x_t - sqrt(a) x0*) / sqrt(1 - a), so x0_hat must be x0* exactly.
    acp = betas_to_alphas_cumprod(linear_betas())
    x0_star = torch.tensor([0.3, -0.7, 1.2], dtype=F64)
    seen: list[torch.Tensor] = []

    def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.append(t)
        a = acp[t.long()][:, None]
        eps = (x_t - a.sqrt() * x0_star) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    den = VPEpsDenoiser(model, alphas_cumprod=acp)
    sigmas = respaced_sigmas(acp, 25, dtype=F64)
    x = torch.randn(2, 3, dtype=F64)
    for s in sigmas[:-1]:
        x0, v = den.denoise_with_variance(x0_star + s * x, s.expand(2))
        torch.testing.assert_close(x0, x0_star.expand(2, 3), rtol=1e-9, atol=1e-9)
        assert v is not None and v.shape == (2, 3)
    # The model saw exactly the kept DDPM timesteps, as floats.
    assert [int(t[0]) for t in seen] == space_timesteps(1000, 25)[::-1]
    assert all(t.dtype == F64 for t in seen)
    # The whole ancestral chain lands on the point mass.
    out = sample_ddpm(den, torch.randn(2, 3, dtype=F64) * sigmas[0], sigmas)
    torch.testing.assert_close(out, x0_star.expand(2, 3), rtol=1e-8, atol=1e-8)


def test_vp_eps_denoiser_channel_check_and_fixed_variance() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    eps_only = VPEpsDenoiser(lambda x, t, y: torch.zeros_like(x), alphas_cumprod=acp, learned_sigma=False)
    x, sigma = torch.randn(2, 3, dtype=F64), torch.tensor([1.0, 2.0], dtype=F64)
    x0, v = eps_only.denoise_with_variance(x, sigma)
    assert v is None and torch.equal(x0, x)
    learned = VPEpsDenoiser(lambda x, t, y: torch.zeros_like(x), alphas_cumprod=acp)
    with pytest.raises(ValueError, match="6 channels"):
        learned(x, sigma)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        VPEpsDenoiser(lambda x, t, y: x, alphas_cumprod=torch.tensor([1.5], dtype=F64))


def test_edm_precond_refuses_bad_sigma_data_and_outputs_of_another_shape() -> None:
    for sigma_data in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
            EDMPrecond(lambda x, c, y: x, sigma_data=sigma_data)
        with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
            edm_coefficients(torch.ones(2), sigma_data)
    x, sigma = torch.randn(2, 3, 4, 4), torch.ones(2)
    for wrong in (lambda a: a[:, :1], lambda a: a[:1]):
        with pytest.raises(ValueError, match=r"model must return a tensor shaped like x \(2, 3, 4, 4\)"):
            EDMPrecond(lambda a, c, y, wrong=wrong: wrong(a))(x, sigma)


def test_one_sigma_for_a_batch_is_refused_not_broadcast() -> None:
    """Without the type checks one sigma, or a (B, 1), was broadcast over the batch (or named the backbone's
    noise_label); the wrappers check sigma's shape once per call, for free."""

    def backbone(x: torch.Tensor, noise_label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)  # a backbone of one's own that checks nothing

    x, forward = torch.randn(2, 3), inspect.unwrap(EDMPrecond.forward)
    for sigma in (torch.ones(1), torch.tensor(1.0), torch.ones(2, 1)):
        got = re.escape(str(tuple(sigma.shape)))
        with pytest.raises(
            ValueError, match=rf"^sigma must have shape \(2,\), one noise level per sample of x, got {got}$"
        ):
            forward(EDMPrecond(backbone), x, sigma)
    acp = betas_to_alphas_cumprod(linear_betas())
    vp = VPEpsDenoiser(lambda x, t, y=None: torch.zeros(x.shape[0], 6), alphas_cumprod=acp)
    with pytest.raises(
        ValueError, match=r"^sigma must have shape \(2,\), one noise level per sample of x, got \(1,\)$"
    ):
        inspect.unwrap(VPEpsDenoiser.denoise_with_variance)(vp, x, torch.ones(1))


def test_edm_precond_computes_low_precision_sigmas_coefficients_in_float32() -> None:
    """c_noise = ln(sigma)/4 (and c_skip, c_out, c_in) from a bf16 sigma are the float32 ones of its value: in bf16
    they would round to 8 bits."""
    seen: dict[str, torch.Tensor] = {}

    def backbone(x_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.update(x_in=x_in, c_noise=c_noise)
        return torch.ones_like(x_in)

    x = torch.randn(2, 1, 2, 2, dtype=torch.bfloat16)
    sigma = torch.tensor([0.37, 13.0], dtype=torch.bfloat16)
    out = EDMPrecond(backbone, sigma_data=0.5)(x, sigma)
    c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in edm_coefficients(sigma.float(), 0.5))
    assert seen["c_noise"].dtype == torch.float32 and torch.equal(seen["c_noise"], c_noise.flatten())
    assert torch.equal(seen["x_in"], c_in.to(x.dtype) * x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (c_skip * x.float() + c_out).to(x.dtype), rtol=0, atol=1e-2)


def test_vp_eps_denoiser_passes_fractional_timesteps_only_when_asked() -> None:
    """Halfway (in log sigma) between the chain's sigmas of t = 10 and 11: t = 10.5 with continuous_timesteps, the
    nearest integer otherwise; sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
    acp = betas_to_alphas_cumprod(linear_betas())
    s10, s11 = (((1 - acp[t]) / acp[t]).sqrt().item() for t in (10, 11))
    sigma = torch.tensor([math.sqrt(s10 * s11), s10], dtype=F64)
    seen: list[torch.Tensor] = []

    def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x_t)

    x = torch.zeros(2, 3, dtype=F64)
    VPEpsDenoiser(model, alphas_cumprod=acp, learned_sigma=False, continuous_timesteps=True)(x, sigma)
    VPEpsDenoiser(model, alphas_cumprod=acp, learned_sigma=False)(x, sigma)
    torch.testing.assert_close(seen[0], torch.tensor([10.5, 10.0], dtype=F64), rtol=0, atol=1e-9)
    assert seen[1].tolist()[1] == 10.0 and seen[1].tolist()[0] in (10.0, 11.0)
