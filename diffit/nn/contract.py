"""The backbone contract: what diffit's run functions (training, denoiser wrappers, generation, checkpoints)
need from a network, and the constructor-argument record that lets a checkpoint rebuild it.

A backbone is any ``nn.Module`` with

- ``forward(x, noise_label, y=None)``: ``x`` (B, C, H, W) noisy input in the objective's input scaling,
  ``noise_label`` (B,) float: the objective's scalar noise conditioning (EDM's c_noise = ln(sigma)/4, or the
  DDPM timestep), ``y`` (B,) int class ids with ``num_classes`` meaning "no class" (or None);
- ``in_channels``: channels of ``x``; ``resolution``: its height = width (pixels, or latent cells);
- ``num_classes``: the number of classes of a class-conditional model, None for an unconditional one.

Optional: ``time_token(noise_label, y)`` (the conditioning vector), ``set_grad_checkpointing(enabled)``,
``augment_dim`` (EDM augmentation labels passed as ``augment_labels=``), and ``config``: the constructor's
keyword arguments, recorded by :func:`capture_config`, which checkpoints store as JSON to rebuild the model.
"""

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from diffit.util import is_integer

__all__ = ["Backbone", "backbone_problems", "check_backbone", "capture_config", "checkpointed_call", "jsonable"]


@runtime_checkable
class Backbone(Protocol):
    """A denoising network diffit can train, wrap, sample and checkpoint (see the module docstring)."""

    in_channels: int
    resolution: int
    num_classes: int | None

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's output for ``x`` at ``noise_label`` (and class ids ``y``; the null class when None)."""
        ...


def backbone_problems(model: Any) -> list[str]:
    """What ``model`` lacks of the :class:`Backbone` contract (empty when it follows it)."""
    problems = [] if isinstance(model, nn.Module) else [f"is a {type(model).__name__}, not a torch.nn.Module"]
    for name in ("in_channels", "resolution"):
        value = getattr(model, name, None)
        if not is_integer(value) or value < 1:
            problems.append(f"needs a positive int attribute '{name}' (got {value!r})")
    if not hasattr(model, "num_classes"):
        problems.append("needs an attribute 'num_classes' (an int, or None for an unconditional model)")
    else:
        n = model.num_classes
        if n is not None and (not is_integer(n) or n < 1):
            problems.append(f"num_classes must be a positive int or None (got {n!r})")
    return problems


def check_backbone(model: Any, *, what: str | None = None) -> None:
    """ValueError (one line) naming the first thing ``model`` lacks of the :class:`Backbone` contract; ``what``
    starts the message (default: ``model <its class>``)."""
    problems = backbone_problems(model)
    if problems:
        raise ValueError(f"{what or f'model {type(model).__name__}'} {problems[0]} (see diffit.nn.Backbone)")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists); raises TypeError where JSON cannot hold it."""
    return json.loads(json.dumps(value, allow_nan=False))


Init = TypeVar("Init", bound=Callable[..., None])


def capture_config(init: Init) -> Init:
    """Decorate ``__init__`` so that ``self.config`` is the dict of the arguments it was actually called with
    (defaults filled in), never a dict kept by hand beside them; ``type(m)(**m.config)`` rebuilds ``m``.

    Values are stored as JSON types where JSON can hold them (tuples become lists); a model whose arguments
    JSON cannot hold still works, but its checkpoints cannot rebuild it without the user's help.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as err:  # name the class, as a plain constructor call would
            raise TypeError(f"{type(self).__name__}(): {err}") from None
        bound.apply_defaults()
        config: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    config["*args"] = list(value)
            else:
                config[name] = value
        init(self, *args, **kwargs)
        try:
            config = jsonable(config)
        except (TypeError, ValueError):
            pass  # kept as given; model_spec records that this model cannot be rebuilt from JSON
        # Set after __init__: a decorated subclass's wrapper finishes last, so its own arguments win.
        self.config = config

    return wrapper  # type: ignore[return-value]


def check_dtype(x: Tensor, weight: Tensor) -> None:
    """ValueError naming ``x`` unless it is a floating-point tensor in the dtype of the ``weight`` it meets first
    (any floating dtype under autocast, which casts it): torch's own errors ("mat1 and mat2 must have the same
    dtype", "Input type (double) and bias type (float)") name no argument. Free: no device synchronisation."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise ValueError(
            f"x has dtype {x.dtype} but the model's weights are {weight.dtype}: convert x (x.to({weight.dtype})) "
            "or the model, or run under torch.autocast"
        )


def check_inputs(
    x: Tensor,
    sample_shape: tuple[int, ...],
    noise_label: Tensor,
    y: Tensor | None,
    *,
    weight: Tensor,
    num_classes: int | None,
) -> None:
    """A backbone's inputs, checked once where they enter its ``forward`` (shapes, dtypes and devices only: no
    device synchronisation, except the class-id range on a CPU): ``x`` a floating-point ``(B, *sample_shape)`` on
    the device and (outside autocast) in the dtype of the model's ``weight``; one noise label and, for a
    class-conditional model, one integer class id in [0, num_classes] per sample (``num_classes`` is the null
    class); no ``y`` for an unconditional one. Torch would broadcast a single noise label or class over the batch,
    giving every sample the same one without a word, and an unconditional model would ignore the classes."""
    if tuple(x.shape[1:]) != sample_shape:
        raise ValueError(f"x must have shape (b, {', '.join(map(str, sample_shape))}), got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the model's weights are on {weight.device}: move one to the other")
    check_dtype(x, weight)
    for name, value in (("noise_label", noise_label), ("y", y)):
        if value is not None and tuple(value.shape) != (x.shape[0],):
            raise ValueError(f"{name} must have shape ({x.shape[0]},), one per sample of x, got {tuple(value.shape)}")
        if value is not None and value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but x is on {x.device}")
    if y is None:
        return
    if num_classes is None:
        raise ValueError("y must be None: the model is unconditional (num_classes=None) and would ignore the classes")
    if y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must hold class ids as int64 (or int32), got {y.dtype}")
    # The ids' range costs a device synchronisation on a GPU (where the embedding raises a device-side assert).
    if y.device.type == "cpu" and not torch.compiler.is_compiling() and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > num_classes:
            null = f"{num_classes} = the null class"
            raise ValueError(f"y must be class ids in [0, {num_classes}] ({null}), got values in [{lo}, {hi}]")


def checkpointed_call(enabled: bool, fn: Callable[..., Tensor], *args: Any) -> Tensor:
    """``fn(*args)``, recomputed in the backward pass when ``enabled`` (gradient checkpointing)."""
    if not enabled:
        return fn(*args)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False)
