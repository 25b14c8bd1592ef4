"""TMSA blocks inside your own network: a small time-conditioned token mixer for 2D feature maps.

    python examples/tmsa_in_your_model.py

`TMSABlock` is the DiffiT Transformer block: its attention's queries, keys and values depend on the time
token, so the attention pattern changes with the noise level. `forward` attends over a whole token sequence
(a window equal to the grid); `forward_grid` attends inside local w x w windows of a (B, H, W, C) grid.
"""

import torch
from einops import rearrange
from torch import nn

from diffit.nn import TimestepEmbedding, TMSABlock, count_params


class MyDenoiser(nn.Module):
    """Conv stem -> N windowed TMSA blocks conditioned on a noise level -> conv head."""

    def __init__(self, *, channels: int = 3, dim: int = 64, depth: int = 2, window: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.time = TimestepEmbedding(dim=128)  # sinusoids of the noise level -> Linear -> SiLU -> Linear
        self.stem = nn.Conv2d(channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            TMSABlock(dim=dim, time_dim=128, num_heads=heads, window=window) for _ in range(depth)
        )
        self.head = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        t = self.time(noise_level)  # (b, 128): the time token x_t of TMSA
        h = rearrange(self.stem(x), "b c h w -> b h w c")
        for block in self.blocks:
            h = block.forward_grid(h, t)  # local windows, no shift (DiffiT's image-space attention)
        return self.head(rearrange(h, "b h w c -> b c h w"))


def main() -> None:
    torch.manual_seed(0)
    model = MyDenoiser()
    x, noise_level = torch.randn(2, 3, 16, 16), torch.rand(2) * 999
    out = model(x, noise_level)
    out.square().mean().backward()
    print(
        f"output {tuple(out.shape)}, {count_params(model) / 1e6:.2f}M parameters, gradients reach the TMSA "
        f"time projection: {model.blocks[0].attn.qkv_temb.weight.grad.abs().sum() > 0}"
    )


if __name__ == "__main__":
    main()
