"""diffit: DiffiT (Diffusion Vision Transformers, Hatamizadeh et al., ECCV 2024) in PyTorch.

Sub-packages, with dependencies pointing one way (top level -> {nn, diffusion, data}):
- ``diffit.nn``: layers and backbones (TMSA, window ops, blocks, the image-space U-Net, the latent ViT).
- ``diffit.diffusion``: schedules, denoiser wrappers, losses and samplers.
- ``diffit.data``: WebDataset shards, pipelines, latent encoding and the bundled digits.
- top level modules: what composes them for a run (objectives, training, EMA, checkpoints, generation, runs,
  evaluation).

Runtime shape checks: with the environment variable ``DIFFIT_TYPECHECK=1`` set before diffit is imported,
every annotated function and method of diffit checks its tensor shapes and dtypes (jaxtyping + beartype) and
raises ``jaxtyping.TypeCheckError`` on a mismatch, e.g. a (B, 3, 32, 32) input to a 1-channel model's block.
It slows small models down noticeably; the test suite always runs with it.
"""

import os
from collections.abc import Callable
from typing import Any, no_type_check

__version__ = "0.1.0"


@no_type_check  # not decorated by the hook that calls it (pytest's hook decorates this module too)
def _typechecker(fn: Callable, *args: Any, **kwargs: Any) -> Callable:
    """beartype, with PEP 484's implicit numeric tower: an ``int`` passes where a ``float`` is annotated, as it
    does without the checks (plain beartype refuses ``karras_sigmas(5, 1, 80)``). Named by the import hook
    below and by pytest's ``--jaxtyping-packages``."""
    from beartype import BeartypeConf, beartype

    return beartype(fn, *args, conf=BeartypeConf(is_pep484_tower=True), **kwargs)


if os.environ.get("DIFFIT_TYPECHECK", "0").strip().lower() not in ("", "0", "false", "no"):
    from jaxtyping import install_import_hook

    # Installed before any diffit sub-module is imported, and never uninstalled: it decorates them all.
    _typecheck_hook = install_import_hook("diffit", "diffit._typechecker")
