"""Wall-clock time of ``precision_recall`` on random 2048-d features on this machine's CPU (not a test): n points
per set for a few n, the two k-NN radius passes timed apart from the whole, and the n^2 extrapolation to ADM's
protocol (50k samples against a 10k reference batch) and to 50k x 50k.
Run: python benchmarks/time_precision_recall.py"""

import sys
import time

import torch

from diffit.evaluation import FEATURE_DIM, manifold_radii, precision_recall


def features(n: int, shift: float, seed: int) -> torch.Tensor:
    """Non-negative like Inception pool features (post-ReLU averages)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, FEATURE_DIM, generator=g) + shift).abs()


def main(sizes: list[tuple[int, int]]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, block 4096")
    per_unit = None
    for n_fake, n_real in sizes:
        real, fake = features(n_real, 0.0, 0), features(n_fake, 0.1, 1)
        t0 = time.perf_counter()
        manifold_radii(real)
        t_radii = time.perf_counter() - t0
        t0 = time.perf_counter()
        p, r = precision_recall(real, fake)
        t_pr = time.perf_counter() - t0
        line = f"{n_fake:6d} samples x {n_real:6d} reference: precision_recall {t_pr:7.1f} s"
        print(f"{line} (radii of the reference {t_radii:6.1f} s); P={p:.3f} R={r:.3f}")
        if n_fake == n_real:  # seconds per distance, of a radius pass and of a membership pass
            per_unit = (t_radii / n_real**2, max(t_pr - 2 * t_radii, 0.0) / (2 * n_real**2))
    if per_unit is None:
        return
    radius, inside = per_unit  # from the last (largest) equal-size run: the least overhead per distance
    for n_fake, n_real in ((50_000, 10_000), (50_000, 50_000)):
        total = radius * (n_fake**2 + n_real**2) + inside * 2 * n_fake * n_real
        print(f"extrapolated (n^2) {n_fake} samples x {n_real} reference: {total:.0f} s")


def _pair(arg: str) -> tuple[int, int]:
    """``N`` (N x N) or ``NxM`` (N samples, M reference)."""
    fake, _, real = arg.partition("x")
    return int(fake), int(real or fake)


if __name__ == "__main__":
    main([_pair(a) for a in sys.argv[1:]] or [(2_000, 2_000), (5_000, 5_000), (10_000, 10_000)])
