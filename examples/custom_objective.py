"""A training objective of your own: rectified flow (Liu et al. 2023, with SD3's logit-normal t) on the digits.

    python examples/custom_objective.py --steps 300 --out runs/flow

x_t = (1 - t) x0 + t eps and the network predicts v = eps - x0. Samplers integrate in sigma space
(x = x0 + sigma eps), so the objective also says how to read the network as a denoiser there:
sigma = t / (1 - t), x_t = x / (1 + sigma), x0_hat = x_t - t v_hat.
"""

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffit.diffusion import sample_euler
from diffit.distributed import init_distributed
from diffit.generate import generate
from diffit.nn import capture_config, diffit_tiny
from diffit.runs import training_data
from diffit.train import train


class RectifiedFlow:
    """Follows ``diffit.objectives.Objective``: draw, loss, denoiser, sampling_sigmas."""

    default_sampler, default_steps = "euler", 32

    @capture_config  # checkpoints record {"logit_mean": ..., "logit_std": ...}
    def __init__(self, *, logit_mean: float = 0.0, logit_std: float = 1.0, t_max: float = 0.995) -> None:
        self.logit_mean, self.logit_std, self.t_max = logit_mean, logit_std, t_max

    def draw(self, generator: torch.Generator, n: int, sample_shape: tuple[int, ...]) -> dict[str, Tensor]:
        t = torch.sigmoid(torch.randn(n, generator=generator) * self.logit_std + self.logit_mean)
        return {"t": t, "noise": torch.randn((n, *sample_shape), generator=generator)}

    def loss(self, model: nn.Module, x0: Tensor, y: Tensor | None, draws: dict[str, Tensor]) -> Tensor:
        t, noise = draws["t"].to(x0), draws["noise"].to(x0)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        v = model(x_t, 1000 * t, y)  # noise_label: t scaled like a DDPM timestep
        return (v.float() - (noise - x0)).square().flatten(1).mean(1)

    def denoiser(self, model: nn.Module) -> Callable[..., Tensor]:
        def denoise(x: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
            t = (sigma / (1 + sigma)).to(x.dtype)
            x_t = x / (1 + sigma.to(x.dtype))[:, None, None, None]
            return x_t - t[:, None, None, None] * model(x_t, 1000 * t, y).to(x.dtype)

        return denoise

    def sampling_sigmas(self, steps: int) -> Tensor:
        t = torch.linspace(self.t_max, 0, steps + 1)[:-1]  # uniform in t, the flow's straight-line time
        return torch.cat([t / (1 - t), torch.zeros(1)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/flow")
    args = parser.parse_args(argv)
    data, flow = training_data(None), RectifiedFlow()
    torch.manual_seed(0)
    model = diffit_tiny()
    result = train(
        model=model, objective=flow, data=data.batches(batch_size=32, seed=0), run_dir=args.out,
        dist=init_distributed("cpu"), steps=args.steps, batch_size=32, lr=1e-3, warmup=20, ema=0.99,
    )  # fmt: skip
    images = generate(model.eval(), objective=flow, sampler=sample_euler, sigmas=flow.sampling_sigmas(16),
                      seeds=range(10), labels=torch.arange(10))  # fmt: skip
    print(f"{result.status} at step {result.step}; sampled {tuple(images.shape)}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    main()
