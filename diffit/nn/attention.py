"""Time-dependent multi-head self-attention (TMSA), the core of DiffiT (paper Sec. 3.2, Eq. 3-6).

Queries, keys and values are linear in both the spatial tokens x_s and the time token x_t:

    q_s = x_s W_qs + x_t W_qt,   k_s = x_s W_ks + x_t W_kt,   v_s = x_s W_vs + x_t W_vt      (Eq. 3-5)
    Attn(Q, K, V) = Softmax(Q K^T / sqrt(d_head) + B) V                                     (Eq. 6)

so the attention pattern itself changes with the noise level. B is a Swin-style learnable relative position
bias; time does not enter B (the paper's ablation: bias-only time conditioning is worse, FID 3.97 vs 1.95).

For the ablations (:class:`~diffit.nn.TMSABlock`'s ``time_conditioning``), the same module also runs as plain
multi-head self-attention (``time_qkv=False``: no x_t W_t terms) or with time entering only B
(``time_bias=True``: B(x_t) = B + gather(x_t W_B), one ((2w-1)^2, heads) table per sample).

Two interchangeable attention cores compute Eq. 6, chosen at run time per layer (``attention_backend``, not
part of the state dict or the model's config, so checkpoints load unchanged):

- ``"sdpa"`` (default): ``scaled_dot_product_attention`` with B as an additive 4-D float mask; local windows
  are partitioned into a batch of sequences and merged back. Which kernel runs depends on whether B needs a
  gradient: without one (sampling) the CPU uses its fused flash kernel; with one (training) the CPU has no
  fused backward for a mask and runs the unfused math kernel, and CUDA is expected to use the
  memory-efficient kernel, which takes a bias gradient (flash takes no mask at all). ``benchmarks/gpu_check.py``
  part 2 records what actually runs; the math kernel is where the flex path can win.
- ``"flex"``: FlexAttention (:mod:`diffit.nn.flex`): B as a ``score_mod``, local windows as a block mask over
  the whole grid (no partition / merge copies).
- ``"auto"``: flex where it is available (CUDA, torch >= 2.5) and measured faster for that layer's shape,
  dtype and pass (timed once per process, see :func:`measure_backends`); SDPA otherwise, and always on CPU.
"""

import math
import time
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from diffit.nn.contract import check_dtype
from diffit.nn.flex import flex_attend, flex_available
from diffit.nn.windows import relative_position_index, window_merge, window_partition
from diffit.util import OutOfMemory, check_integer, out_of_memory_as

ATTENTION_BACKENDS = ("sdpa", "flex", "auto")
# "auto" decisions, one per (device, dtype, shape, window, grid, grad) key: measured once per process.
_AUTO_CHOICES: dict[tuple, str] = {}


class TMSA(nn.Module):
    """Time-dependent multi-head self-attention over the w*w tokens of a window.

    Parameter names follow the authors' release (``qkv``, ``qkv_temb``, ``proj``,
    ``relative_position_bias_table``, buffer ``relative_position_index``) so its checkpoints load unchanged.
    Use :meth:`forward` on token sequences of length ``window**2`` (global attention when the window is the
    whole grid) and :meth:`forward_grid` on a (B, H, W, C) grid split into local windows.
    """

    def __init__(
        self,
        *,
        dim: int,
        time_dim: int,
        num_heads: int,
        window: int,
        qk_norm: bool = False,
        time_qkv: bool = True,
        time_bias: bool = False,
    ) -> None:
        """
        Args:
            dim: token width d (split into ``num_heads`` heads of d / num_heads).
            time_dim: width d_t of the time token x_t.
            num_heads: number of attention heads.
            window: side w of the square window; the bias table has (2w-1)^2 rows.
            qk_norm: normalise queries and keys per head (LayerNorm) before the dot product: an optional
                guard against attention-logit growth in long bf16 runs; off in the paper and release.
            time_qkv: the time token enters queries, keys and values (``qkv_temb``, Eq. 3-5): TMSA. False
                gives plain self-attention that ignores ``t`` (for the ablations).
            time_bias: the time token also shifts the relative position bias (``bias_temb``: the paper's
                "bias-only" ablation when ``time_qkv=False``). Runs on the SDPA core only.
        """
        super().__init__()
        for name, value in (("dim", dim), ("time_dim", time_dim), ("num_heads", num_heads), ("window", window)):
            check_integer(name, value)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.time_dim, self.num_heads, self.window = dim, time_dim, num_heads, window
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # x_s [W_qs W_ks W_vs]
        self.qkv_temb = nn.Linear(time_dim, 3 * dim) if time_qkv else None  # x_t [W_qt W_kt W_vt]
        self.bias_temb = nn.Linear(time_dim, (2 * window - 1) ** 2 * num_heads) if time_bias else None
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        tokens = window * window  # the index pairs every token of a window with every other: window**4 entries
        with out_of_memory_as(
            lambda tried: OutOfMemory(
                f"window: a {window}x{window} window's relative position index ({tokens}, {tokens}) does not fit in "
                f"memory{tried}; use a smaller window (LatentDiffiT's is its input_size / patch_size token grid)"
            )
        ):
            self.register_buffer("relative_position_index", relative_position_index(window))
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.attention_backend = "sdpa"  # run-time choice (see the module docstring); not in the state dict

    def relative_position_bias(self) -> Float[Tensor, "heads n n"]:
        """B of Eq. 6: the table gathered at every (query, key) offset of the window."""
        return self._gather(self.relative_position_bias_table)

    def _gather(self, table: Float[Tensor, "*b r heads"]) -> Float[Tensor, "*b heads n n"]:
        n = self.window * self.window
        bias = table[..., self.relative_position_index.reshape(-1), :]  # (*b, n*n, heads)
        return rearrange(bias, "... (i j) h -> ... h i j", i=n, j=n).contiguous()

    def check_inputs(self, x: Tensor, t: Tensor, *, grid: bool) -> None:
        """ValueError naming ``x`` or ``t`` unless x is a (B, N, dim) sequence (``grid``: a (B, H, W, dim) grid) in
        the weights' dtype (any floating dtype under autocast) and t holds one ``time_dim`` token per sample.
        Shapes and dtypes only: free, no device synchronisation."""
        ndim, layout = (4, "(B, H, W, dim)") if grid else (3, "(B, window**2, dim)")
        if x.ndim != ndim or x.shape[-1] != self.dim:
            raise ValueError(f"x must be {layout} with dim={self.dim}, got shape {tuple(x.shape)}")
        check_dtype(x, self.qkv.weight)
        if t.ndim != 2 or t.shape != (x.shape[0], self.time_dim):  # one token would be broadcast over the batch
            raise ValueError(
                f"t must have one time token of time_dim={self.time_dim} per sample of x (batch {x.shape[0]}), "
                f"got shape {tuple(t.shape)}"
            )

    def _time_terms(self, x: Tensor, t: Float[Tensor, "b dt"]) -> tuple[Tensor | None, Tensor | None]:
        """x_t W_t broadcast over tokens (b, 1, 3d) and the per-sample bias shift (b, heads, n, n), or None."""
        qkv_t = None if self.qkv_temb is None else self.qkv_temb(t)[:, None, :]
        if self.bias_temb is None:
            return qkv_t, None
        table = self.bias_temb(t).reshape(t.shape[0], -1, self.num_heads)  # (b, (2w-1)^2, heads)
        return qkv_t, self._gather(table)

    def _qkv(
        self, x: Float[Tensor, "b n d"], qkv_t: Float[Tensor, "b 1 d3"] | None
    ) -> tuple[Float[Tensor, "b h n e"], Float[Tensor, "b h n e"], Float[Tensor, "b h n e"]]:
        qkv = self.qkv(x) if qkv_t is None else self.qkv(x) + qkv_t  # Eq. 3-5: x_s W_s + x_t W_t
        q, k, v = rearrange(qkv, "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        return self.q_norm(q), self.k_norm(k), v

    def _attend(
        self, x: Float[Tensor, "b n d"], qkv_t: Float[Tensor, "b 1 d3"] | None, bias_t: Tensor | None = None
    ) -> Float[Tensor, "b n d"]:
        """SDPA over sequences of window**2 tokens (one window, or the whole grid for global attention)."""
        if x.shape[1] != self.window * self.window:
            raise ValueError(f"x must hold window**2={self.window**2} tokens (window={self.window}), got {x.shape[1]}")
        q, k, v = self._qkv(x, qkv_t)
        # (1, h, n, n): a 4-D mask broadcast over the batch; a 3-D one rules out the fused CPU kernel.
        bias = self.relative_position_bias().to(q.dtype)[None]
        if bias_t is not None:
            bias = bias + bias_t.to(q.dtype)  # (b, h, n, n): B(x_t) of the bias-only ablation
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(e) + B) v
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))

    def _attend_flex(
        self, x: Float[Tensor, "b n d"], qkv_t: Float[Tensor, "b 1 d3"] | None, grid: tuple[int, int]
    ) -> Float[Tensor, "b n d"]:
        """FlexAttention over a row-major (h, w) grid of n tokens: local windows by block mask, B by score_mod."""
        q, k, v = self._qkv(x, qkv_t)
        out = flex_attend(q, k, v, table=self.relative_position_bias_table, window=self.window, grid=grid)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))

    def _run(
        self,
        backend: str,
        x: Float[Tensor, "b h w d"],
        qkv_t: Float[Tensor, "b 1 d3"] | None,
        bias_t: Tensor | None = None,
    ) -> Float[Tensor, "b h w d"]:
        """TMSA over a (B, H, W, D) grid with the named backend (windows when H, W exceed the window)."""
        b, h, w, d = x.shape
        if backend == "flex":
            return self._attend_flex(x.reshape(b, h * w, d), qkv_t, (h, w)).reshape(b, h, w, d)
        if (h, w) == (self.window, self.window):
            return self._attend(x.reshape(b, h * w, d), qkv_t, bias_t).reshape(b, h, w, d)
        windows = window_partition(x, self.window)  # (b * nW, w*w, d)
        per_sample = (h // self.window) * (w // self.window)
        if qkv_t is not None:
            qkv_t = qkv_t.repeat_interleave(per_sample, dim=0)  # the time token of each window
        if bias_t is not None:
            bias_t = bias_t.repeat_interleave(per_sample, dim=0)
        return window_merge(self._attend(windows, qkv_t, bias_t), self.window, h, w)

    def _backend_for(self, x: Float[Tensor, "b h w d"], qkv_t: Float[Tensor, "b 1 d3"] | None) -> str:
        backend = self.attention_backend
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
        if self.bias_temb is not None:
            if backend == "flex":
                raise ValueError("attention_backend 'flex' does not support time_bias=True; use 'sdpa' or 'auto'")
            return "sdpa"
        if backend != "auto":
            return backend
        if x.device.type != "cuda" or not flex_available():
            return "sdpa"  # no CPU FlexAttention backward in torch, and its CPU forward is unfused
        key = (str(x.device), x.dtype, torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None,
               tuple(x.shape), self.window, self.num_heads, torch.is_grad_enabled())  # fmt: skip
        if key not in _AUTO_CHOICES:
            if torch.compiler.is_compiling():
                return "sdpa"  # cannot time inside a trace; an eager call first decides for later traces
            detached = None if qkv_t is None else qkv_t.detach()
            times = measure_backends(self, x.detach(), detached, backward=torch.is_grad_enabled())
            _AUTO_CHOICES[key] = min(times, key=times.__getitem__)
        return _AUTO_CHOICES[key]

    def forward(self, x: Float[Tensor, "b n d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b n d"]:
        """Attention over each sequence of ``window**2`` tokens, conditioned on its time token ``t``."""
        self.check_inputs(x, t, grid=False)
        if x.shape[1] != self.window * self.window:
            raise ValueError(f"x must hold window**2={self.window**2} tokens (window={self.window}), got {x.shape[1]}")
        grid = x.reshape(x.shape[0], self.window, self.window, x.shape[2])  # row-major tokens: a w x w grid
        qkv_t, bias_t = self._time_terms(x, t)
        return self._run(self._backend_for(grid, qkv_t), grid, qkv_t, bias_t).reshape(x.shape)

    def forward_grid(self, x: Float[Tensor, "b h w d"], t: Float[Tensor, "b dt"]) -> Float[Tensor, "b h w d"]:
        """Local attention inside non-overlapping w x w windows of a (B, H, W, C) grid (no shift)."""
        self.check_inputs(x, t, grid=True)
        if x.shape[1] % self.window or x.shape[2] % self.window:
            window_partition(x, self.window)  # raises the shared ValueError naming the window and the grid
        qkv_t, bias_t = self._time_terms(x, t)
        return self._run(self._backend_for(x, qkv_t), x, qkv_t, bias_t)


def measure_backends(
    attn: TMSA,
    x: Float[Tensor, "b h w d"],
    qkv_t: Float[Tensor, "b 1 d3"] | None,
    *,
    backward: bool,
    repeats: int = 5,
) -> dict[str, float]:
    """Median seconds of ``attn`` on ``x`` with each of SDPA and flex (forward, or forward + backward to the
    input and the bias table; parameter ``.grad`` is never touched), after an uncounted warm-up call that
    also compiles flex's kernels; inf for flex where it fails to run, with a warning that says why. What
    ``"auto"`` decides from."""

    def call(backend: str) -> None:
        with torch.set_grad_enabled(backward):
            inp = x.detach().requires_grad_(backward)
            out = attn._run(backend, inp, qkv_t)
            if backward:
                torch.autograd.grad(out, [inp, attn.relative_position_bias_table], torch.ones_like(out))

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    times: dict[str, float] = {}
    for backend in ("sdpa", "flex"):
        try:
            call(backend)  # warm-up (and compilation)
        except Exception as err:  # flex cannot run this shape here (a head width its kernels lack, no compiler)
            if backend == "sdpa":
                raise
            reason = (str(err).strip().splitlines() or [""])[0][:300]
            warnings.warn(
                f"TMSA(dim={attn.dim}, num_heads={attn.num_heads}, window={attn.window}): flex attention failed on a "
                f"{tuple(x.shape)} {x.dtype} input ({type(err).__name__}: {reason}); SDPA is used",
                RuntimeWarning,
                stacklevel=2,
            )
            times[backend] = math.inf
            continue
        samples = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            call(backend)
            sync()
            samples.append(time.perf_counter() - start)
        times[backend] = sorted(samples)[len(samples) // 2]
    return times


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every :class:`TMSA` inside ``model`` to ``backend`` ("sdpa", "flex" or "auto"); returns
    ``model``. A run-time setting: the state dict and ``config`` are unchanged."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
    for module in model.modules():
        if isinstance(module, TMSA):
            module.attention_backend = backend
    return model


def attention_backends(model: nn.Module) -> dict[str, str]:
    """The ``attention_backend`` of every :class:`TMSA` in ``model``, by module name."""
    return {name: m.attention_backend for name, m in model.named_modules() if isinstance(m, TMSA)}
