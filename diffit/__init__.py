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

__version__ = "0.1.0"

if os.environ.get("DIFFIT_TYPECHECK", "0").strip().lower() not in ("", "0", "false", "no"):
    from jaxtyping import install_import_hook

    # Installed before any diffit sub-module is imported, and never uninstalled: it decorates them all.
    _typecheck_hook = install_import_hook("diffit", "beartype.beartype")
