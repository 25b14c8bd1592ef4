"""Time-dependent multi-head self-attention (TMSA), the core of DiffiT (paper Sec. 3.2, Eq. 3-6).

Queries, keys and values are linear in both the spatial tokens x_s and the time token x_t:

    q_s = x_s W_qs + x_t W_qt,   k_s = x_s W_ks + x_t W_kt,   v_s = x_s W_vs + x_t W_vt      (Eq. 3-5)
    Attn(Q, K, V) = Softmax(Q K^T / sqrt(d_head) + B) V                                     (Eq. 6)

so the attention pattern itself changes with the noise level. B is a Swin-style learnable relative position
bias; time does not enter B (the paper's ablation: bias-only time conditioning is worse, FID 3.97 vs 1.95).
Attention runs through ``scaled_dot_product_attention`` with B as an additive float mask, which selects the
fused kernels (flash on CPU, memory-efficient on CUDA) that keep the softmax statistics in fp32.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from diffit.nn.windows import relative_position_index, window_merge, window_partition


class TMSA(nn.Module):
    """Time-dependent multi-head self-attention over the w*w tokens of a window.

    Parameter names follow the authors' release (``qkv``, ``qkv_temb``, ``proj``,
    ``relative_position_bias_table``, buffer ``relative_position_index``) so its checkpoints load unchanged.
    Use :meth:`forward` on token sequences of length ``window**2`` (global attention when the window is the
    whole grid) and :meth:`forward_grid` on a (B, H, W, C) grid split into local windows.
    """

    def __init__(self, *, dim: int, time_dim: int, num_heads: int, window: int, qk_norm: bool = False) -> None:
        """
        Args:
            dim: token width d (split into ``num_heads`` heads of d / num_heads).
            time_dim: width d_t of the time token x_t.
            num_heads: number of attention heads.
            window: side w of the square window; the bias table has (2w-1)^2 rows.
            qk_norm: normalise queries and keys per head (LayerNorm) before the dot product: an optional
                guard against attention-logit growth in long bf16 runs; off in the paper and release.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.dim, self.num_heads, self.window = dim, num_heads, window
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # x_s [W_qs W_ks W_vs]
        self.qkv_temb = nn.Linear(time_dim, 3 * dim)  # x_t [W_qt W_kt W_vt]
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def relative_position_bias(self) -> Float[Tensor, "heads n n"]:
        """B of Eq. 6: the table gathered at every (query, key) offset of the window."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]  # (n*n, heads)
        return rearrange(bias, "(i j) h -> h i j", i=n, j=n).contiguous()

    def _attend(self, x: Float[Tensor, "b n d"], qkv_t: Float[Tensor, "b 1 d3"]) -> Float[Tensor, "b n d"]:
        if x.shape[1] != self.window * self.window:
            raise ValueError(f"x must hold window**2={self.window**2} tokens (window={self.window}), got {x.shape[1]}")
        qkv = self.qkv(x) + qkv_t  # Eq. 3-5: x_s W_s + x_t W_t, broadcast over tokens
        q, k, v = rearrange(qkv, "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        # (1, h, n, n): a 4-D mask broadcast over the batch; a 3-D one rules out the fused CPU kernel.
        bias = self.relative_position_bias().to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(e) + B) v
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))

    def forward(self, x: Float[Tensor, "b n d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b n d"]:
        """Attention over each sequence of ``window**2`` tokens, conditioned on its time token ``t``."""
        return self._attend(x, self.qkv_temb(t)[:, None, :])

    def forward_grid(self, x: Float[Tensor, "b h w d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b h w d"]:
        """Local attention inside non-overlapping w x w windows of a (B, H, W, C) grid (no shift)."""
        b, h, w, _ = x.shape
        windows = window_partition(x, self.window)  # (b * nW, w*w, d)
        qkv_t = self.qkv_temb(t)[:, None, :].repeat_interleave(windows.shape[0] // b, dim=0)  # per window
        return window_merge(self._attend(windows, qkv_t), self.window, h, w)
