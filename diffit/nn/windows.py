"""Non-overlapping window ops and the Swin relative-position index, as pure functions.

DiffiT's image-space model attends inside w x w windows with no shift (paper Sec. 3.2): the U-shape's
down/up-sampling mixes regions, so no cross-window tokens are needed.
"""

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from diffit.util import check_integer


def _check_window(h: int, w: int, window: object) -> None:
    check_integer("window", window)
    if h < 1 or w < 1:
        raise ValueError(f"the grid must be at least 1x1, got {h}x{w}")
    if h % window or w % window:
        raise ValueError(f"window={window} must divide the grid height and width, got a {h}x{w} grid")


def window_partition(x: Float[Tensor, "b h w c"], window: int) -> Float[Tensor, "bw n c"]:
    """Split a (B, H, W, C) grid into (B * H/w * W/w, w*w, C) windows.

    Windows are ordered batch-major, then row-major over the window grid; tokens inside a window row-major.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be a (B, H, W, C) grid, got shape {tuple(x.shape)}")
    _check_window(x.shape[1], x.shape[2], window)
    # (b, nh*wh, nw*ww, c) -> (b*nh*nw, wh*ww, c)
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window, ww=window)


def window_merge(windows: Float[Tensor, "bw n c"], window: int, h: int, w: int) -> Float[Tensor, "b h w c"]:
    """Inverse of :func:`window_partition`: (B * H/w * W/w, w*w, C) windows -> (B, H, W, C) grid."""
    _check_window(h, w, window)
    if windows.ndim != 3:
        raise ValueError(f"windows must be (B * H/w * W/w, w*w, C), got shape {tuple(windows.shape)}")
    if windows.shape[1] != window * window:
        raise ValueError(f"windows must hold window**2={window * window} tokens each, got {windows.shape[1]}")
    per_image = (h // window) * (w // window)
    if windows.shape[0] % per_image:
        raise ValueError(f"windows count {windows.shape[0]} is not a multiple of {per_image} windows per image")
    return rearrange(windows, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", nh=h // window, nw=w // window, wh=window)


def relative_position_index(window: int) -> Int[Tensor, "n n"]:
    """Swin's index into a ((2w-1)^2, heads) bias table for every (query, key) pair of a w x w window.

    For tokens i = (yi, xi) and j = (yj, xj): (yi - yj + w - 1) * (2w - 1) + (xi - xj + w - 1).
    """
    check_integer("window", window)
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, n, n), each offset in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]
