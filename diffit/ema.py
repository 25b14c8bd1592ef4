"""Exponential moving average of weights, and unwrapping of DDP / torch.compile wrappers.

The EMA is a plain copy of the *unwrapped* module, so neither DDP's ``module.`` nor torch.compile's
``_orig_mod.`` prefix ever reaches its state dict or a checkpoint (a classic source of silent key mismatches).
"""

import copy

import torch
from torch import nn

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under any DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) layers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``_orig_mod.`` / ``module.`` from every key (state dicts saved by other tools)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen deep copy of the unwrapped model, in eval mode, to hold the moving average."""
    ema = copy.deepcopy(unwrap(model)).eval()
    ema.requires_grad_(False)
    return ema


def ema_decay(step: int, *, decay: float, warmup: bool = True) -> float:
    """Decay used at optimizer step ``step`` (0-based).

    With ``warmup`` the decay is min(decay, (1 + step) / (10 + step)) (the TensorFlow ``num_updates`` rule),
    so a short run's EMA already tracks the model instead of staying at its random initialisation.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    source = unwrap(model)
    ema_params = dict(ema.named_parameters())
    for name, p in source.named_parameters():
        ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, b in source.named_buffers():
        ema_buffers[name].copy_(b)
