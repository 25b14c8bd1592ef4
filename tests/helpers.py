"""Small models shared by several test files (import as `from helpers import ...`)."""

import torch

from diffit.nn import ImageDiffiT


def tiny_image_diffit(num_classes: int | None = 3) -> ImageDiffiT:
    """An 8x8 single-channel ImageDiffiT small enough for training and sampling tests."""
    torch.manual_seed(0)
    return ImageDiffiT(
        resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4, num_heads=2,
        time_dim=16, num_classes=num_classes,
    )  # fmt: skip
