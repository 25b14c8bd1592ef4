"""diffit: DiffiT (Diffusion Vision Transformers, Hatamizadeh et al., ECCV 2024) in PyTorch.

Sub-packages, with dependencies pointing one way (top level -> {nn, diffusion, data}):
- ``diffit.nn``: layers and backbones (TMSA, window ops, blocks, the image-space U-Net, the latent ViT).
- ``diffit.diffusion``: schedules, denoiser wrappers, losses and samplers.
- ``diffit.data``: WebDataset shards, pipelines, latent encoding and the bundled digits.
- top level modules: what composes them for a run (training, EMA, checkpoints, evaluation).
"""

__version__ = "0.1.0"
