"""The latent DiffiT (paper Sec. 3.4; the authors' release ``DiffiT``): a ViT of TMSA blocks on VAE latents.

    tokens = PatchEmbed(x) + pos_embed                       (fixed 2D sin-cos codes)
    c      = TimeEmbed(t) + LabelEmbed(y)                    (the TMSA time token)
    tokens = Block_depth(... Block_1(tokens, c) ...)         (Eq. 7-8, global attention + relative bias)
    out    = unpatchify(Linear(SiLU(LN(tokens))))            (zero-initialised Linear)

Attention is global: the window of each TMSA is the whole token grid, so its relative position bias table
covers every token pair. There is no adaLN, no masking and no long skip. Module and parameter names follow
the release exactly (``x_embedder.proj``, ``pos_embed``, ``t_embedder.mlp.0/2``, ``y_embedder.embedding_table``,
``blocks.i.attn.*``, ``blocks.i.mlp.fc1/fc2``, ``final_layer.linear``), so its ``diffit_256.safetensors`` /
``diffit_512.safetensors`` state dicts load with ``strict=True``.
"""

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.nn.attention import set_attention_backend
from diffit.nn.blocks import TMSABlock, layer_norm_fp32
from diffit.nn.contract import capture_config, check_inputs, checkpointed_call
from diffit.nn.embeddings import LabelEmbedding, TimestepEmbedding, condition_token, sincos_pos_embed_2d
from diffit.util import check_integer


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: a Conv2d with kernel = stride = p (``proj``)."""

    def __init__(self, *, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b n d"]:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")  # row-major token order


class FinalLayer(nn.Module):
    """LN (no affine) -> SiLU -> Linear to p*p*out_channels values per token (``linear``)."""

    def __init__(self, *, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: Float[Tensor, "b n d"]) -> Float[Tensor, "b n e"]:
        return self.linear(nn.functional.silu(layer_norm_fp32(x)))


class LatentDiffiT(nn.Module):
    """The latent DiffiT backbone: ``(x, noise_label, y) -> (eps[, variance])`` on a (B, C, H, W) latent.

    ``noise_label`` is the DDPM timestep (float, 0..999) fed to the sinusoidal time embedding; ``y`` are class ids with
    ``num_classes`` the null class (a conditional model given ``y=None`` uses it). With ``learn_sigma`` the
    output has 2C channels: C for epsilon, then C for the learned-range variance interpolation.
    """

    @capture_config
    def __init__(
        self,
        *,
        input_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_classes: int | None = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        qk_norm: bool = False,
        time_conditioning: str = "tmsa",
    ) -> None:
        """
        Args:
            input_size: latent height = width (32 for 256 px images, 64 for 512 px); divisible by ``patch_size``.
            patch_size: side of the square patches turned into tokens (2 in the release).
            in_channels: latent channels (4 for the SD VAE).
            hidden_size: token width D (1152 for XL); divisible by ``num_heads`` and by 4 (2D sin-cos codes).
            depth: number of TMSA blocks (28 for XL).
            num_heads: attention heads.
            mlp_ratio: MLP hidden width as a multiple of D.
            num_classes: number of classes (the label table has one extra null row); None: unconditional.
            class_dropout_prob: probability of dropping a label to the null class in training.
            learn_sigma: also predict the variance interpolation (output 2 * in_channels channels).
            qk_norm: per-head LayerNorm of queries and keys (not in the release; changes the state dict).
            time_conditioning: "tmsa" (the release) or an ablation's "adaln", "bias", "input" (see
                :class:`~diffit.nn.TMSABlock`; changes the state dict).
        """
        super().__init__()
        sizes = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
                     depth=depth, num_heads=num_heads)  # fmt: skip
        for name, value in sizes.items():
            check_integer(name, value)
        if num_classes is not None:
            check_integer("num_classes", num_classes)
        if not 0 <= class_dropout_prob < 1:  # checked again by LabelEmbedding, under its own name
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if input_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide input_size={input_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2D sin-cos position codes), got {hidden_size}")
        self.resolution = self.input_size = input_size
        self.patch_size, self.in_channels, self.num_classes = patch_size, in_channels, num_classes
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid_size = input_size // patch_size  # tokens per side = the attention window
        self.grad_checkpointing = False

        self.x_embedder = PatchEmbed(patch_size=patch_size, in_channels=in_channels, dim=hidden_size)
        self.t_embedder = TimestepEmbedding(dim=hidden_size)
        self.y_embedder = (
            None
            if num_classes is None
            else LabelEmbedding(num_classes=num_classes, dim=hidden_size, dropout_prob=class_dropout_prob)
        )
        # Fixed, not trained, but stored in the state dict like the release's.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            TMSABlock(
                dim=hidden_size,
                time_dim=hidden_size,
                num_heads=num_heads,
                window=self.grid_size,
                mlp_ratio=mlp_ratio,
                qk_norm=qk_norm,
                time_conditioning=time_conditioning,
            )
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(dim=hidden_size, patch_size=patch_size, out_channels=self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The release's init: xavier-uniform Linear and patch conv (zero biases), N(0, 0.02) time MLP and
        label table, sin-cos position codes, and a zero final Linear (the initial model outputs 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.data.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size)[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # as a Linear on the flattened patch
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        for block in self.blocks:
            block.reset_conditioning()

    def unpatchify(self, x: Float[Tensor, "b n e"]) -> Float[Tensor, "b c h w"]:
        """Per token a p x p x C patch, channel last within the patch (the release's layout)."""
        return rearrange(
            x, "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid_size, p=self.patch_size, q=self.patch_size
        )

    def set_grad_checkpointing(self, enabled: bool = True) -> "LatentDiffiT":
        """Recompute every block's activations in the backward pass while training (less memory, one more
        forward); a run-time switch, not part of ``config``."""
        self.grad_checkpointing = enabled
        return self

    def set_attention_backend(self, backend: str) -> "LatentDiffiT":
        """Every TMSA's attention core: "sdpa" (default), "flex" (FlexAttention) or "auto" (flex where available
        and measured faster, else SDPA); a run-time switch, not part of ``config`` or the state dict."""
        set_attention_backend(self, backend)
        return self

    def stages(self) -> list[dict[str, int | str]]:
        """One stage of ``depth`` blocks attending globally over the token grid."""
        g = self.grid_size
        row = {"stage": "all", "resolution": f"{g}x{g} tokens", "channels": self.config["hidden_size"],
               "blocks": self.config["depth"], "tokens": g * g, "window": f"{g}x{g} global", "windows": 1}  # fmt: skip
        return [row]

    def time_token(self, noise_label: Float[Tensor, " b"], y: Int[Tensor, " b"] | None) -> Float[Tensor, "b d"]:
        """The time token c = TimeEmbed(t) + LabelEmbed(y); ``y=None`` means the null class."""
        return condition_token(self.t_embedder, self.y_embedder, noise_label, y)

    def forward(
        self, x: Float[Tensor, "b c h w"], noise_label: Float[Tensor, " b"], y: Int[Tensor, " b"] | None = None
    ) -> Float[Tensor, "b c2 h w"]:
        """eps (and the variance interpolation with ``learn_sigma``) for DDPM timestep ``noise_label``."""
        shape = (self.in_channels, self.input_size, self.input_size)
        check_inputs(x, shape, noise_label, y, weight=self.x_embedder.proj.weight, num_classes=self.num_classes)
        tokens = self.x_embedder(x).to(x.dtype) + self.pos_embed  # (b, T, D); residual stream in x's dtype
        c = self.time_token(noise_label, y)
        ckpt = self.grad_checkpointing and self.training
        for block in self.blocks:
            tokens = checkpointed_call(ckpt, block, tokens, c)
        return self.unpatchify(self.final_layer(tokens)).to(x.dtype)


def latent_diffit_s_2(**kwargs: object) -> LatentDiffiT:
    """S/2: width 384, depth 12, 6 heads, patch 2 (DiT sizes); defaults to 32x32x4 latents, 1000 classes."""
    return LatentDiffiT(**(_LATENT_DEFAULTS | dict(hidden_size=384, depth=12, num_heads=6) | kwargs))


def latent_diffit_b_2(**kwargs: object) -> LatentDiffiT:
    """B/2: width 768, depth 12, 12 heads, patch 2."""
    return LatentDiffiT(**(_LATENT_DEFAULTS | dict(hidden_size=768, depth=12, num_heads=12) | kwargs))


def latent_diffit_l_2(**kwargs: object) -> LatentDiffiT:
    """L/2: width 1024, depth 24, 16 heads, patch 2."""
    return LatentDiffiT(**(_LATENT_DEFAULTS | dict(hidden_size=1024, depth=24, num_heads=16) | kwargs))


def latent_diffit_xl_2(**kwargs: object) -> LatentDiffiT:
    """XL/2, the released model: width 1152, depth 28, 16 heads, patch 2 (561.0M trainable parameters)."""
    return LatentDiffiT(**(_LATENT_DEFAULTS | dict(hidden_size=1152, depth=28, num_heads=16) | kwargs))


_LATENT_DEFAULTS: dict = dict(input_size=32, patch_size=2, in_channels=4)
