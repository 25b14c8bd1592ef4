"""TMSA's attention core as FlexAttention (``torch.nn.attention.flex_attention``, torch >= 2.5).

The relative position bias B of Eq. 6 is a ``score_mod`` that gathers from the learnable table (so the table's
gradient flows through the gather), and local windows are a block mask over the whole row-major token grid, so
the image-space model attends without window partition / merge copies. For query token i = (y_i, x_i) and key
token j = (y_j, x_j) of an H x W grid with window w:

    mask(i, j)  = (y_i // w == y_j // w) and (x_i // w == x_j // w)                    (same window)
    score(i, j) = q_i . k_j / sqrt(e) + T[(y_i%w - y_j%w + w - 1)(2w - 1) + (x_i%w - x_j%w + w - 1), h]

Inside one window y_i - y_j = y_i%w - y_j%w, so the index is Swin's (:func:`relative_position_index`); the
modular form also stays inside the table for the masked-out pairs (a ``score_mod`` is evaluated before the
mask), so no gather ever leaves the table. Global attention is the case w = H = W with no mask.

Block sparsity: tokens are row-major, so a 128-token block spans 128 / W rows of the grid and several windows;
only the kv blocks of the same row band of windows are visited (a fraction w / H of the grid), each partially
masked. Fused kernels need ``torch.compile``: eager calls on CUDA go through a compiled ``flex_attention``;
on CPU torch has no FlexAttention backward, and its eager forward materialises the scores (unfused).
"""

import functools
import typing
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["flex_attend", "flex_available", "relative_bias_score_mod", "window_block_mask", "window_mask_mod"]


def flex_available() -> bool:
    """Whether this torch has FlexAttention (torch >= 2.5)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def relative_bias_score_mod(table: Float[Tensor, "r heads"], window: int, grid_w: int) -> Callable[..., Tensor]:
    """``score_mod(score, b, h, q_idx, kv_idx)`` adding B = T[index(i, j), h] (module docstring) for a
    row-major grid ``grid_w`` tokens wide."""

    @typing.no_type_check  # FlexAttention reads its positional signature: no type-checking wrapper
    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        dy = (q_idx // grid_w) % window - (kv_idx // grid_w) % window  # y_i%w - y_j%w, in [-(w-1), w-1]
        dx = (q_idx % grid_w) % window - (kv_idx % grid_w) % window
        return score + table[(dy + window - 1) * (2 * window - 1) + (dx + window - 1), h]

    return score_mod


def window_mask_mod(window: int, grid_w: int) -> Callable[..., Tensor]:
    """``mask_mod(b, h, q_idx, kv_idx)``: True where query and key lie in the same w x w window."""

    @typing.no_type_check  # as score_mod
    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        same_row = (q_idx // grid_w) // window == (kv_idx // grid_w) // window
        same_col = (q_idx % grid_w) // window == (kv_idx % grid_w) // window
        return same_row & same_col

    return mask_mod


@functools.lru_cache(maxsize=64)
def window_block_mask(h: int, w: int, window: int, device: str) -> object:
    """The :class:`~torch.nn.attention.flex_attention.BlockMask` of w x w windows over an h x w grid (cached:
    it depends on the shape alone, and is shared by every layer, head and batch element)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(window_mask_mod(window, w), None, None, h * w, h * w, device=device)


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    """``flex_attention`` compiled once (the fused kernels; an eager call would materialise the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attend(
    q: Float[Tensor, "b heads n e"],
    k: Float[Tensor, "b heads n e"],
    v: Float[Tensor, "b heads n e"],
    *,
    table: Float[Tensor, "r heads"],
    window: int,
    grid: tuple[int, int],
) -> Float[Tensor, "b heads n e"]:
    """softmax(q k^T / sqrt(e) + B [+ window mask]) v over an (h, w) row-major grid of n = h*w tokens.

    Local w x w windows when the grid is larger than the window, global attention when it equals it.
    """
    from torch.nn.attention.flex_attention import flex_attention

    h, w = grid
    if h * w != q.shape[-2] or h % window or w % window:
        raise ValueError(f"grid {h}x{w} with window {window} does not fit {q.shape[-2]} tokens")
    block_mask = None if (h, w) == (window, window) else window_block_mask(h, w, window, str(q.device))
    score_mod = relative_bias_score_mod(table.to(q.dtype), window, w)
    compiling = torch.compiler.is_compiling()
    attend = _compiled_flex() if q.device.type == "cuda" and not compiling else flex_attention
    return attend(q, k, v, score_mod=score_mod, block_mask=block_mask)
