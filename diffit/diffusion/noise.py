"""Injected randomness: noise samplers, including one torch.Generator per sample (per-sample seeds).

A noise sampler is a zero-argument callable returning a fresh standard normal tensor shaped like the batch.
Samplers draw every stochastic step from it and never touch the global RNG, so the caller decides how
randomness is made. :class:`PerSampleNoise` is the EDM approach (``StackedRandomGenerator``): sample ``i``
draws only from its own generator seeded with ``seeds[i]``, so an image depends on its seed alone, not on
the batch it was generated in or how many devices shared the work.
"""

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.util import is_integer

NoiseSampler = Callable[[], Tensor]


def _is_seed(s: object) -> bool:
    return is_integer(s) and 0 <= s < 2**64  # type: ignore[operator]


def check_seeds(seeds: Sequence[int]) -> None:
    """ValueError unless ``seeds`` is a non-empty sequence of integers in [0, 2**64). torch takes a seed modulo
    2**64, so -1 and 2**64 - 1 (or 0.9 and 0, True and 1) would draw the same noise for different seeds."""
    if isinstance(seeds, (str, bytes)) or len(seeds) < 1:
        raise ValueError(f"seeds must be a non-empty sequence of integers, got {seeds!r}")
    bad = next(((s,) for s in seeds if not _is_seed(s)), None)
    if bad is not None:
        raise ValueError(f"seeds must be integers in [0, 2**64), got {bad[0]!r}")


class PerSampleNoise:
    """Stacked per-sample generators: each call returns (len(seeds), *shape) standard normal noise.

    The first call is conventionally the initial noise (multiply by sigmas[0]); the sampler's later calls
    are its stochastic steps. Every row consumes its own generator in the same order whatever the batch.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """
        Args:
            seeds: one integer seed per sample (the batch size is ``len(seeds)``).
            shape: the shape of ONE sample, without the batch dimension (e.g. (4, 32, 32)).
            device: where the generators live and the noise is made.
            dtype: dtype of the returned noise (drawn in float32 or float64, then cast).
        """
        check_seeds(seeds)
        if not isinstance(shape, Sequence) or not all(is_integer(d) and d >= 1 for d in shape):  # type: ignore[operator]
            raise ValueError(f"shape must be a sequence of positive integers (one sample's dimensions), got {shape!r}")
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def __call__(self) -> Float[Tensor, " b *shape"]:
        # Drawn in at least float32 so that low-precision outputs still see the same stream.
        draw_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        draws = [torch.randn(self.shape, generator=g, device=self.device, dtype=draw_dtype) for g in self.generators]
        return torch.stack(draws).to(self.dtype)


def per_sample_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PerSampleNoise:
    """A :class:`PerSampleNoise` for ``seeds``; ``shape`` is one sample's shape (no batch dimension).

    Typical use::

        noise = per_sample_noise(seeds, (4, 32, 32), device="cuda")
        x = sample_ddpm(denoiser, noise() * sigmas[0], sigmas, noise=noise)
    """
    return PerSampleNoise(seeds, shape, device=device, dtype=dtype)


def global_noise(like: Tensor) -> NoiseSampler:
    """The default noise sampler: ``torch.randn_like(like)`` from the global RNG."""
    return lambda: torch.randn_like(like)
