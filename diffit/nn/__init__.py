"""Layers and backbones of DiffiT. Knows nothing of noise schedules."""

from diffit.nn.attention import ATTENTION_BACKENDS, TMSA, attention_backends, measure_backends, set_attention_backend
from diffit.nn.blocks import TIME_CONDITIONINGS, GroupNorm32, Mlp, ResBlock, TMSABlock, group_count, layer_norm_fp32
from diffit.nn.contract import Backbone, backbone_problems, capture_config, check_backbone, checkpointed_call
from diffit.nn.embeddings import (
    LabelEmbedding,
    TimestepEmbedding,
    condition_token,
    sincos_pos_embed_2d,
    sinusoidal_embedding,
)
from diffit.nn.flex import flex_attend, flex_available, relative_bias_score_mod, window_block_mask, window_mask_mod
from diffit.nn.windows import relative_position_index, window_merge, window_partition

__all__ = [
    "ATTENTION_BACKENDS",
    "TMSA",
    "attention_backends",
    "flex_attend",
    "flex_available",
    "measure_backends",
    "relative_bias_score_mod",
    "set_attention_backend",
    "window_block_mask",
    "window_mask_mod",
    "Backbone",
    "backbone_problems",
    "capture_config",
    "check_backbone",
    "checkpointed_call",
    "group_count",
    "GroupNorm32",
    "LabelEmbedding",
    "Mlp",
    "ResBlock",
    "TMSABlock",
    "TIME_CONDITIONINGS",
    "TimestepEmbedding",
    "condition_token",
    "layer_norm_fp32",
    "relative_position_index",
    "sincos_pos_embed_2d",
    "sinusoidal_embedding",
    "window_merge",
    "window_partition",
]

from diffit.nn.unet import ImageDiffiT, diffit_cifar10, diffit_ffhq64, diffit_tiny  # noqa: E402

__all__ += ["ImageDiffiT", "diffit_cifar10", "diffit_ffhq64", "diffit_tiny"]

from diffit.nn.latent import (  # noqa: E402
    LatentDiffiT,
    latent_diffit_b_2,
    latent_diffit_l_2,
    latent_diffit_s_2,
    latent_diffit_xl_2,
)

__all__ += ["LatentDiffiT", "latent_diffit_b_2", "latent_diffit_l_2", "latent_diffit_s_2", "latent_diffit_xl_2"]

from diffit.nn.count import count_flops, count_params  # noqa: E402

__all__ += ["count_flops", "count_params"]
