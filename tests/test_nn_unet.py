"""Image-space DiffiT U-Net: presets, init options, conditioning, config round trip, checkpointing, bf16, errors."""

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import layer_norm_reference, tmsa_reference

from diffit.nn import ImageDiffiT, diffit_cifar10, diffit_ffhq64, diffit_tiny, unet


def _small(**overrides: object) -> ImageDiffiT:
    kwargs: dict = dict(
        resolution=8, in_channels=2, channels=(16, 32), blocks_per_stage=(1, 1), window=2, num_heads=2,
        time_dim=16, groups=4,
    )  # fmt: skip
    return ImageDiffiT(**(kwargs | overrides))


def _randomise_head(model: ImageDiffiT) -> None:
    """A larger output conv, so that outputs depend clearly on everything upstream."""
    with torch.no_grad():
        model.head_conv.weight.normal_(0, 0.1)
        model.head_conv.bias.normal_(0, 0.1)


@pytest.mark.parametrize("factory", [diffit_cifar10, diffit_ffhq64])
def test_paper_presets_shapes_on_meta(factory) -> None:
    with torch.device("meta"):
        model = factory()
        r = model.resolution
        out = model(torch.randn(2, 3, r, r), torch.randn(2))
    assert out.shape == (2, 3, r, r)
    assert model.num_classes is None and model.in_channels == 3


def test_preset_sizes() -> None:
    with torch.device("meta"):
        counts = {f.__name__: sum(p.numel() for p in f().parameters()) for f in (diffit_cifar10, diffit_ffhq64)}
    assert 20e6 < counts["diffit_cifar10"] < 40e6 and 30e6 < counts["diffit_ffhq64"] < 60e6
    tiny = diffit_tiny()
    assert 1e6 < sum(p.numel() for p in tiny.parameters()) < 4e6


def _group_norm(x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm from its definition, eps 1e-6 (the model's)."""
    g = x.reshape(x.shape[0], norm.num_groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return g.reshape(x.shape) * norm.weight.double()[:, None, None] + norm.bias.double()[:, None, None]


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _conv(x: torch.Tensor, conv: torch.nn.Conv2d, stride: int = 1) -> torch.Tensor:
    return F.conv2d(x, conv.weight.double(), conv.bias.double(), stride=stride, padding=conv.kernel_size[0] // 2)


def _resblock_reference(block, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 9-10 around Eq. 7-8, with TMSA applied to each w x w window by the per-token reference."""
    h = _conv(_swish(_group_norm(x, block.norm)), block.conv)  # Eq. 9
    grid, w = h.permute(0, 2, 3, 1), block.block.attn.window
    attended = torch.zeros_like(grid)
    normed = layer_norm_reference(grid)
    for bi in range(grid.shape[0]):
        for i in range(0, grid.shape[1], w):
            for j in range(0, grid.shape[2], w):
                win = normed[bi : bi + 1, i : i + w, j : j + w].reshape(1, w * w, -1)
                out = tmsa_reference(block.block.attn, win, t[bi : bi + 1])
                attended[bi, i : i + w, j : j + w] = out.reshape(w, w, -1)
    grid = grid + attended  # Eq. 7
    mlp = block.block.mlp
    hidden = layer_norm_reference(grid) @ mlp.fc1.weight.double().T + mlp.fc1.bias.double()
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU (gelu="none")
    grid = grid + hidden @ mlp.fc2.weight.double().T + mlp.fc2.bias.double()  # Eq. 8
    return grid.permute(0, 3, 1, 2) + x  # Eq. 10


def unet_reference(
    model: ImageDiffiT, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """The U-Net of the module docstring in float64, written from its description: a 3x3 tokenizer; per stage
    ResBlocks then a stride-2 3x3 conv; per decoder stage a nearest x2 upsample and 3x3 conv, the encoder's
    output at that resolution concatenated after it and projected by a 1x1 conv, ResBlocks; GN, Swish, 3x3 conv.
    The time token adds the label's row and the augmentation labels ``a`` through a bias-free linear map."""
    x = x.double()
    freqs = torch.exp(-math.log(10_000) * torch.arange(128, dtype=torch.float64) / 128)
    mlp = model.time_embed.mlp
    t = torch.cat([torch.cos(s.double()[:, None] * freqs), torch.sin(s.double()[:, None] * freqs)], dim=1)
    t = _swish(t @ mlp[0].weight.double().T + mlp[0].bias.double()) @ mlp[2].weight.double().T + mlp[2].bias.double()
    t = t + model.label_embed.embedding_table.weight.double()[y] + a.double() @ model.augment_embed.weight.double().T
    h, skips = _conv(x, model.tokenizer), []
    for stage in model.encoder:
        for block in stage.blocks:
            h = _resblock_reference(block, h, t)
        skips.append(h)
        if stage.down is not None:
            h = _conv(h, stage.down, stride=2)
    for stage in model.decoder:
        h = _conv(h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), stage.up[1])
        skip = next(k for k in reversed(skips) if k.shape[-1] == h.shape[-1])
        h = _conv(torch.cat([h, skip], dim=1), stage.fuse)
        for block in stage.blocks:
            h = _resblock_reference(block, h, t)
    return _conv(_swish(_group_norm(h, model.head_norm)), model.head_conv)


def test_forward_matches_a_reference_written_from_the_paper() -> None:
    """Three stages (two skips), labels and augmentation labels, every parameter random (the zero-initialised head
    too), in float64."""
    model = _small(channels=(4, 8, 8), blocks_per_stage=(1, 1, 1), num_heads=2, time_dim=8, groups=2,
                   num_classes=3, augment_dim=3, gelu="none").double().eval()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    x, s, y = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randn(2, dtype=torch.float64), torch.tensor([0, 2])
    a = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x, s, y, a), unet_reference(model, x, s, y, a), rtol=1e-9, atol=1e-9)


def test_tiny_forward_shape_and_init_options() -> None:
    """Default init: a zero output conv (a fresh model outputs exactly 0, EDM's D(x) = c_skip x) and a time MLP
    drawn N(0, 0.02) with zero biases (DiT's); ``zero_head=False`` and ``time_init_std=None`` keep torch's inits."""
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 5, 9])
    torch.manual_seed(0)
    model = diffit_tiny()
    out = model(x, torch.randn(3), y)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    for linear in (model.time_embed.mlp[0], model.time_embed.mlp[2]):
        assert abs(linear.weight.std().item() - 0.02) < 2e-3 and torch.equal(linear.bias, torch.zeros_like(linear.bias))
    live = diffit_tiny(zero_head=False, time_init_std=None)
    out = live(x, torch.randn(3), y)
    assert out.abs().min() > 0 and not torch.allclose(out, live(x, torch.randn(3), y))  # noise level matters
    fan_in = live.time_embed.mlp[0].in_features  # torch's nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert live.time_embed.mlp[0].weight.abs().max() <= fan_in**-0.5 and live.time_embed.mlp[0].bias.abs().max() > 0
    assert live.config["time_init_std"] is None and live.config["zero_head"] is False


def test_conditional_none_is_null_class_and_unconditional_refuses_y() -> None:
    model = _small(num_classes=3).eval()
    _randomise_head(model)
    x, s = torch.randn(2, 2, 8, 8), torch.randn(2)
    torch.testing.assert_close(model(x, s), model(x, s, torch.tensor([3, 3])))
    assert not torch.allclose(model(x, s, torch.tensor([0, 0])), model(x, s, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match=r"^y must be None: the model is unconditional \(num_classes=None\)"):
        _small().eval()(x, s, torch.tensor([0, 1]))  # it was ignored without a word


def test_noise_label_changes_output_and_samples_are_independent() -> None:
    model = _small().eval()
    _randomise_head(model)
    x = torch.randn(2, 2, 8, 8)
    out = model(x, torch.tensor([0.1, -0.5]))
    assert not torch.allclose(out[0], model(x, torch.tensor([0.7, -0.5]))[0])
    torch.testing.assert_close(out[1:], model(x[1:], torch.tensor([-0.5])), atol=1e-5, rtol=1e-5)


def test_config_is_json_and_rebuilds_the_same_model() -> None:
    model = _small(num_classes=4, window=(2, 4), num_heads=(2, 4))
    _randomise_head(model)
    config = json.loads(json.dumps(model.config))
    rebuilt = type(model)(**config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x, s, y = torch.randn(2, 2, 8, 8), torch.randn(2), torch.tensor([0, 3])
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x, s, y), model(x, s, y))
    assert rebuilt.config == config


def test_gradients_reach_every_parameter() -> None:
    model = _small(num_classes=3, class_dropout_prob=0.0)
    _randomise_head(model)
    model(torch.randn(2, 2, 8, 8), torch.randn(2), torch.tensor([0, 2])).square().sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("label_embed"):
            continue  # only the rows of the classes used get gradients
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_checkpointing_gives_identical_outputs_and_gradients() -> None:
    plain, ckpt = _small(), _small().set_grad_checkpointing(True)
    _randomise_head(plain)
    ckpt.load_state_dict(plain.state_dict())
    x, s = torch.randn(2, 2, 8, 8), torch.randn(2)
    results = []
    for m in (plain, ckpt):
        out = m(x, s)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-6)


def test_bf16_autocast_close_to_fp32() -> None:
    """Documented tolerance: bf16 matmuls/convs (8 mantissa bits) give ~1e-2 relative error at the output;
    norms and softmax stay fp32 and the output keeps the input's dtype."""
    model = _small().eval()
    _randomise_head(model)
    x, s = torch.randn(2, 2, 8, 8), torch.randn(2)
    ref = model(x, s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, s)
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 3e-2


def test_construction_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 2\\^\\(stages-1\\)=4"):
        _small(resolution=10, channels=(8, 8, 8), blocks_per_stage=(1, 1, 1))
    with pytest.raises(ValueError, match="window=4 must divide the 6x6 feature map of stage 1"):
        _small(resolution=12, window=4)
    with pytest.raises(ValueError, match="window must be an int or have one entry per stage"):
        _small(window=(2, 2, 2))
    with pytest.raises(ValueError, match="num_heads=3 must divide the width channels\\[0\\]=16"):
        _small(num_heads=3)
    with pytest.raises(ValueError, match="blocks_per_stage must have one entry per stage"):
        _small(blocks_per_stage=(1,))
    with pytest.raises(ValueError, match="time_init_std must be a finite number > 0 or None, got 0"):
        _small(time_init_std=0.0)
    with pytest.raises(ValueError, match="gelu must be 'tanh' or 'none', got 'erf'"):
        _small(gelu="erf")
    # These raised ZeroDivisionError or failed only at the first forward before.
    with pytest.raises(ValueError, match="groups must be an integer >= 1, got 0"):
        _small(groups=0)
    with pytest.raises(ValueError, match="groups must be an integer >= 1, got -3"):
        _small(groups=-3)
    with pytest.raises(ValueError, match="mlp_ratio must be a finite number > 0, got 0.0"):
        _small(mlp_ratio=0.0)
    with pytest.raises(ValueError, match="hidden width .* must be >= 1, got 0"):
        _small(mlp_ratio=0.01)
    with pytest.raises(ValueError, match="time_init_std must be a finite number > 0 or None, got inf"):
        _small(time_init_std=float("inf"))
    per_stage = inspect.unwrap(unet._per_stage)  # as users run it: the suite's type checks would answer first
    for name, bad in (("window", (2, 2.5)), ("num_heads", (2.0, 4))):  # int() made them (2, 2) and (2, 4)
        with pytest.raises(ValueError, match=f"{name} must hold integers"):
            per_stage(bad, 2, name)
    assert per_stage(np.int64(2), 2, "window") == (2, 2)
    with pytest.raises(ValueError, match="augment_dim must be an integer >= 0"):
        _small(augment_dim=-1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [  # int() truncated the first three silently; torch failed deep inside on the others
        (dict(channels=(16.5, 32)), r"^channels must be a sequence of integers, one per stage, got \(16.5, 32\)$"),
        (dict(channels="1632"), r"^channels must be a sequence of integers"),  # its digits were taken for stages
        (dict(blocks_per_stage=(1.5, 1)), r"^blocks_per_stage must be a sequence of integers"),
        (dict(resolution=8.0), r"^resolution must be an integer >= 1, got 8.0$"),
        (dict(time_dim=16.0), r"^time_dim must be an integer >= 1, got 16.0$"),
        (dict(num_classes=2.5), r"^num_classes must be an integer >= 1, got 2.5$"),
        (dict(num_classes=True), r"^num_classes must be an integer >= 1, got True$"),
        (dict(class_dropout_prob=1.5), r"^class_dropout_prob must be in \[0, 1\), got 1.5$"),  # was 'dropout_prob'
        (dict(mlp_ratio=float("nan")), r"^mlp_ratio must be a finite number > 0, got nan$"),
    ],
)
def test_sizes_must_be_integers_named_also_without_the_type_checks(overrides: dict, match: str) -> None:
    init, config = inspect.unwrap(ImageDiffiT.__init__), _small().config  # as users run it, without the type checks
    with pytest.raises(ValueError, match=match):
        init(ImageDiffiT.__new__(ImageDiffiT), **{**config, **overrides})
    numpy_ints = ImageDiffiT.__new__(ImageDiffiT)
    init(numpy_ints, **{**config, "resolution": np.int64(8), "channels": [np.int64(16), 32]})
    assert numpy_ints.channels == (16, 32)


def test_gelu_choice_is_the_mlp_activation_and_round_trips() -> None:
    """``gelu="none"`` swaps only the MLP's activation for exact GELU: same parameters, outputs that differ by the
    tanh approximation's error (under 1e-3 of GELU), and a config that rebuilds it."""
    torch.manual_seed(0)
    tanh = _small(num_classes=3)
    _randomise_head(tanh)
    exact = ImageDiffiT(**{**tanh.config, "gelu": "none"})
    exact.load_state_dict(tanh.state_dict())
    acts = {m.approximate for m in exact.modules() if isinstance(m, torch.nn.GELU)}
    assert acts == {"none"} and {m.approximate for m in tanh.modules() if isinstance(m, torch.nn.GELU)} == {"tanh"}
    x, sigma, y = torch.randn(2, 2, 8, 8), torch.randn(2), torch.tensor([0, 2])
    a, b = tanh(x, sigma, y), exact(x, sigma, y)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-3)
    rebuilt = ImageDiffiT(**json.loads(json.dumps(exact.config)))
    rebuilt.load_state_dict(exact.state_dict())
    assert rebuilt.config["gelu"] == "none" and torch.equal(rebuilt(x, sigma, y), b)


def test_forward_errors_name_the_argument() -> None:
    model = _small()
    with pytest.raises(ValueError, match="x must have shape \\(b, 2, 8, 8\\), got \\(1, 2, 16, 16\\)"):
        model(torch.randn(1, 2, 16, 16), torch.randn(1))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(1, 3, 8, 8), torch.randn(1))


def test_forward_refuses_inputs_torch_would_fail_on_deep_inside_naming_them() -> None:
    model, cond = _small(), _small(num_classes=3)
    forward = inspect.unwrap(ImageDiffiT.forward)  # as users run it: the suite's type checks would answer first
    x, s, y = torch.randn(2, 2, 8, 8), torch.randn(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"^x must be a floating-point tensor, got torch.int64$"):
        forward(model, x.long(), s)
    # numpy arrays are float64: a convolution's "Input type (double) and bias type (float)" before
    with pytest.raises(ValueError, match=r"^x has dtype torch.float64 but the model's weights are torch.float32"):
        model(x.double(), s)
    with pytest.raises(ValueError, match=r"^x has dtype torch.float16"):
        model(x.half(), s)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts x for the model: no refusal
        assert model(x.bfloat16(), s).shape == x.shape
    with pytest.raises(ValueError, match=r"^x is on meta but the model's weights are on cpu"):
        model(x.to("meta"), s)
    with pytest.raises(ValueError, match=r"^y must hold class ids as int64 \(or int32\), got torch.float32$"):
        forward(cond, x, s, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^y must be class ids in \[0, 3\] \(3 = the null class\), got .* \[0, 7\]$"):
        cond(x, s, torch.tensor([0, 7]))  # was the embedding's "labels must be ..." (not an argument of forward)
    torch.testing.assert_close(cond(x, s, y.int()), cond(x, s, y))
    with pytest.raises(ValueError, match=r"^augment_labels must have shape \(2, 9\)"):
        forward(_small(augment_dim=9), x, s, None, torch.zeros(1, 9))  # it was broadcast over the batch
    assert model(x[:0], s[:0]).shape == (0, 2, 8, 8)  # batch 0 divided by zero in the windowed attention
