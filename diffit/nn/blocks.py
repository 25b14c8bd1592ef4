"""DiffiT blocks: the Transformer block (paper Eq. 7-8) and the image-space ResBlock (Eq. 9-10)."""

import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from diffit.nn.attention import TMSA


def group_count(groups: int, dim: int) -> int:
    """The largest GroupNorm group count <= ``groups`` that divides ``dim``."""
    groups = min(groups, dim)
    while dim % groups:
        groups -= 1
    return groups


def layer_norm_fp32(x: Float[Tensor, "*batch d"], eps: float = 1e-6) -> Float[Tensor, "*batch d"]:
    """LayerNorm without affine parameters, computed in fp32 whatever the autocast dtype (stable statistics)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in fp32 (bf16 sums of many pixels lose precision)."""

    def forward(self, x: Tensor) -> Tensor:
        """GroupNorm computed in fp32, returned in the input's dtype."""
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


class Mlp(nn.Module):
    """Token-wise MLP: Linear (``fc1``) -> GELU (tanh approximation) -> Linear (``fc2``)."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        """
        Args:
            dim: input and output width.
            hidden_dim: hidden width (4 * dim in DiffiT).
        """
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        """fc2(GELU-tanh(fc1(x))), token-wise."""
        return self.fc2(self.act(self.fc1(x)))


class TMSABlock(nn.Module):
    """The DiffiT Transformer block:

        x^ = TMSA(LN(x), x_t) + x          (Eq. 7)
        x  = MLP(LN(x^)) + x^              (Eq. 8)

    LayerNorms have no affine parameters (eps 1e-6) and run in fp32; MLP ratio 4 with GELU-tanh.
    """

    def __init__(
        self, *, dim: int, time_dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0, qk_norm: bool = False
    ) -> None:
        """
        Args:
            dim: token width.
            time_dim: width of the time token.
            num_heads: attention heads.
            window: attention window side (the whole token grid for global attention).
            mlp_ratio: MLP hidden width as a multiple of ``dim``.
            qk_norm: per-head LayerNorm of queries and keys (see :class:`TMSA`).
        """
        super().__init__()
        self.attn = TMSA(dim=dim, time_dim=time_dim, num_heads=num_heads, window=window, qk_norm=qk_norm)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))

    def forward(self, x: Float[Tensor, "b n d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b n d"]:
        """Tokens (B, window**2, D): attention over the whole sequence."""
        x = x + self.attn(layer_norm_fp32(x), t)
        return x + self.mlp(layer_norm_fp32(x))

    def forward_grid(self, x: Float[Tensor, "b h w d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b h w d"]:
        """A (B, H, W, D) grid: attention inside local windows; LN and MLP are token-wise anyway."""
        x = x + self.attn.forward_grid(layer_norm_fp32(x), t)
        return x + self.mlp(layer_norm_fp32(x))


class ResBlock(nn.Module):
    """The DiffiT ResBlock of the image-space model:

        x^ = Conv3x3(Swish(GN(x)))            (Eq. 9)
        x  = DiffiT-Block(x^, x_t) + x        (Eq. 10)

    where the DiffiT block attends inside local ``window`` x ``window`` windows.
    """

    def __init__(
        self,
        *,
        dim: int,
        time_dim: int,
        num_heads: int,
        window: int,
        mlp_ratio: float = 4.0,
        groups: int = 32,
        qk_norm: bool = False,
    ) -> None:
        """
        Args:
            dim: channels in and out.
            time_dim: width of the time token.
            num_heads: attention heads of the windowed TMSA.
            window: local attention window side; must divide the feature map's height and width.
            mlp_ratio: MLP hidden width as a multiple of ``dim``.
            groups: GroupNorm groups (reduced to a divisor of ``dim`` when needed).
            qk_norm: per-head LayerNorm of queries and keys.
        """
        super().__init__()
        self.norm = GroupNorm32(group_count(groups, dim), dim, eps=1e-6)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.block = TMSABlock(
            dim=dim, time_dim=time_dim, num_heads=num_heads, window=window, mlp_ratio=mlp_ratio, qk_norm=qk_norm
        )

    def forward(self, x: Float[Tensor, "b c h w"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b c h w"]:
        """x + TMSABlock(Conv3x3(SiLU(GN(x)))) inside local windows (paper Eq. 9-10)."""
        h = self.conv(self.act(self.norm(x)))  # Eq. 9
        h = rearrange(h, "b c h w -> b h w c")
        h = self.block.forward_grid(h, t)
        return rearrange(h, "b h w c -> b c h w").to(x.dtype) + x  # Eq. 10
