"""Feature statistics (mean, covariance), their files, the Frechet distance and the Inception Score.

Statistics files are ``.npz`` with ``mu`` (d,) float64, ``sigma`` (d, d) float64 and ``count`` (int64
scalar). The ADM reference batches (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma`` beside the
images ``arr_0``) read as statistics too, with ``count=None``.
"""

import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from diffit.util import atomic_path

__all__ = [
    "FeatureStats",
    "StatsAccumulator",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "inception_score_from_probabilities",
    "check_statistics_out",
    "load_statistics",
    "save_statistics",
]


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``mu`` (d,), unbiased covariance ``sigma`` (d, d), both float64, of ``count`` feature vectors."""

    mu: Float[np.ndarray, " d"]
    sigma: Float[np.ndarray, "d d"]
    count: int | None


class StatsAccumulator:
    """Streaming mean and covariance in float64, merged batch by batch with Chan et al.'s (1979) pairwise
    update (stable where the textbook E[x x^T] - mu mu^T cancels catastrophically):
    n = n_a + n_b, delta = mu_b - mu_a, mu = mu_a + delta n_b / n, M = M_a + M_b + delta delta^T n_a n_b / n,
    with M the sum of centred outer products; sigma = M / (n - 1)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def update(self, features: Float[Tensor, "b d"]) -> None:
        """Add a batch of features to the running mean and scatter (float64)."""
        if features.ndim != 2:  # a 1-D vector was taken for n one-dimensional features
            raise ValueError(f"features: expected (n, d), got shape {tuple(features.shape)}")
        x = features.detach().to("cpu", torch.float64).numpy()
        if len(x) == 0:
            return
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self.mean is None or self.scatter is None:
            self.count, self.mean, self.scatter = len(x), mean_b, scatter_b
            return
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features: expected dimension {self.mean.shape[0]}, got {x.shape[1]}")
        n_a, n_b = self.count, len(x)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def result(self) -> FeatureStats:
        """The mean, unbiased covariance and count of every feature seen so far."""
        if self.mean is None or self.scatter is None or self.count < 2:
            raise ValueError(f"features: a covariance needs at least 2 samples, got {self.count}")
        return FeatureStats(self.mean, self.scatter / (self.count - 1), self.count)


def feature_statistics(features: Float[Tensor, "n d"]) -> FeatureStats:
    """Mean and unbiased covariance of a feature matrix (rows are samples)."""
    acc = StatsAccumulator()
    acc.update(features)
    return acc.result()


def _check_covariance(name: str, eigenvalues: np.ndarray) -> None:
    """ValueError when a matrix is no covariance: an eigenvalue below zero by more than round-off."""
    if eigenvalues.min(initial=0.0) < -1e-6 * max(1.0, float(np.abs(eigenvalues).max(initial=0.0))):
        raise ValueError(f"{name}: not a covariance matrix (eigenvalue {eigenvalues.min():.3g} < 0)")


def _psd_sqrt(a: Float[np.ndarray, "d d"], name: str) -> Float[np.ndarray, "d d"]:
    """The symmetric PSD square root V diag(sqrt(max(w, 0))) V^T of a covariance ``name`` (eigenvalues that
    round-off pushed below zero are clamped)."""
    w, v = np.linalg.eigh(a)
    _check_covariance(name, w)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: Float[np.ndarray, " d1"],
    sigma1: Float[np.ndarray, "d1 d1"],
    mu2: Float[np.ndarray, " d2"],
    sigma2: Float[np.ndarray, "d2 d2"],
) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64
    (Dowson & Landau 1982; FID, Heusel et al. 2017):

        d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace term is computed from symmetric eigendecompositions instead of a general ``sqrtm`` of the
    non-symmetric product: with A = sigma1^(1/2), sigma1 sigma2 = A (A sigma2 A) A^(-1) is similar to the
    symmetric PSD matrix A sigma2 A (by continuity also when sigma1 is singular), so
    tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(lambda_i(A sigma2 A)). This never produces the complex parts or
    the near-singular failures the reference ``scipy.linalg.sqrtm`` code patches with an eps * I offset (it
    agrees with it to round-off on well-conditioned inputs). Round-off below zero is clamped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics: feature dimensions differ ({mu1.shape[0]} vs {mu2.shape[0]})")
    for mu, sigma, name in ((mu1, sigma1, "sigma1"), (mu2, sigma2, "sigma2")):  # numpy's broadcast error before
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"{name}: expected a ({len(mu)}, {len(mu)}) covariance for its mean, got {sigma.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: contains NaN or infinite values")
    # Covariances are symmetric; averaging with the transpose removes asymmetric round-off.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    _check_covariance("sigma2", np.linalg.eigvalsh(sigma2))  # a negative-definite one gave FID 0 before
    root1 = _psd_sqrt(sigma1, "sigma1")
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(d2), 0.0)


def inception_score_from_probabilities(probs: Float[Tensor, "n k"], splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean prediction
    over each of ``splits`` consecutive, near-equal parts; returns the mean and (population) std over parts,
    as the original code does. Computed in float64; 0 log 0 = 0."""
    p = probs.detach().to("cpu", torch.float64)
    n = len(p)
    if splits < 1 or splits > n:
        raise ValueError(f"splits: expected 1 <= splits <= number of samples ({n}), got {splits}")
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-3):
        raise ValueError("probs: rows must be probability vectors (non-negative, summing to 1)")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(dim=0, keepdim=True)
        # KL(p(y|x) || p(y)) = sum_y p log p - p log p(y); xlogy makes 0 log 0 = 0.
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=1)
        scores.append(float(torch.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits: Float[Tensor, "n k"], splits: int = 10) -> tuple[float, float]:
    """Inception Score from classifier logits (softmax in float64, then as above)."""
    return inception_score_from_probabilities(torch.softmax(logits.detach().double(), dim=1), splits)


def check_statistics_out(path: str) -> None:
    """ValueError unless ``path`` can take a statistics file: its folder exists, and it is new or a statistics
    file (``mu``, ``sigma``, ``count`` only). An ``.npz`` of images, the source itself say, or an ADM reference
    batch (images beside ``mu``/``sigma``), is never replaced."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"out: folder {folder!r} does not exist")
    if not os.path.lexists(path):
        return
    members = None
    try:
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.lib.npyio.NpzFile):  # else a single .npy array
            with npz:
                members = set(npz.files)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
        pass
    if members is None or not members <= {"mu", "sigma", "count"}:
        held = "exists and is no .npz" if members is None else f"holds {', '.join(sorted(members))}"
        held = "is a folder" if os.path.isdir(path) else held
        raise ValueError(f"out: {path!r} {held}, not statistics, and is never replaced; choose another file")


def save_statistics(path: str, stats: FeatureStats) -> None:
    """Write ``{mu, sigma, count}`` to ``path`` (.npz) atomically: a temporary file in the same folder, renamed.
    ValueError, before anything is written, where :func:`check_statistics_out` refuses ``path``."""
    check_statistics_out(path)
    count = np.int64(-1 if stats.count is None else stats.count)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=count)


def load_statistics(path: str) -> FeatureStats:
    """Read ours or an ADM reference batch (``mu``, ``sigma``); ValueError when the file has no statistics."""
    if not os.path.isfile(path):
        raise ValueError(f"statistics: {path!r} does not exist")
    files: list[str] | None = None  # stays None for a single .npy array
    try:  # a damaged file fails on open or on reading a member
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.lib.npyio.NpzFile):
            with npz:  # only these members: an ADM reference batch also holds its images
                files, arrays = sorted(npz.files), {k: npz[k] for k in ("mu", "sigma", "count") if k in npz}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"statistics: cannot read {path!r} as .npz ({type(exc).__name__}: {exc})") from None
    if files is None:
        raise ValueError(f"statistics: {path!r} is a single array, not an .npz with 'mu' and 'sigma'")
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"statistics: {path!r} has no 'mu' and 'sigma' arrays (has {files})")
    try:
        mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
        count = int(arrays["count"]) if "count" in arrays else -1
    except (TypeError, ValueError) as exc:
        raise ValueError(f"statistics: {path!r} holds non-numeric mu, sigma or count ({exc})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"statistics: {path!r} has mu {mu.shape} and sigma {sigma.shape}; expected (d,) and (d, d)")
    return FeatureStats(mu, sigma, None if count < 0 else count)
