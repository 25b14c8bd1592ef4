"""Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019), as the ADM evaluator computes them.

Each feature set X spans a manifold: the union of balls around its points x_i, of squared radius
r_i = d(x_i, NN_k(x_i)), the squared Euclidean distance to the k-th nearest neighbour in X (k = 3) with x_i itself
counted as the 0-th, i.e. the (k+1)-th smallest value of the row of distances including the zero self-distance.
A point y lies inside when d(y, x_i) <= r_i for some i. Then

    precision = fraction of generated features inside the manifold of the reference features,
    recall    = fraction of reference features inside the manifold of the generated features.

Distances are computed block by block (rows x columns of ``block`` points) on the features' device, so two sets
of 50k never need a 50k x 50k matrix; float32 as ADM (float64 features stay float64).
"""

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from diffit.util import is_integer

__all__ = ["DEFAULT_BLOCK", "DEFAULT_K", "manifold_radii", "precision_recall"]

DEFAULT_K = 3  # the neighbourhood size of ADM's evaluator (and of the paper's experiments)
DEFAULT_BLOCK = 4096  # rows and columns per distance block: 4096^2 float32 = 64 MiB


def _check_features(name: str, features: Tensor, k: int) -> None:
    """One-line ValueError naming ``name`` unless ``features`` is a finite float (n, d) matrix with n > k."""
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name}: expected a 2-D (n, d) tensor of features, got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"{name}: expected floating-point features, got {features.dtype}")
    if len(features) <= k:
        raise ValueError(f"{name}: the k={k}-th nearest neighbour needs more than {k} points, got {len(features)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")


def _check_k_block(k: int, block: int) -> None:
    for name, value in (("k", k), ("block", block)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


def _working(features: Tensor) -> Tensor:
    """float32 (float64 stays float64), contiguous, on the features' own device."""
    return features.detach().to(torch.promote_types(features.dtype, torch.float32)).contiguous()


def _squared_distances(
    a: Float[Tensor, "m d"], a_sq: Float[Tensor, " m"], b: Float[Tensor, "n d"], b_sq: Float[Tensor, " n"]
) -> Float[Tensor, "m n"]:
    """|a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j (one matrix product), clamped at 0: round-off of the
    expansion can go below zero for (near-)equal points, and a distance never does."""
    return torch.addmm(a_sq[:, None] + b_sq[None, :], a, b.T, alpha=-2.0).clamp_(min=0.0)


def manifold_radii(
    features: Float[Tensor, "..."],  # 2-D (n, d), checked
    k: int = DEFAULT_K,
    block: int = DEFAULT_BLOCK,
) -> Float[Tensor, " n"]:
    """Squared distance of every point to its k-th nearest neighbour in ``features``, itself counted as the 0-th
    (the (k+1)-th smallest value of its row of squared distances). Blocks of ``block`` rows are scanned over
    blocks of ``block`` columns, keeping the k+1 smallest values per row; a point's distance to itself is set to
    exactly 0, whatever the round-off of the expansion. ValueError names ``features``, ``k`` or ``block``."""
    _check_k_block(k, block)
    _check_features("features", features, k)
    x = _working(features)
    sq = (x * x).sum(dim=1)
    n = len(x)
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        best = torch.full((r1 - r0, k + 1), math.inf, dtype=x.dtype, device=x.device)
        for c0 in range(0, n, block):
            c1 = min(c0 + block, n)
            d = _squared_distances(x[r0:r1], sq[r0:r1], x[c0:c1], sq[c0:c1])
            # The self-distances of rows r0..r1 that fall in columns c0..c1: exactly zero.
            lo, hi = max(r0, c0), min(r1, c1)
            if lo < hi:
                idx = torch.arange(lo, hi, device=x.device)
                d[idx - r0, idx - c0] = 0.0
            # Values, not indices, are kept: ties cannot change the (k+1)-th smallest value.
            best = torch.cat([best, d], dim=1).topk(k + 1, dim=1, largest=False, sorted=True).values
        radii[r0:r1] = best[:, k]
    return radii


def _inside(
    points: Float[Tensor, "m d"], centres: Float[Tensor, "n d"], radii: Float[Tensor, " n"], block: int
) -> Bool[Tensor, " m"]:
    """Whether each point lies in some ball: d(y, x_i) <= r_i for at least one i, scanned block-wise."""
    p_sq, c_sq = (points * points).sum(dim=1), (centres * centres).sum(dim=1)
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for r0 in range(0, len(points), block):
        r1 = min(r0 + block, len(points))
        for c0 in range(0, len(centres), block):
            if bool(inside[r0:r1].all()):  # every point of this row block is already inside
                break
            c1 = min(c0 + block, len(centres))
            d = _squared_distances(points[r0:r1], p_sq[r0:r1], centres[c0:c1], c_sq[c0:c1])
            inside[r0:r1] |= (d <= radii[None, c0:c1]).any(dim=1)
    return inside


def precision_recall(
    real_features: Float[Tensor, "..."],  # 2-D (n, d), checked
    fake_features: Float[Tensor, "..."],  # 2-D (m, d), checked
    k: int = DEFAULT_K,
    block: int = DEFAULT_BLOCK,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Sec. 3; the ADM evaluator's definition): the
    fraction of ``fake_features`` inside the k-NN manifold of ``real_features``, and the fraction of
    ``real_features`` inside that of ``fake_features`` (see the module docstring). O(n m d) work done in blocks
    of ``block`` x ``block`` distances on the features' device. ValueError names the argument: not 2-D, widths
    that differ, k or fewer points, NaN or infinite values, k or block below 1."""
    _check_k_block(k, block)
    _check_features("real_features", real_features, k)
    _check_features("fake_features", fake_features, k)
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"real_features and fake_features: feature widths differ ({real_features.shape[1]} vs "
            f"{fake_features.shape[1]})"
        )
    if real_features.device != fake_features.device:
        raise ValueError(
            f"real_features and fake_features: on different devices ({real_features.device} vs {fake_features.device})"
        )
    real, fake = _working(real_features), _working(fake_features)
    if real.dtype != fake.dtype:  # one float64 set: both in float64
        real, fake = real.double(), fake.double()
    real_radii, fake_radii = manifold_radii(real, k, block), manifold_radii(fake, k, block)
    precision = _inside(fake, real, real_radii, block).double().mean()
    recall = _inside(real, fake, fake_radii, block).double().mean()
    return float(precision), float(recall)
