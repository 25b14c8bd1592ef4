"""What every sampler shares: the denoiser contract, input checks, NFE accounting and the callback.

The denoiser contract. A denoiser is any callable ``denoiser(x, sigma) -> x0_hat`` with x (B, ...) in the
sigma-scaled space x = x0 + sigma * n and sigma a (B,) float tensor; it returns an estimate of E[x0 | x].
Class labels are bound before sampling (``functools.partial(wrapper, y=labels)`` or :func:`bind_labels`).
Two optional methods refine it, found through any ``functools.partial`` layers:

- ``evaluations(sigma) -> int`` (called without the bound labels): how many network evaluations one
  call at this noise level costs (classifier-free guidance: 2 inside its interval, 1 outside); 1 if absent.
- ``denoise_with_variance(x, sigma) -> (x0_hat, v | None)``: also returns ADM's learned variance
  interpolation v in [-1, 1] (Nichol & Dhariwal Eq. 15); only :func:`sample_ddpm` asks for it.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from diffit.diffusion.noise import NoiseSampler, global_noise

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]


def bind_labels(denoiser: Denoiser, y: Int[Tensor, " b"]) -> Denoiser:
    """``functools.partial(denoiser, y=y)``: a class-conditional wrapper seen as a plain denoiser."""
    return functools.partial(denoiser, y=y)


def find_method(denoiser: Denoiser, name: str, *, bind: bool = True) -> Callable[..., Any] | None:
    """The optional method ``name`` of the object under any partials, with the partials' bound arguments
    applied when ``bind`` (labels for ``denoise_with_variance``; not for ``evaluations(sigma)``)."""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    while isinstance(denoiser, functools.partial):
        args, kwargs = denoiser.args + args, {**denoiser.keywords, **kwargs}
        denoiser = denoiser.func
    method = getattr(denoiser, name, None)
    if method is None or not callable(method):
        return None
    return functools.partial(method, *args, **kwargs) if bind else method


def check_sigmas(sigmas: object) -> list[float]:
    """Validate a schedule (1-D, finite, strictly descending, >= 2 values, last exactly 0) -> Python floats.

    Step arithmetic then runs in float64 on the host, with no device synchronisation inside the loop.
    """
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D tensor, got {getattr(sigmas, 'shape', type(sigmas).__name__)}")
    if len(sigmas) < 2:
        raise ValueError(f"sigmas must hold at least 2 values (steps >= 1), got {len(sigmas)}")
    values = [float(s) for s in sigmas.detach().cpu().double()]
    if not all(math.isfinite(s) for s in values):
        raise ValueError("sigmas must be finite")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end with 0, got last value {values[-1]}")
    if any(a <= b for a, b in zip(values[:-1], values[1:], strict=True)):
        raise ValueError("sigmas must be strictly decreasing")
    return values


def check_x(x: object) -> None:
    """The starting point: a floating-point tensor with a batch dimension, without NaN / inf (a silent NaN would
    otherwise propagate to every image; an integer x had every sigma truncated to an integer). One reduction."""
    if not isinstance(x, Tensor) or x.ndim < 1:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor with a batch dimension (B, ...), got {got}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (it contains NaN or inf)")


def _shaped_like(x: Tensor, denoised: Tensor) -> Tensor:
    """The denoiser's output, refused unless it has x's shape (the update would broadcast it silently)."""
    if denoised.shape != x.shape:
        raise ValueError(f"denoiser must return a tensor shaped like x {tuple(x.shape)}, got {tuple(denoised.shape)}")
    return denoised


class Stepper:
    """Per-run bookkeeping shared by the samplers: the denoiser call at a scalar sigma, the cumulative
    number of function evaluations (NFE) and the callback."""

    def __init__(self, denoiser: object, x: object, callback: Callback | None, noise: NoiseSampler | None):
        # denoiser and x are what the sampler was called with: checked here, once per call (hence ``object``)
        if not callable(denoiser):
            raise TypeError(f"denoiser must be a callable denoiser(x, sigma), got a {type(denoiser).__name__}")
        check_x(x)
        self.denoiser = denoiser
        self.with_variance = find_method(denoiser, "denoise_with_variance")
        self.cost = find_method(denoiser, "evaluations", bind=False)
        self.callback = callback
        self.noise = noise if noise is not None else global_noise(x)
        self.nfe = 0

    def _sigma(self, x: Tensor, sigma: float) -> Float[Tensor, " b"]:
        return torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)

    def _count(self, sigma: Tensor) -> None:
        self.nfe += int(self.cost(sigma)) if self.cost is not None else 1

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        """D(x, sigma) with sigma broadcast to (B,), counting its evaluations."""
        s = self._sigma(x, sigma)
        self._count(s)
        return _shaped_like(x, self.denoiser(x, s))

    def denoise_and_variance(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor | None]:
        """(D(x, sigma), learned variance interpolation or None when the denoiser has none)."""
        if self.with_variance is None:
            return self.denoise(x, sigma), None
        s = self._sigma(x, sigma)
        self._count(s)
        denoised, variance = self.with_variance(x, s)
        return _shaped_like(x, denoised), variance

    def draw(self, like: Tensor) -> Tensor:
        """One standard normal draw from the injected noise sampler, checked against the batch shape."""
        n = self.noise()
        if not isinstance(n, Tensor) or n.shape != like.shape:
            got = tuple(n.shape) if isinstance(n, Tensor) else f"a {type(n).__name__}"
            raise ValueError(f"noise must return tensors shaped {tuple(like.shape)}, got {got}")
        return n.to(like)

    def report(self, i: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor, **extra: Any) -> None:
        """Call the callback with the step's state: i, x, sigma, sigma_next, denoised, nfe (cumulative)."""
        if self.callback is not None:
            state = {"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised}
            self.callback({**state, "nfe": self.nfe, **extra})
