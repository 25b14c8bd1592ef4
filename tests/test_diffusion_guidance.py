import inspect
import math

import pytest
import torch

from diffit.diffusion import (
    ClassifierFreeGuidance,
    GaussianMixture,
    PowerCosineScale,
    VPEpsDenoiser,
    betas_to_alphas_cumprod,
    linear_betas,
    timestep_to_sigma,
)

F64 = torch.float64


def mixture4() -> GaussianMixture:
    """3 classes in R^4 (dim 1 plays the role of channels)."""
    means = torch.tensor([[1.0, 0.0, 0.5, -1.0], [-1.0, 0.5, 0.0, 1.0], [0.0, -1.0, 1.0, 0.5]], dtype=F64)
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.2], dtype=F64))


def batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(b, 4, dtype=F64) * 2
    sigma = torch.linspace(0.1, 5.0, b, dtype=F64)
    y = torch.arange(b) % 3
    return x, sigma, y


def test_scale_semantics() -> None:
    gm = mixture4()
    x, sigma, y = batch()
    cond, uncond = gm(x, sigma, y), gm(x, sigma, torch.full_like(y, 3))
    # s = 1 is the conditional model (and skips the unconditional pass) ...
    one = ClassifierFreeGuidance(gm, num_classes=3, scale=1.0)
    assert torch.equal(one(x, sigma, y), cond) and one.evaluations(sigma) == 1
    # ... also when the scale is a schedule that happens to be 1 (then both passes run).
    ones = ClassifierFreeGuidance(gm, num_classes=3, scale=lambda s: torch.ones_like(s))
    torch.testing.assert_close(ones(x, sigma, y), cond, rtol=1e-12, atol=1e-12)
    assert ones.evaluations(sigma) == 2
    # s = 0 is the unconditional model; s = 2.5 extrapolates: uncond + s (cond - uncond).
    zero = ClassifierFreeGuidance(gm, num_classes=3, scale=0.0)
    torch.testing.assert_close(zero(x, sigma, y), uncond, rtol=1e-12, atol=1e-12)
    w = ClassifierFreeGuidance(gm, num_classes=3, scale=2.5)
    torch.testing.assert_close(w(x, sigma, y), uncond + 2.5 * (cond - uncond), rtol=1e-12, atol=1e-12)


def test_guidance_channels_3_keeps_the_rest_conditional() -> None:
    gm = mixture4()
    x, sigma, y = batch()
    cond, uncond = gm(x, sigma, y), gm(x, sigma, torch.full_like(y, 3))
    out = ClassifierFreeGuidance(gm, num_classes=3, scale=4.0, guidance_channels=3)(x, sigma, y)
    assert torch.equal(out[:, 3], cond[:, 3])
    torch.testing.assert_close(out[:, :3], (uncond + 4.0 * (cond - uncond))[:, :3], rtol=1e-12, atol=1e-12)


def test_learned_variance_comes_from_the_conditional_half() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())

    def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # eps depends on the label; the variance channels encode the label so we can tell the halves apart.
        label = y.to(x_t.dtype)[:, None]
        return torch.cat([0.1 * x_t + label, torch.tanh(label - 2).expand_as(x_t)], dim=1)

    vp = VPEpsDenoiser(model, alphas_cumprod=acp)
    x, sigma, y = batch()
    cfg = ClassifierFreeGuidance(vp, num_classes=3, scale=3.0, guidance_channels=3)
    x0, v = cfg.denoise_with_variance(x, sigma, y)
    _, v_cond = vp.denoise_with_variance(x, sigma, y)
    assert torch.equal(v, v_cond)
    torch.testing.assert_close(x0, cfg(x, sigma, y), rtol=0, atol=0)


def test_interval_limits_are_honoured() -> None:
    gm = mixture4()
    x, _, y = batch(4)
    lo, hi = 0.5, 2.0
    cfg = ClassifierFreeGuidance(gm, num_classes=3, scale=3.0, interval=(lo, hi))
    sigma = torch.tensor([0.4999, 0.5, 2.0, 2.0001], dtype=F64)  # out, edge, edge, out
    assert cfg.active(sigma).tolist() == [False, True, True, False]
    out = cfg(x, sigma, y)
    cond, uncond = gm(x, sigma, y), gm(x, sigma, torch.full_like(y, 3))
    guided = uncond + 3.0 * (cond - uncond)
    assert torch.equal(out[[0, 3]], cond[[0, 3]])
    torch.testing.assert_close(out[[1, 2]], guided[[1, 2]], rtol=1e-12, atol=1e-12)
    # Entirely outside: only the conditional pass runs and one evaluation is counted.
    calls: list[int] = []

    def counting(x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return gm(x, s, y)

    outside = torch.full((4,), 3.0, dtype=F64)
    cfg = ClassifierFreeGuidance(counting, num_classes=3, scale=3.0, interval=(lo, hi))
    assert torch.equal(cfg(x, outside, y), gm(x, outside, y)) and calls == [4]
    assert cfg.evaluations(outside) == 1 and cfg.evaluations(sigma) == 2
    cfg(x, sigma, y)
    assert calls == [4, 8]  # one batched forward of [cond, uncond]


def test_power_cosine_scale_matches_release_formula() -> None:
    acp = betas_to_alphas_cumprod(linear_betas())
    w, T = 4.4, 1000
    schedule = PowerCosineScale(w, alphas_cumprod=acp)
    t = torch.tensor([0.0, 100.0, 250.0, 500.0, 750.0, 999.0], dtype=F64)
    expected = 1 + (w - 1) * 0.5 * (1 - torch.cos(math.pi * (1 - t / T) ** 4))
    torch.testing.assert_close(schedule(timestep_to_sigma(t, acp)), expected, rtol=1e-9, atol=1e-9)
    assert schedule(timestep_to_sigma(torch.tensor([0.0], dtype=F64), acp)).item() == pytest.approx(w)
    cfg = ClassifierFreeGuidance(mixture4(), num_classes=3, scale=schedule, guidance_channels=3)
    x, sigma, y = batch()
    gm = mixture4()
    cond, uncond = gm(x, sigma, y), gm(x, sigma, torch.full_like(y, 3))
    s = schedule(sigma)[:, None]
    torch.testing.assert_close(cfg(x, sigma, y)[:, :3], (uncond + s * (cond - uncond))[:, :3])


def test_bad_guidance_arguments() -> None:
    gm = mixture4()
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(gm, num_classes=3, scale=-1.0)
    with pytest.raises(ValueError, match="w"):
        PowerCosineScale(-0.5, alphas_cumprod=betas_to_alphas_cumprod(linear_betas()))
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(gm, num_classes=3, scale=2.0, interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="guidance_channels"):
        ClassifierFreeGuidance(gm, num_classes=3, scale=2.0, guidance_channels=0)
    acp = betas_to_alphas_cumprod(linear_betas())
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale .* must be a finite number >= 0"):
            ClassifierFreeGuidance(gm, num_classes=3, scale=value)
        with pytest.raises(ValueError, match="w .* must be a finite number >= 0"):
            PowerCosineScale(value, alphas_cumprod=acp)
        with pytest.raises(ValueError, match="power must be a finite number > 0"):
            PowerCosineScale(2.0, alphas_cumprod=acp, power=value)
    with pytest.raises(ValueError, match="alphas_cumprod must hold values in \\(0, 1\\)"):
        PowerCosineScale(2.0, alphas_cumprod=torch.tensor([1.5, 2.0]))
    init = inspect.unwrap(ClassifierFreeGuidance.__init__)  # as users run it: the type checks would answer first
    with pytest.raises(ValueError, match=r"^guidance_channels must be an integer >= 1, got 1.5$"):  # a slice later
        init(
            ClassifierFreeGuidance.__new__(ClassifierFreeGuidance), gm, num_classes=3, scale=2.0, guidance_channels=1.5
        )
    x, sigma, _ = batch()
    guided = ClassifierFreeGuidance(gm, num_classes=3, scale=2.0)
    for method in (ClassifierFreeGuidance.forward, ClassifierFreeGuidance.denoise_with_variance):
        with pytest.raises(ValueError, match=r"^y must be the class labels \(B,\) to guide towards, got NoneType$"):
            inspect.unwrap(method)(guided, x, sigma, None)  # torch.full_like's TypeError before


def test_release_pipeline_on_latent_shaped_tensors() -> None:
    """VPEpsDenoiser (learned sigma) -> CFG on 3 of 4 channels with the power-cosine scale -> 10-step DDPM."""
    from functools import partial

    from diffit.diffusion import per_sample_noise, respaced_sigmas, sample_ddpm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    table = torch.nn.Embedding(4, 8)

    def model(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(conv(x_t) + table(y)[:, :, None, None] + t[:, None, None, None] / 1000)

    acp = betas_to_alphas_cumprod(linear_betas())
    cfg = ClassifierFreeGuidance(
        VPEpsDenoiser(model, alphas_cumprod=acp),
        num_classes=3,
        scale=PowerCosineScale(4.4, alphas_cumprod=acp),
        guidance_channels=3,
    )
    sigmas = respaced_sigmas(acp, 10)
    seeds, y = [7, 8], torch.tensor([2, 0])

    def run(idx: list[int]) -> tuple[torch.Tensor, int]:
        noise = per_sample_noise([seeds[i] for i in idx], (4, 8, 8))
        nfe: list[int] = []
        with torch.no_grad():
            x = noise() * sigmas[0]
            out = sample_ddpm(partial(cfg, y=y[idx]), x, sigmas, noise=noise, callback=lambda s: nfe.append(s["nfe"]))
        return out, nfe[-1]

    both, nfe = run([0, 1])
    assert both.shape == (2, 4, 8, 8) and bool(torch.isfinite(both).all()) and nfe == 20
    torch.testing.assert_close(torch.cat([run([0])[0], run([1])[0]]), both, rtol=1e-5, atol=1e-5)


def test_an_interval_of_one_sigma_guides_at_that_noise_level_only() -> None:
    """lo == hi is a closed interval holding one noise level (what a sampler evaluates exactly), not an error."""
    gm = mixture4()
    x, _, y = batch(3)
    cfg = ClassifierFreeGuidance(gm, num_classes=3, scale=2.0, interval=(1.0, 1.0))
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    assert cfg.active(sigma).tolist() == [False, True, False]
    cond, uncond = gm(x, sigma, y), gm(x, sigma, torch.full_like(y, 3))
    out = cfg(x, sigma, y)
    torch.testing.assert_close(out[1], (uncond + 2.0 * (cond - uncond))[1], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[[0, 2]], cond[[0, 2]])
