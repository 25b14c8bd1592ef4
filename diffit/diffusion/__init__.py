"""diffit.diffusion: noise schedules, denoiser wrappers, guidance, losses and samplers.

Independent of the backbones: a model is only a callable. Every sampler has the signature
``sample_X(denoiser, x, sigmas, *, callback=None, noise=None, ...) -> x`` (see ``sampling`` for the
denoiser contract).
"""

from diffit.diffusion.denoisers import EDMPrecond, VPEpsDenoiser, check_sigma_data, edm_coefficients
from diffit.diffusion.guidance import ClassifierFreeGuidance, GuidanceScale, PowerCosineScale
from diffit.diffusion.losses import (
    adm_hybrid_loss,
    check_log_normal,
    discretized_gaussian_log_likelihood,
    edm_loss,
    normal_kl,
    sample_timesteps,
    sample_training_sigmas,
)
from diffit.diffusion.multistep import sample_dpmpp_3m, sample_ipndm, sample_unipc
from diffit.diffusion.noise import NoiseSampler, PerSampleNoise, check_seeds, global_noise, per_sample_noise
from diffit.diffusion.ode_samplers import sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun
from diffit.diffusion.planning import (
    MIN_STEPS,
    SamplingPlan,
    final_for,
    plan_sampling,
    resolve_sampling,
    steps_for_nfe,
)
from diffit.diffusion.sampling import Callback, Denoiser, bind_labels, check_sigmas
from diffit.diffusion.schedules import (
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
from diffit.diffusion.sde_samplers import sample_ddpm, sample_edm_stochastic, sample_euler_maruyama
from diffit.diffusion.step_schedules import (
    SCHEDULE_NAMES,
    SCHEDULES,
    loglinear_sigmas,
    optimized_sigmas,
    schedule_sigmas,
    vp_time_sigmas,
)
from diffit.diffusion.toy import GaussianMixture

# Name -> sampler, for the CLI (the only place that maps a string to a function).
SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
    "ipndm": sample_ipndm,
    "ddim": sample_ddim,
    "edm-stochastic": sample_edm_stochastic,
    "euler-maruyama": sample_euler_maruyama,
    "ddpm": sample_ddpm,
}

__all__ = [
    "MIN_STEPS",
    "SAMPLERS",
    "SCHEDULES",
    "SCHEDULE_NAMES",
    "SamplingPlan",
    "Callback",
    "ClassifierFreeGuidance",
    "Denoiser",
    "EDMPrecond",
    "GaussianMixture",
    "GuidanceScale",
    "NoiseSampler",
    "PerSampleNoise",
    "PowerCosineScale",
    "VPEpsDenoiser",
    "adm_hybrid_loss",
    "alpha_bar_to_sigma",
    "betas_to_alphas_cumprod",
    "bind_labels",
    "check_log_normal",
    "check_seeds",
    "check_sigma_data",
    "check_sigmas",
    "cosine_betas",
    "discretized_gaussian_log_likelihood",
    "edm_coefficients",
    "edm_loss",
    "final_for",
    "global_noise",
    "karras_sigmas",
    "linear_betas",
    "loglinear_sigmas",
    "normal_kl",
    "optimized_sigmas",
    "per_sample_noise",
    "plan_sampling",
    "resolve_sampling",
    "respaced_sigmas",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_edm_stochastic",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_ipndm",
    "sample_timesteps",
    "sample_training_sigmas",
    "sample_unipc",
    "schedule_sigmas",
    "sigma_to_alpha_bar",
    "sigma_to_timestep",
    "space_timesteps",
    "steps_for_nfe",
    "timestep_to_sigma",
    "vp_time_sigmas",
]
