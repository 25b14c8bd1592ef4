"""DiffiT blocks: the Transformer block (paper Eq. 7-8) and the image-space ResBlock (Eq. 9-10)."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from diffit.nn.attention import TMSA
from diffit.util import check_integer


def group_count(groups: int, dim: int) -> int:
    """The largest GroupNorm group count <= ``groups`` that divides ``dim``."""
    check_integer("groups", groups)
    groups = min(groups, dim)
    while dim % groups:
        groups -= 1
    return groups


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in fp32, or as it is if it is already fp64 (a float64 reference model keeps its precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def layer_norm_fp32(x: Float[Tensor, "*batch d"], eps: float = 1e-6) -> Float[Tensor, "*batch d"]:
    """LayerNorm without affine parameters, computed in fp32 whatever the autocast dtype (stable statistics)."""
    return F.layer_norm(at_least_fp32(x), x.shape[-1:], eps=eps).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in fp32 (bf16 sums of many pixels lose precision)."""

    def forward(self, x: Tensor) -> Tensor:
        """GroupNorm computed in fp32, returned in the input's dtype."""
        return F.group_norm(at_least_fp32(x), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


class Mlp(nn.Module):
    """Token-wise MLP: Linear (``fc1``) -> GELU (tanh approximation by default) -> Linear (``fc2``)."""

    def __init__(self, *, dim: int, hidden_dim: int, gelu: str = "tanh") -> None:
        """
        Args:
            dim: input and output width.
            hidden_dim: hidden width (4 * dim in DiffiT).
            gelu: "tanh" (the release's approximation) or "none" (exact erf GELU), as ``nn.GELU(approximate=)``.
        """
        super().__init__()
        if gelu not in ("tanh", "none"):
            raise ValueError(f"gelu must be 'tanh' or 'none', got {gelu!r}")
        if hidden_dim < 1:
            raise ValueError(f"the MLP's hidden width (dim * mlp_ratio) must be >= 1, got {hidden_dim}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=gelu)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        """fc2(GELU(fc1(x))), token-wise."""
        return self.fc2(self.act(self.fc1(x)))


# How the time token conditions a block: the paper's TMSA, and the alternatives of its ablation (Sec. 5).
TIME_CONDITIONINGS = ("tmsa", "adaln", "bias", "input")


def _per_token(v: Float[Tensor, "b d"], x: Tensor) -> Tensor:
    """A per-sample (b, d) vector viewed to broadcast over the token axes of x: (b, n, d) or (b, h, w, d)."""
    return v.view((v.shape[0],) + (1,) * (x.dim() - 2) + (v.shape[-1],))


def _modulate(x: Tensor, shift: Float[Tensor, "b d"], scale: Float[Tensor, "b d"]) -> Tensor:
    """adaLN's x * (1 + scale) + shift, per sample."""
    return x * (1 + _per_token(scale, x)) + _per_token(shift, x)


class TMSABlock(nn.Module):
    """The DiffiT Transformer block:

        x^ = TMSA(LN(x), x_t) + x          (Eq. 7)
        x  = MLP(LN(x^)) + x^              (Eq. 8)

    LayerNorms have no affine parameters (eps 1e-6) and run in fp32; the release's MLP is ratio 4 with GELU-tanh.

    ``time_conditioning`` replays the paper's ablation of how x_t enters (everything else unchanged):

    - ``"tmsa"`` (default, the paper): x_t in queries, keys and values (Eq. 3-5).
    - ``"adaln"``: DiT's adaLN-Zero; plain attention, and (shift, scale, gate) for attention and MLP from
      Linear(SiLU(x_t)), zero-initialised (``adaln``).
    - ``"bias"``: time only in the relative position bias, B(x_t) = B + gather(x_t W_B) (``attn.bias_temb``).
    - ``"input"``: x_t projected (``time_in``) and added to every token at the attention's input; plain attention.
    """

    def __init__(
        self,
        *,
        dim: int,
        time_dim: int,
        num_heads: int,
        window: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        time_conditioning: str = "tmsa",
        gelu: str = "tanh",
    ) -> None:
        """
        Args:
            dim: token width.
            time_dim: width of the time token.
            num_heads: attention heads.
            window: attention window side (the whole token grid for global attention).
            mlp_ratio: MLP hidden width as a multiple of ``dim``.
            qk_norm: per-head LayerNorm of queries and keys (see :class:`TMSA`).
            time_conditioning: "tmsa" | "adaln" | "bias" | "input" (see above).
            gelu: the MLP's GELU, "tanh" (the release) or "none" (exact; faster on CPUs, see :class:`Mlp`).
        """
        super().__init__()
        if time_conditioning not in TIME_CONDITIONINGS:
            choices = ", ".join(TIME_CONDITIONINGS)
            raise ValueError(f"time_conditioning must be one of {choices}, got {time_conditioning!r}")
        if not 0 < mlp_ratio < math.inf:  # NaN too: int(dim * nan) raised "cannot convert float NaN to integer"
            raise ValueError(f"mlp_ratio must be a finite number > 0, got {mlp_ratio}")
        self.time_conditioning = time_conditioning
        self.attn = TMSA(dim=dim, time_dim=time_dim, num_heads=num_heads, window=window, qk_norm=qk_norm,
                         time_qkv=time_conditioning == "tmsa", time_bias=time_conditioning == "bias")  # fmt: skip
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio), gelu=gelu)
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 6 * dim)) if time_conditioning == "adaln" else None
        self.time_in = nn.Linear(time_dim, dim) if time_conditioning == "input" else None
        self.reset_conditioning()

    def reset_conditioning(self) -> None:
        """Zero the adaLN-Zero projection (each block starts as the identity); call after a model-wide init."""
        if self.adaln is not None:
            nn.init.zeros_(self.adaln[1].weight)
            nn.init.zeros_(self.adaln[1].bias)

    def _forward(self, x: Tensor, t: Tensor, attend: Callable[[Tensor, Tensor], Tensor], *, grid: bool) -> Tensor:
        if self.adaln is not None or self.time_in is not None:  # they read t before the attention checks it
            self.attn.check_inputs(x, t, grid=grid)
        if self.adaln is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(t).chunk(6, dim=-1)
            x = x + _per_token(gate1, x) * attend(_modulate(layer_norm_fp32(x), shift1, scale1), t)
            return x + _per_token(gate2, x) * self.mlp(_modulate(layer_norm_fp32(x), shift2, scale2))
        h = layer_norm_fp32(x)
        if self.time_in is not None:
            h = h + _per_token(self.time_in(t), x)
        x = x + attend(h, t)
        return x + self.mlp(layer_norm_fp32(x))

    def forward(self, x: Float[Tensor, "b n d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b n d"]:
        """Tokens (B, window**2, D): attention over the whole sequence."""
        return self._forward(x, t, self.attn, grid=False)

    def forward_grid(self, x: Float[Tensor, "b h w d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b h w d"]:
        """A (B, H, W, D) grid: attention inside local windows; LN and MLP are token-wise anyway."""
        return self._forward(x, t, self.attn.forward_grid, grid=True)


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
        time_conditioning: str = "tmsa",
        gelu: str = "tanh",
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
            time_conditioning: how the time token enters the block (see :class:`TMSABlock`).
            gelu: the MLP's GELU, "tanh" or "none" (see :class:`Mlp`).
        """
        super().__init__()
        self.norm = GroupNorm32(group_count(groups, dim), dim, eps=1e-6)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.block = TMSABlock(dim=dim, time_dim=time_dim, num_heads=num_heads, window=window, mlp_ratio=mlp_ratio,
                               qk_norm=qk_norm, time_conditioning=time_conditioning, gelu=gelu)  # fmt: skip

    def forward(self, x: Float[Tensor, "b c h w"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b c h w"]:
        """x + TMSABlock(Conv3x3(SiLU(GN(x)))) inside local windows (paper Eq. 9-10)."""
        if x.ndim != 4 or x.shape[1] != self.conv.in_channels:
            raise ValueError(f"x must have shape (b, {self.conv.in_channels}, h, w), got {tuple(x.shape)}")
        h = self.conv(self.act(self.norm(x)))  # Eq. 9
        h = rearrange(h, "b c h w -> b h w c")
        h = self.block.forward_grid(h, t)
        return rearrange(h, "b h w c -> b c h w").to(x.dtype) + x  # Eq. 10
