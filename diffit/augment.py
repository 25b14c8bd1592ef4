"""Non-leaking geometric augmentation for image-space training (Karras et al. 2022, App. F.2; the paper's
image-space recipe trains "with the EDM formulation and augmentation").

Each image is flipped, scaled, stretched, rotated and translated (in this order) with probability ``p`` per
transform, and the network is told what was done: the 9 augmentation labels are embedded and added to its time
token. At sampling time the labels are zero (no augmentation), so the model generates un-augmented images while
training sees ``1 / (1 - p)^k`` times more distinct inputs: the augmentations do not leak into the samples.

Labels (per image): [xflip, yflip, log2 scale, cos(angle) - 1, sin(angle), w cos(r), w sin(r), tx, ty], where
the anisotropic stretch scales by 2^w along direction r and 2^-w across it, and (tx, ty) is the translation in
units of the image size. All-zero labels mean the identity. Defaults follow EDM's CIFAR-10 setting: x-flips
always possible, the other transforms with probability p, log2 scale ~ N(0, 0.2^2), angle ~ U(-pi, pi),
w ~ N(0, 0.2^2), translation ~ N(0, 0.125^2). EDM rotates before it stretches: with the angle and the stretch
direction both uniform the two orders give the same distribution of transforms, and the labels need only describe
the transform applied (the network reads them; at sampling time they are zero).
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

AUGMENT_DIM = 9


def draw_augment_labels(
    generator: torch.Generator,
    n: int,
    *,
    p: float,
    xflip: bool = True,
    scale_std: float = 0.2,
    aniso_std: float = 0.2,
    translate_std: float = 0.125,
) -> Float[Tensor, "n 9"]:
    """Random augmentation labels for ``n`` images (CPU); each transform is applied with probability ``p``
    (x-flips, when ``xflip``, with probability 1/2 whatever ``p``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p (augmentation probability) must be in [0, 1], got {p}")

    def gate(values: Tensor) -> Tensor:  # keep each sample's value with probability p, else the identity (0)
        keep = torch.rand(values.shape[0], generator=generator) < p
        return values * keep.reshape(-1, *([1] * (values.ndim - 1)))

    flip_x = torch.randint(2, (n,), generator=generator).float() * float(xflip)
    flip_y = gate(torch.randint(2, (n,), generator=generator).float())
    log_scale = gate(torch.randn(n, generator=generator) * scale_std)
    angle = gate((torch.rand(n, generator=generator) * 2 - 1) * math.pi)
    w = gate(torch.randn(n, generator=generator) * aniso_std)
    r = torch.rand(n, generator=generator) * 2 * math.pi
    shift = gate(torch.randn(n, 2, generator=generator) * translate_std)
    return torch.stack(
        [flip_x, flip_y, log_scale, angle.cos() - 1, angle.sin(), w * r.cos(), w * r.sin(), shift[:, 0], shift[:, 1]],
        dim=1,
    )


def _matrices(labels: Float[Tensor, "b 9"]) -> Float[Tensor, "b 2 3"]:
    """The affine map (in normalised [-1, 1] coordinates) from output pixels to the input pixels they show."""
    fx, fy, log_s, c1, s, wc, ws, tx, ty = labels.double().unbind(1)
    b = labels.shape[0]
    eye = torch.eye(2, dtype=torch.float64).expand(b, 2, 2)
    flip = torch.diag_embed(torch.stack([1 - 2 * fx, 1 - 2 * fy], dim=1))
    scale = eye * (2.0**log_s)[:, None, None]
    cos, sin = c1 + 1, s
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=1)
    w, r = torch.hypot(wc, ws), torch.atan2(ws, wc)
    rc, rs = r.cos(), r.sin()
    along = torch.stack([torch.stack([rc, -rs], -1), torch.stack([rs, rc], -1)], dim=1)
    stretch = along @ torch.diag_embed(torch.stack([2.0**w, 2.0**-w], dim=1)) @ along.transpose(1, 2)
    forward = rot @ stretch @ scale @ flip  # image -> augmented image (linear part)
    inverse = torch.linalg.inv(forward)
    shift = torch.stack([tx, ty], dim=1) * 2  # image-size units -> normalised units
    offset = -(inverse @ shift[:, :, None])
    return torch.cat([inverse, offset], dim=2)


def apply_augment(x: Float[Tensor, "b c h w"], labels: Float[Tensor, "b 9"]) -> Float[Tensor, "b c h w"]:
    """Apply the transforms that ``labels`` describe (bilinear resampling, reflected borders)."""
    theta = _matrices(labels).to(x.dtype).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
