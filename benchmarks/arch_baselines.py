"""The two baselines of ``bench_architectures.py``, both following diffit's Backbone contract
(``forward(x, noise_label, y=None)``, ``in_channels``, ``resolution``, ``num_classes``; ``y == num_classes`` or
``y=None`` is the null class of classifier-free guidance, which the trainer's label dropout draws).

- :class:`UNetBaseline`: diffusers' ``UNet2DModel`` as a skeptical user would configure it for 16x16 digits
  (32/64/96 channels, attention in the lower two stages, class embedding added to the time embedding).
- :class:`DiTBaseline`: DiT (Peebles & Xie, ICCV 2023) in miniature, written here from the paper's equations:
  patch-2 tokens plus fixed 2D sin-cos positions, blocks of global multi-head attention and an MLP, each
  conditioned by adaLN-Zero on c = TimeEmbed(t) + LabelEmbed(y), and an adaLN final layer. Its initialisation
  is DiT's (xavier Linear layers, N(0, 0.02) time MLP, zero adaLN and output projections) except the label
  table, N(0, ``label_init_std``): 1 by default, the same as ``diffit_tiny``, because DiT's N(0, 0.02) leaves a
  small model blind to the label for its first few hundred steps, in DiT as in DiffiT (docs/benchmarks.md).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffit.nn import TimestepEmbedding, capture_config, sincos_pos_embed_2d


class UNetBaseline(nn.Module):
    """diffusers ``UNet2DModel``: ``layers_per_block`` ResNet blocks per stage, the time embedding added to
    every ResNet block, self-attention in the stages listed by ``attention``."""

    @capture_config
    def __init__(
        self,
        *,
        resolution: int = 16,
        in_channels: int = 1,
        num_classes: int | None = 10,
        channels: tuple[int, ...] = (32, 64, 96),
        attention: tuple[bool, ...] = (False, True, True),
        layers_per_block: int = 1,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.resolution, self.in_channels, self.num_classes = resolution, in_channels, num_classes
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        self.unet = UNet2DModel(
            sample_size=resolution, in_channels=in_channels, out_channels=in_channels, block_out_channels=channels,
            down_block_types=down, up_block_types=up, layers_per_block=layers_per_block,
            num_class_embeds=None if num_classes is None else num_classes + 1,
        )  # fmt: skip

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes is not None and y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, noise_label, class_labels=y if self.num_classes is not None else None).sample


class DiTBlock(nn.Module):
    """x += gate1 * Attn(modulate(LN(x))); x += gate2 * MLP(modulate(LN(x))), (shift, scale, gate) x 2 from c."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale1) + shift1
        q, k, v = rearrange(self.qkv(h), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        h = self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n e -> b n (h e)"))
        x = x + gate1 * h
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class DiTBaseline(nn.Module):
    """A DiT of ``depth`` adaLN-Zero blocks of width ``dim`` on ``patch`` x ``patch`` tokens."""

    @capture_config
    def __init__(
        self,
        *,
        resolution: int = 16,
        in_channels: int = 1,
        num_classes: int | None = 10,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        patch: int = 2,
        mlp_ratio: float = 4.0,
        label_init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.resolution, self.in_channels, self.num_classes = resolution, in_channels, num_classes
        self.patch, self.grid = patch, resolution // patch
        self.embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_pos_embed_2d(dim, self.grid)[None], persistent=False)
        self.t_embed = TimestepEmbedding(dim=dim)
        self.y_embed = None if num_classes is None else nn.Embedding(num_classes + 1, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final = nn.Linear(dim, patch * patch * in_channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.weight, std=label_init_std)
        for layer in [b.ada[1] for b in self.blocks] + [self.final_ada[1], self.final]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.t_embed(noise_label)
        if self.y_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embed(y)
        h = rearrange(self.embed(x), "b d h w -> b (h w) d") + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c)[:, None].chunk(2, dim=-1)
        h = self.final(F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale) + shift)
        return rearrange(h, "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid, p=self.patch, q=self.patch)
