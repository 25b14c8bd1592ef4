"""Your own network of TMSA blocks, trained, resumed, checkpointed and sampled by diffit's library and CLI.

    python examples/tmsa_in_your_model.py --steps 100 --out runs/my-model
    diffit sample --ckpt runs/my-model --model-factory examples.tmsa_in_your_model:MyDenoiser --out my.png

`TMSABlock` is the DiffiT Transformer block: its attention's queries, keys and values depend on the time
token, so the attention pattern changes with the noise level. `forward_grid` attends inside local w x w
windows of a (B, H, W, C) grid. What diffit needs from the network is the `diffit.nn.Backbone` contract:
`forward(x, noise_label, y=None)`, `in_channels`, `resolution`, `num_classes`; `@capture_config` records the
constructor's arguments so that checkpoints can rebuild it (given the class: files never name code to import).
"""

import argparse

import torch
from einops import rearrange
from torch import Tensor, nn

from diffit.checkpoint import load_model
from diffit.diffusion import sample_heun
from diffit.distributed import init_distributed
from diffit.generate import generate
from diffit.nn import LabelEmbedding, TimestepEmbedding, TMSABlock, capture_config, condition_token, count_params
from diffit.objectives import EDMObjective
from diffit.runs import training_data
from diffit.train import train


class MyDenoiser(nn.Module):
    """Conv stem -> N windowed TMSA blocks conditioned on the noise level (and class) -> conv head."""

    @capture_config
    def __init__(
        self,
        *,
        resolution: int = 16,
        in_channels: int = 1,
        num_classes: int | None = 10,
        dim: int = 64,
        depth: int = 2,
        window: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.resolution, self.in_channels, self.num_classes = resolution, in_channels, num_classes  # the contract
        self.time = TimestepEmbedding(dim=128)  # sinusoids of the noise level -> Linear -> SiLU -> Linear
        self.label = LabelEmbedding(num_classes=num_classes, dim=128) if num_classes else None
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            TMSABlock(dim=dim, time_dim=128, num_heads=heads, window=window) for _ in range(depth)
        )
        self.head = nn.Conv2d(dim, in_channels, 3, padding=1)

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        t = condition_token(self.time, self.label, noise_label, y)  # (b, 128): the time token x_t of TMSA
        h = rearrange(self.stem(x), "b c h w -> b h w c")
        for block in self.blocks:
            h = block.forward_grid(h, t)  # local windows, no shift (DiffiT's image-space attention)
        return self.head(rearrange(h, "b h w c -> b c h w"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="runs/my-model")
    args = parser.parse_args(argv)

    data = training_data(None)  # the bundled 16x16 digits, held in memory (exact, seekable batches)
    torch.manual_seed(0)
    net = MyDenoiser(resolution=data.resolution, in_channels=data.channels, num_classes=data.num_classes)
    print(f"MyDenoiser: {count_params(net) / 1e6:.2f}M parameters, config {net.config}")
    dist = init_distributed("cpu")
    common = dict(model=net, objective=EDMObjective(), run_dir=args.out, dist=dist, batch_size=32, lr=1e-3)
    batches = data.batches(batch_size=32, seed=0)
    half = train(data=batches, steps=args.steps // 2, ckpt_every=max(1, args.steps // 4), **common)
    done = train(data=batches, steps=args.steps, resume=True, **common)  # continues bit-identically
    print(f"trained {half.step} steps, resumed to {done.step}; checkpoint {done.checkpoint}")

    loaded = load_model(args.out, build=MyDenoiser)  # the EMA weights, rebuilt from the recorded config
    images = generate(
        loaded.model, objective=loaded.objective, sampler=sample_heun, sigmas=loaded.objective.sampling_sigmas(12),
        seeds=range(10), labels=torch.arange(10),
    )  # fmt: skip
    print(f"sampled {tuple(images.shape)} uint8 images, mean {images.float().mean():.1f}")


if __name__ == "__main__":
    main()
