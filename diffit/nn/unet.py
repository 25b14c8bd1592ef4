"""The image-space DiffiT: a U-shaped encoder/decoder of DiffiT ResBlocks with local-window TMSA (paper Sec. 3.3).

    x -> Conv3x3 tokenizer -> [L_s ResBlocks (window w_s) -> conv downsample] per stage ...  bottleneck stage
      -> [conv upsample -> fuse(skip) -> L_s ResBlocks] per stage, mirrored -> GN -> Swish -> Conv3x3 -> out

Every ResBlock computes x^ = Conv3x3(Swish(GN(x))) and x = DiffiT-Block(x^, x_t) + x (Eq. 9-10) where the
block attends inside non-overlapping w x w windows; the U-shape's resampling mixes windows, so no shift.

Skip connections (the paper does not say how they merge): the decoder concatenates the encoder's output at the
same resolution and projects 2C -> C with a 1x1 convolution. A learned 1x1 projection of the concatenation
contains addition as a special case ([I, I]) but lets each decoder channel weigh encoder detail against decoder
context; U-ViT (Bao et al., CVPR 2023) ablated exactly this for transformer diffusion backbones and found
concat + linear clearly better than addition. It costs 2C^2 parameters per resolution (< 2 % of a preset).

The lowest-resolution stage is the bottleneck: it appears once, so the decoder mirrors the other stages
(as in the paper's Fig. 3). The output convolution is zero-initialised, so a fresh model outputs exactly 0
(EDM's preconditioning then starts from D(x) = c_skip x).
"""

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.nn.attention import set_attention_backend
from diffit.nn.blocks import GroupNorm32, ResBlock, TMSABlock, group_count
from diffit.nn.contract import capture_config, check_inputs, checkpointed_call
from diffit.nn.embeddings import LabelEmbedding, TimestepEmbedding, condition_token
from diffit.util import check_integer, is_integer


def _integers(value: object, name: str) -> tuple[int, ...]:
    """A per-stage sequence of integers as a tuple; ValueError naming ``name`` for a string or a non-integer entry
    (int() truncated 8.5 to 8, and a string's digits were taken for stages)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(is_integer(v) for v in value):
        raise ValueError(f"{name} must be a sequence of integers, one per stage, got {value!r}")
    return tuple(int(v) for v in value)


def _per_stage(value: int | Sequence[int], stages: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to every stage, or check a per-stage sequence has one entry per stage."""
    if is_integer(value):
        return (int(value),) * stages
    values = tuple(value)
    if not all(is_integer(v) for v in values):  # int() made 2.5 2
        raise ValueError(f"{name} must hold integers, got {list(values)}")
    values = tuple(int(v) for v in values)
    if len(values) != stages:
        raise ValueError(f"{name} must be an int or have one entry per stage ({stages}), got {list(values)}")
    return values


class EncoderStage(nn.Module):
    """L ResBlocks at one resolution, then a stride-2 Conv3x3 to the next stage's width (absent at the bottom)."""

    def __init__(self, blocks: list[ResBlock], down: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.down = down


class DecoderStage(nn.Module):
    """Nearest x2 upsample + Conv3x3 from the coarser width, concat-skip fuse (1x1 conv 2C -> C), L ResBlocks."""

    def __init__(self, *, coarse: int, dim: int, blocks: list[ResBlock]) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(coarse, dim, 3, padding=1))
        self.fuse = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.blocks = nn.ModuleList(blocks)


class ImageDiffiT(nn.Module):
    """The image-space DiffiT U-Net: ``(x, noise_label, y) -> output`` of the same shape as ``x``.

    Follows the :class:`~diffit.nn.Backbone` contract; ``config`` holds the constructor arguments.

    ``noise_label`` is the scalar conditioning per sample fed to the sinusoidal time embedding (EDM's
    c_noise = ln(sigma) / 4); the backbone knows nothing else about the noise schedule. With ``num_classes``
    set, the label embedding is added to the time token (training-time label dropout to the null class is
    built in; classifier-free guidance itself lives in the diffusion package).
    """

    @capture_config
    def __init__(
        self,
        *,
        resolution: int,
        in_channels: int,
        channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        window: int | Sequence[int],
        num_heads: int | Sequence[int],
        time_dim: int,
        num_classes: int | None = None,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
        groups: int = 32,
        qk_norm: bool = False,
        augment_dim: int = 0,
        time_conditioning: str = "tmsa",
        label_init_std: float = 1.0,
        time_init_std: float | None = 0.02,
        zero_head: bool = True,
        gelu: str = "tanh",
    ) -> None:
        """
        Args:
            resolution: input height = width in pixels; divisible by 2^(stages-1) and by each stage's window.
            in_channels: image channels (also the output channels).
            channels: feature width of each stage, finest first (paper: 128, 256, 256[, 256]).
            blocks_per_stage: ResBlocks per stage in the encoder (the decoder mirrors all but the bottleneck).
            window: local attention window side, one for all stages or one per stage (paper: 4 / 8).
            num_heads: attention heads, one for all stages or one per stage; must divide the stage width.
            time_dim: width of the time token x_t (paper's best: 512).
            num_classes: number of classes for class conditioning; None for an unconditional model.
            class_dropout_prob: probability of dropping a label to the null class in training.
            mlp_ratio: MLP hidden width of the Transformer blocks as a multiple of the stage width.
            groups: GroupNorm groups (reduced to a divisor of the width where needed).
            qk_norm: per-head LayerNorm of queries and keys (an optional bf16 stability guard).
            augment_dim: width of the augmentation labels embedded into the time token (EDM's non-leaking
                augmentation; 9 with ``diffit.augment``); 0 for none.
            time_conditioning: how the time token enters each block: "tmsa" (the paper) or one of the
                ablation's alternatives "adaln", "bias", "input" (see :class:`~diffit.nn.TMSABlock`).
            label_init_std: standard deviation of the initial label table. N(0, 1) (torch's ``nn.Embedding``
                default) puts the class into the time token from the first step; the N(0, 0.02) of DiT and the
                latent release leaves a small model blind to the label for its first few hundred steps
                (``benchmarks/bench_architectures.py``, docs/benchmarks.md).
            time_init_std: the time MLP's weights are drawn from N(0, time_init_std) with zero biases, as in DiT
                and the latent release (default 0.02); None keeps torch's ``nn.Linear`` init. Per training
                step the two measured the same on the digits (docs/benchmarks.md).
            zero_head: zero-initialise the output convolution, so a fresh model outputs exactly 0 (ADM's and
                EDM's choice; default). False keeps torch's init: much faster for the first ~300 steps, but
                behind from ~500 steps on (docs/benchmarks.md).
            gelu: the MLP's GELU: "tanh" (the approximation of the latent release; default) or "none" (exact erf
                GELU, which torch's CPU kernels run ~3x faster; see :class:`~diffit.nn.Mlp`).
        """
        super().__init__()
        channels, blocks_per_stage = _integers(channels, "channels"), _integers(blocks_per_stage, "blocks_per_stage")
        for name, value in (("resolution", resolution), ("in_channels", in_channels), ("time_dim", time_dim)):
            check_integer(name, value)
        check_integer("augment_dim", augment_dim, minimum=0)
        if num_classes is not None:
            check_integer("num_classes", num_classes)
        if not 0 <= class_dropout_prob < 1:  # checked again by LabelEmbedding, under its own name
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        stages = len(channels)
        if stages < 1:
            raise ValueError("channels must name at least one stage width, got an empty sequence")
        if len(blocks_per_stage) != stages:
            raise ValueError(f"blocks_per_stage must have one entry per stage ({stages}), got {list(blocks_per_stage)}")
        if min(channels) < 1 or min(blocks_per_stage) < 1:
            raise ValueError(f"channels and blocks_per_stage must be positive, got {channels}, {blocks_per_stage}")
        windows = _per_stage(window, stages, "window")
        heads = _per_stage(num_heads, stages, "num_heads")
        factor = 2 ** (stages - 1)
        if resolution % factor:
            raise ValueError(f"resolution must be a positive multiple of 2^(stages-1)={factor}, got {resolution}")
        for s, (c, w, h) in enumerate(zip(channels, windows, heads, strict=True)):
            side = resolution // 2**s
            if w < 1 or side % w:
                raise ValueError(
                    f"window={w} must divide the {side}x{side} feature map of stage {s} (resolution {resolution})"
                )
            if h < 1 or c % h:
                raise ValueError(f"num_heads={h} must divide the width channels[{s}]={c}")
        if not 0 <= label_init_std < math.inf:
            raise ValueError(f"label_init_std must be a finite number >= 0, got {label_init_std}")
        if time_init_std is not None and not 0 < time_init_std < math.inf:
            raise ValueError(f"time_init_std must be a finite number > 0 or None, got {time_init_std}")

        self.resolution, self.in_channels, self.num_classes = resolution, in_channels, num_classes
        self.channels, self.windows, self.augment_dim = channels, windows, augment_dim
        self.label_init_std, self.time_init_std, self.zero_head = label_init_std, time_init_std, zero_head
        self.grad_checkpointing = False

        def res_blocks(s: int) -> list[ResBlock]:
            return [
                ResBlock(dim=channels[s], time_dim=time_dim, num_heads=heads[s], window=windows[s],
                         mlp_ratio=mlp_ratio, groups=groups, qk_norm=qk_norm, time_conditioning=time_conditioning,
                         gelu=gelu)
                for _ in range(blocks_per_stage[s])
            ]  # fmt: skip

        self.time_embed = TimestepEmbedding(dim=time_dim)
        # EDM's augmentation conditioning: labels -> time token, no bias, so zero labels add nothing.
        self.augment_embed = nn.Linear(augment_dim, time_dim, bias=False) if augment_dim > 0 else None
        self.label_embed = (
            None
            if num_classes is None
            else LabelEmbedding(num_classes=num_classes, dim=time_dim, dropout_prob=class_dropout_prob)
        )
        self.tokenizer = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.encoder = nn.ModuleList(
            EncoderStage(
                res_blocks(s),
                nn.Conv2d(channels[s], channels[s + 1], 3, stride=2, padding=1) if s + 1 < stages else None,
            )
            for s in range(stages)
        )
        self.decoder = nn.ModuleList(
            DecoderStage(coarse=channels[s + 1], dim=channels[s], blocks=res_blocks(s))
            for s in reversed(range(stages - 1))
        )
        self.head_norm = GroupNorm32(group_count(groups, channels[0]), channels[0], eps=1e-6)
        self.head_act = nn.SiLU()
        self.head_conv = nn.Conv2d(channels[0], in_channels, kernel_size=3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linear layers with zero biases, except the time MLP (torch's default, or
        N(0, ``time_init_std``)); an N(0, ``label_init_std``) label table; zero adaLN-Zero projections (that
        ablation only); the output convolution at torch's default, or zero with ``zero_head``."""
        # The defaults draw exactly as before these options existed, so a seed still gives the same model.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for linear in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            if self.time_init_std is None:
                linear.reset_parameters()
            else:
                nn.init.normal_(linear.weight, std=self.time_init_std)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.embedding_table.weight, std=self.label_init_std)
        if self.zero_head:  # the initial model outputs exactly 0
            nn.init.zeros_(self.head_conv.weight)
            nn.init.zeros_(self.head_conv.bias)
        else:
            self.head_conv.reset_parameters()
        for module in self.modules():
            if isinstance(module, TMSABlock):
                module.reset_conditioning()

    def set_grad_checkpointing(self, enabled: bool = True) -> "ImageDiffiT":
        """Recompute every ResBlock's activations in the backward pass while training (less memory, one more
        forward); a run-time switch, not part of ``config``."""
        self.grad_checkpointing = enabled
        return self

    def set_attention_backend(self, backend: str) -> "ImageDiffiT":
        """Every TMSA's attention core: "sdpa" (default), "flex" (FlexAttention) or "auto" (flex where available
        and measured faster, else SDPA); a run-time switch, not part of ``config`` or the state dict."""
        set_attention_backend(self, backend)
        return self

    def stages(self) -> list[dict[str, int | str]]:
        """Per stage: feature map side, width, ResBlocks (encoder + mirrored decoder), tokens, window, windows."""
        rows = []
        for s, (c, w) in enumerate(zip(self.channels, self.windows, strict=True)):
            r, n = self.resolution // 2**s, self.config["blocks_per_stage"][s]
            blocks = n if s == len(self.channels) - 1 else 2 * n
            rows.append({"stage": str(s), "resolution": f"{r}x{r}", "channels": c, "blocks": blocks,
                         "tokens": r * r, "window": f"{w}x{w}", "windows": (r // w) ** 2})  # fmt: skip
        return rows

    def time_token(self, noise_label: Float[Tensor, " b"], y: Int[Tensor, " b"] | None) -> Float[Tensor, "b dt"]:
        """x_t = TimeEmbed(noise_label) [+ LabelEmbed(y)]; a conditional model given ``y=None`` uses the null class."""
        return condition_token(self.time_embed, self.label_embed, noise_label, y)

    def forward(
        self,
        x: Float[Tensor, "b c h w"],
        noise_label: Float[Tensor, " b"],
        y: Int[Tensor, " b"] | None = None,
        augment_labels: Float[Tensor, "b a"] | None = None,
    ) -> Float[Tensor, "b c h w"]:
        """Denoiser backbone output F(x; c_noise, y); ``y`` must be None for an unconditional model."""
        shape = (self.in_channels, self.resolution, self.resolution)
        check_inputs(x, shape, noise_label, y, weight=self.tokenizer.weight, num_classes=self.num_classes)
        if augment_labels is not None:
            if self.augment_embed is None:
                raise ValueError("augment_labels were given but the model was built with augment_dim=0")
            if tuple(augment_labels.shape) != (x.shape[0], self.augment_dim):
                raise ValueError(
                    f"augment_labels must have shape ({x.shape[0]}, {self.augment_dim}) (one row of augment_dim "
                    f"values per sample of x), got {tuple(augment_labels.shape)}"
                )
        t = self.time_token(noise_label, y)
        ckpt = self.grad_checkpointing and self.training
        if augment_labels is not None:
            t = t + self.augment_embed(augment_labels.to(t.dtype))
        # The residual stream is kept in the input's dtype (fp32) even under bf16 autocast.
        h = self.tokenizer(x).to(x.dtype)
        skips = []
        for stage in self.encoder:
            for block in stage.blocks:
                h = checkpointed_call(ckpt, block, h, t)
            skips.append(h)
            if stage.down is not None:
                h = stage.down(h).to(x.dtype)  # (b, C_s, H, W) -> (b, C_{s+1}, H/2, W/2)
        skips.pop()  # the bottleneck's output is h itself
        for stage in self.decoder:
            h = stage.up(h).to(x.dtype)  # (b, C_{s+1}, H/2, W/2) -> (b, C_s, H, W)
            h = stage.fuse(torch.cat([h, skips.pop()], dim=1)).to(x.dtype)  # concat skip, 2C -> C
            for block in stage.blocks:
                h = checkpointed_call(ckpt, block, h, t)
        return self.head_conv(self.head_act(self.head_norm(h))).to(x.dtype)


def diffit_cifar10(**overrides: object) -> ImageDiffiT:
    """CIFAR-10 32x32: 3 stages of 128/256/256 channels, 4 ResBlocks each (paper App. H.1), window 4, time 512."""
    kwargs: dict = dict(
        resolution=32, in_channels=3, channels=(128, 256, 256), blocks_per_stage=(4, 4, 4), window=4,
        num_heads=4, time_dim=512,
    )  # fmt: skip
    return ImageDiffiT(**(kwargs | overrides))


def diffit_ffhq64(**overrides: object) -> ImageDiffiT:
    """FFHQ 64x64: 4 stages of 128/256/256/256 channels, 4 ResBlocks each (App. H.1), window 8, time 512."""
    kwargs: dict = dict(
        resolution=64, in_channels=3, channels=(128, 256, 256, 256), blocks_per_stage=(4, 4, 4, 4), window=8,
        num_heads=4, time_dim=512,
    )  # fmt: skip
    return ImageDiffiT(**(kwargs | overrides))


def diffit_tiny(
    *, resolution: int = 16, in_channels: int = 1, num_classes: int | None = 10, **overrides: object
) -> ImageDiffiT:
    """A CPU-sized model for the bundled 16x16 grayscale digits (1.16M parameters).

    3 stages of 32/64/128 channels (16, 8, 4 pixels at 16x16; the 4x4 bottleneck's window is global), head
    width 32, ResBlocks (1, 1, 2), window 4, time 128, MLP ratio 2, exact GELU, label table N(0, 0.5). The
    width doubles as the resolution halves, so each stage costs about the same. Chosen at equal compute
    (docs/benchmarks.md, "Architectures at equal compute"):

    - MLP ratio 2 rather than the paper's 4: at this size the MLP's hidden activations dominate a CPU step,
      and ratio 2 trains ~19 % more images per second for the same loss per step.
    - exact GELU rather than the release's tanh approximation: torch's CPU kernel for the approximation is
      ~3x slower, 4-6 % of a training step.
    - label table N(0, 0.5) rather than ``ImageDiffiT``'s N(0, 1): a lower held-out loss and FID for the
      same accuracy early in training (N(0, 0.25) loses accuracy, N(0, 2) loses everything).
    """
    kwargs: dict = dict(
        resolution=resolution, in_channels=in_channels, channels=(32, 64, 128), blocks_per_stage=(1, 1, 2),
        window=4, num_heads=(1, 2, 4), time_dim=128, num_classes=num_classes, mlp_ratio=2.0, gelu="none",
        label_init_std=0.5,
    )  # fmt: skip
    return ImageDiffiT(**(kwargs | overrides))
