"""diffit.nn core: window ops, relative position index, TMSA against the paper's equations, blocks."""

import inspect
import math

import numpy as np
import pytest
import torch
from helpers import tiny_image_diffit, tmsa_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import TypeCheckError

from diffit.nn import (
    TMSA,
    LabelEmbedding,
    ResBlock,
    TimestepEmbedding,
    TMSABlock,
    attention,
    backbone_problems,
    check_backbone,
    checkpointed_call,
    relative_position_index,
    sincos_pos_embed_2d,
    sinusoidal_embedding,
    window_merge,
    window_partition,
)
from diffit.util import OutOfMemory


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), nh=st.integers(1, 3), nw=st.integers(1, 3), w=st.integers(1, 4), c=st.integers(1, 5))
def test_window_merge_inverts_partition(b: int, nh: int, nw: int, w: int, c: int) -> None:
    x = torch.randn(b, nh * w, nw * w, c)
    windows = window_partition(x, w)
    assert windows.shape == (b * nh * nw, w * w, c)
    assert torch.equal(window_merge(windows, w, nh * w, nw * w), x)


def test_window_partition_matches_brute_force_loop() -> None:
    b, h, w, c, win = 2, 6, 9, 3, 3
    x = torch.randn(b, h, w, c)
    expected = []
    for bi in range(b):
        for i in range(0, h, win):
            for j in range(0, w, win):
                expected.append(x[bi, i : i + win, j : j + win].reshape(win * win, c))
    assert torch.equal(window_partition(x, win), torch.stack(expected))


def test_window_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="window=4 must divide"):
        window_partition(torch.randn(1, 6, 8, 2), 4)
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        relative_position_index(0)
    unwrap = inspect.unwrap  # as users run them: the suite's type checks would answer first
    with pytest.raises(ValueError, match=r"^window must be an integer >= 1, got 2.5$"):  # a (9, 9) index before
        unwrap(relative_position_index)(2.5)
    with pytest.raises(ValueError, match=r"^window must be an integer >= 1, got 2.0$"):  # torch's reshape() before
        unwrap(window_partition)(torch.randn(1, 4, 4, 2), 2.0)
    with pytest.raises(ValueError, match=r"^x must be a \(B, H, W, C\) grid, got shape \(4, 4, 2\)$"):  # einops
        unwrap(window_partition)(torch.randn(4, 4, 2), 2)
    with pytest.raises(ValueError, match=r"^windows must be \(B \* H/w \* W/w, w\*w, C\), got shape \(4, 4\)$"):
        unwrap(window_merge)(torch.randn(4, 4), 2, 4, 4)
    with pytest.raises(ValueError, match=r"^windows count 5 is not a multiple of 4 windows per image$"):  # einops
        window_merge(torch.randn(5, 4, 2), 2, 4, 4)


@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_relative_position_index_brute_force(w: int) -> None:
    idx = relative_position_index(w)
    n = w * w
    for i in range(n):
        for j in range(n):
            dy, dx = i // w - j // w, i % w - j % w
            assert idx[i, j] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
    assert idx.max() == (2 * w - 1) ** 2 - 1


def _random_tmsa(dim: int = 16, heads: int = 4, window: int = 2, time_dim: int = 8) -> TMSA:
    attn = TMSA(dim=dim, time_dim=time_dim, num_heads=heads, window=window)
    with torch.no_grad():  # non-trivial bias table and biases so every term of Eq. 3-6 matters
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def test_tmsa_global_matches_paper_equations() -> None:
    attn = _random_tmsa(window=3)
    x, t = torch.randn(2, 9, 16), torch.randn(2, 8)
    torch.testing.assert_close(attn(x, t).double(), tmsa_reference(attn, x, t), atol=1e-5, rtol=1e-5)


def test_tmsa_windowed_matches_paper_equations_per_window() -> None:
    attn = _random_tmsa(window=2)
    x, t = torch.randn(2, 4, 6, 16), torch.randn(2, 8)
    out = attn.forward_grid(x, t)
    for bi in range(2):
        for i in range(0, 4, 2):
            for j in range(0, 6, 2):
                win = x[bi : bi + 1, i : i + 2, j : j + 2].reshape(1, 4, 16)
                ref = tmsa_reference(attn, win, t[bi : bi + 1]).reshape(2, 2, 16)
                torch.testing.assert_close(out[bi, i : i + 2, j : j + 2].double(), ref, atol=1e-5, rtol=1e-5)


def test_window_equal_to_grid_is_global_attention() -> None:
    attn = _random_tmsa(window=4)
    x, t = torch.randn(3, 4, 4, 16), torch.randn(3, 8)
    torch.testing.assert_close(attn.forward_grid(x, t), attn(x.reshape(3, 16, 16), t).reshape(3, 4, 4, 16))


def test_tmsa_without_time_projection_is_mhsa_with_relative_bias() -> None:
    attn = _random_tmsa(dim=16, heads=4, window=3)
    with torch.no_grad():
        attn.qkv_temb.weight.zero_()
        attn.qkv_temb.bias.zero_()
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 9, 16)
    bias = attn.relative_position_bias().detach().repeat(2, 1, 1)  # (b * heads, n, n)
    expected, _ = mha(x, x, x, attn_mask=bias, need_weights=False)
    torch.testing.assert_close(attn(x, torch.randn(2, 8)), expected, atol=1e-5, rtol=1e-5)


def test_time_token_changes_the_attention_pattern() -> None:
    attn = _random_tmsa(window=2)
    x = torch.randn(1, 4, 16)
    assert not torch.allclose(attn(x, torch.zeros(1, 8)), attn(x, torch.ones(1, 8)))


def test_gradients_reach_every_parameter() -> None:
    block = ResBlock(dim=16, time_dim=8, num_heads=2, window=2, groups=4)
    temb = TimestepEmbedding(dim=8, frequency_dim=32)
    t = temb(torch.rand(2) * 999)
    block(torch.randn(2, 16, 4, 4), t).square().sum().backward()
    for module in (block, temb):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_checkpointed_call_gives_identical_outputs_and_gradients() -> None:
    plain = ResBlock(dim=16, time_dim=8, num_heads=2, window=2, groups=4)
    ckpt = ResBlock(dim=16, time_dim=8, num_heads=2, window=2, groups=4)
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    outs = []
    for m, enabled in ((plain, False), (ckpt, True)):
        y = checkpointed_call(enabled, m, x, t)
        y.square().sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    for g0, g1 in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-7)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    """Documented tolerance: bf16 keeps 8 mantissa bits, so a block's output drifts by ~1e-2 relative."""
    block = TMSABlock(dim=32, time_dim=16, num_heads=4, window=4)
    x, t = torch.randn(2, 16, 32), torch.randn(2, 16)
    ref = block(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block(x, t)
    assert low.dtype == torch.float32  # the residual stream stays fp32
    assert (low - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("factory", ["diffit_tiny", "latent"])
def test_float64_models_run_in_float64_and_agree_with_float32(factory: str) -> None:
    """The fp32 norms and embeddings keep float64 as it is (the GPU check's reference model is a ``.double()``
    copy): every activation stays float64 and the result matches the fp32 model to fp32's rounding."""
    from diffit.nn import diffit_tiny, latent_diffit_s_2

    torch.manual_seed(0)
    model = diffit_tiny() if factory == "diffit_tiny" else latent_diffit_s_2(input_size=8, depth=1, num_classes=10)
    with torch.no_grad():  # the zero-initialised output layers would make every output 0
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    x = torch.randn(2, model.in_channels, model.resolution, model.resolution)
    label, y = torch.rand(2), torch.tensor([1, 2])
    ref = model(x, label, y)
    out = model.double()(x.double(), label.double(), y)
    assert out.dtype == torch.float64
    assert (out - ref.double()).norm() / ref.norm() < 1e-5


def test_sinusoidal_embedding_is_cos_then_sin() -> None:
    t = torch.tensor([0.0, 3.0])
    emb = sinusoidal_embedding(t, 8)
    freqs = torch.exp(-math.log(1e4) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert torch.equal(emb[0, :4], torch.ones(4)) and torch.equal(emb[0, 4:], torch.zeros(4))


def test_label_embedding_dropout_and_force_drop() -> None:
    emb = LabelEmbedding(num_classes=3, dim=4, dropout_prob=0.5)
    labels = torch.tensor([0, 1, 2, 1])
    emb.eval()
    forced = emb(labels, force_drop=torch.tensor([True, False, True, False]))
    null = emb.embedding_table.weight[3]
    assert torch.equal(forced[0], null) and torch.equal(forced[2], null)
    assert torch.equal(forced[1], emb.embedding_table.weight[1])
    emb.train()
    dropped = emb(torch.zeros(4000, dtype=torch.long)).eq(null).all(dim=1).float().mean()
    assert 0.45 < dropped < 0.55
    with pytest.raises(ValueError, match="labels must be class ids in \\[0, 3\\]"):
        emb(torch.tensor([4]))


def test_label_drops_follow_force_drop_in_training_and_the_generator() -> None:
    """In training a label is dropped where it is forced *or* where u_i < p, u_i the generator's i-th uniform
    draw: force_drop still holds, and a seeded generator alone decides the random drops (reproducible batches)."""
    emb = LabelEmbedding(num_classes=3, dim=4, dropout_prob=0.3).train()
    labels, null = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0]), emb.embedding_table.weight[3]
    forced = emb(labels, force_drop=torch.ones(8, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    assert forced.eq(null).all()
    u = torch.rand(8, generator=torch.Generator().manual_seed(5))
    out = emb(labels, generator=torch.Generator().manual_seed(5))
    expected = emb.embedding_table.weight[torch.where(u < 0.3, 3, labels)]
    assert 0 < (u < 0.3).sum() < 8 and torch.equal(out, expected)


def test_sinusoidal_embedding_odd_dim_float64_and_max_period() -> None:
    """An odd dim gets its zero column last; float64 noise levels keep float64 sinusoids (the GPU check's
    reference model); TimestepEmbedding's max_period sets the frequencies f_i = max_period^(-i/half)."""
    t = torch.tensor([0.5, 999.25], dtype=torch.float64)
    emb = sinusoidal_embedding(t, 7)
    freqs = torch.exp(-math.log(1e4) * torch.arange(3, dtype=torch.float64) / 3)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs), torch.zeros(2, 1)], dim=1)
    assert emb.dtype == torch.float64
    torch.testing.assert_close(emb, expected.double(), atol=1e-12, rtol=0)
    temb = TimestepEmbedding(dim=4, frequency_dim=8, max_period=100.0)
    freqs = 100.0 ** (-torch.arange(4) / 4)
    sinusoids = torch.cat([torch.cos(t.float()[:, None] * freqs), torch.sin(t.float()[:, None] * freqs)], dim=1)
    torch.testing.assert_close(temb(t.float()), temb.mlp(sinusoids))


def test_sincos_pos_embed_matches_release_formula() -> None:
    dim, g = 16, 3
    grid = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))  # (w, h): x first

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    expected = np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)
    torch.testing.assert_close(sincos_pos_embed_2d(dim, g), torch.from_numpy(expected).float())


def test_bad_shapes_raise_errors_naming_the_argument() -> None:
    attn = TMSA(dim=16, time_dim=8, num_heads=4, window=2)
    with pytest.raises(ValueError, match="window\\*\\*2=4 tokens"):
        attn(torch.randn(1, 5, 16), torch.randn(1, 8))
    with pytest.raises(TypeCheckError, match="parameter 't'"):  # batch of t does not match x (jaxtyping hook)
        attn(torch.randn(2, 4, 16), torch.randn(3, 8))
    with pytest.raises(TypeCheckError, match="parameter 'x'"):  # a 2-D tensor where (b, n, d) is expected
        TMSABlock(dim=16, time_dim=8, num_heads=4, window=2)(torch.randn(4, 16), torch.randn(1, 8))
    with pytest.raises(TypeCheckError, match="parameter 'x'"):  # integer tokens where floats are expected
        attn(torch.randint(0, 3, (1, 4, 16)), torch.randn(1, 8))
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=4"):
        TMSA(dim=10, time_dim=8, num_heads=4, window=2)
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1, got 0"):  # ZeroDivisionError before
        TMSA(dim=8, time_dim=8, num_heads=0, window=2)
    with pytest.raises(ValueError, match="the grid must be at least 1x1, got 0x0"):
        window_merge(torch.randn(1, 4, 8), 2, 0, 0)
    for period in (float("nan"), 0.0):  # NaN output / "math domain error" before
        with pytest.raises(ValueError, match="max_period must be a finite number > 1"):
            TimestepEmbedding(dim=8, max_period=period)


def test_one_time_token_noise_label_or_class_for_a_whole_batch_is_refused_also_without_the_type_checks() -> None:
    """Torch would broadcast it, giving every sample the same time or class; ``inspect.unwrap`` removes the
    jaxtyping hook the suite runs with, as users run by default."""
    attn = TMSA(dim=16, time_dim=8, num_heads=4, window=2)
    one_token = r"t must have one time token of time_dim=8 per sample of x \(batch 2\), got shape \(1, 8\)"
    with pytest.raises(ValueError, match=one_token):
        inspect.unwrap(TMSA.forward)(attn, torch.randn(2, 4, 16), torch.randn(1, 8))
    with pytest.raises(ValueError, match=one_token):
        inspect.unwrap(TMSA.forward_grid)(attn, torch.randn(2, 2, 2, 16), torch.randn(1, 8))
    model, x = tiny_image_diffit(3), torch.randn(2, 1, 8, 8)
    forward = inspect.unwrap(type(model).forward)
    forward(model, x, torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"noise_label must have shape \(2,\), one per sample of x, got \(1,\)"):
        forward(model, x, torch.ones(1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\), one per sample of x, got \(1,\)"):
        forward(model, x, torch.ones(2), torch.tensor([1]))


# The paper's ablation of time conditioning (TMSABlock.time_conditioning), each against its own equations.


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("grid", [False, True])
def test_time_bias_attention_matches_its_equations(grid: bool) -> None:
    attn = _randomise(TMSA(dim=16, time_dim=8, num_heads=4, window=2, time_qkv=False, time_bias=True))
    assert attn.qkv_temb is None and attn.bias_temb.out_features == 9 * 4
    t = torch.randn(2, 8)
    if not grid:
        x = torch.randn(2, 4, 16)
        torch.testing.assert_close(attn(x, t).double(), tmsa_reference(attn, x, t), atol=1e-5, rtol=1e-5)
        return
    x = torch.randn(2, 4, 2, 16)  # two windows per sample, each with its sample's time bias
    out = attn.forward_grid(x, t)
    for bi in range(2):
        for i in (0, 2):
            win = x[bi : bi + 1, i : i + 2].reshape(1, 4, 16)
            ref = tmsa_reference(attn, win, t[bi : bi + 1]).reshape(2, 2, 16)
            torch.testing.assert_close(out[bi, i : i + 2].double(), ref, atol=1e-5, rtol=1e-5)


def test_plain_attention_ignores_time_and_flex_refuses_time_bias() -> None:
    attn = _randomise(TMSA(dim=16, time_dim=8, num_heads=4, window=3, time_qkv=False))
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(attn(x, torch.randn(2, 8)), attn(x, torch.randn(2, 8)))
    biased = TMSA(dim=16, time_dim=8, num_heads=4, window=3, time_qkv=False, time_bias=True)
    biased.attention_backend = "flex"
    with pytest.raises(ValueError, match="'flex' does not support time_bias"):
        biased(x, torch.randn(2, 8))


def test_adaln_block_is_adaln_zero() -> None:
    from diffit.nn import layer_norm_fp32

    block = TMSABlock(dim=16, time_dim=8, num_heads=4, window=2, time_conditioning="adaln")
    x, t = torch.randn(2, 4, 16), torch.randn(2, 8)
    torch.testing.assert_close(block(x, t), x)  # zero-initialised gates: a fresh block is the identity
    _randomise(block)
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaln(t)[:, None].chunk(6, dim=-1)
    h = x + gate1 * block.attn(layer_norm_fp32(x) * (1 + scale1) + shift1, t)
    expected = h + gate2 * block.mlp(layer_norm_fp32(h) * (1 + scale2) + shift2)
    torch.testing.assert_close(block(x, t), expected)
    assert block.attn.qkv_temb is None  # the attention itself is plain
    grid = torch.randn(2, 2, 4, 16)
    torch.testing.assert_close(
        block.forward_grid(grid, t)[:, :, :2], block(grid[:, :, :2].reshape(2, 4, 16), t).reshape(2, 2, 2, 16)
    )


def test_input_block_adds_the_time_token_to_the_attention_input() -> None:
    from diffit.nn import layer_norm_fp32

    block = _randomise(TMSABlock(dim=16, time_dim=8, num_heads=4, window=2, time_conditioning="input"))
    x, t = torch.randn(2, 4, 16), torch.randn(2, 8)
    h = x + block.attn(layer_norm_fp32(x) + block.time_in(t)[:, None], t)
    torch.testing.assert_close(block(x, t), h + block.mlp(layer_norm_fp32(h)))


def test_time_conditioning_choices_and_state_dicts() -> None:
    from diffit.nn import ImageDiffiT, diffit_tiny

    with pytest.raises(ValueError, match="time_conditioning must be one of tmsa, adaln, bias, input, got 'film'"):
        TMSABlock(dim=16, time_dim=8, num_heads=4, window=2, time_conditioning="film")
    base = set(diffit_tiny().state_dict())
    assert not any(k.endswith(("bias_temb.weight", "adaln.1.weight", "time_in.weight")) for k in base)
    x, s, y = torch.randn(2, 1, 16, 16), torch.randn(2), torch.tensor([3, 10])
    for kind, extra in (("adaln", "adaln.1.weight"), ("bias", "bias_temb.weight"), ("input", "time_in.weight")):
        model = diffit_tiny(time_conditioning=kind)
        keys = set(model.state_dict())
        assert any(k.endswith(extra) for k in keys) and not any(k.endswith("qkv_temb.weight") for k in keys)
        rebuilt = ImageDiffiT(**model.config)  # the variant is part of config, so checkpoints rebuild it
        rebuilt.load_state_dict(model.state_dict())
        _randomise(model)
        out = model(x, s, y)
        assert out.shape == x.shape and not torch.allclose(out, model(x, s + 1.0, y))  # depends on the noise level


def test_blocks_name_x_or_t_where_torch_failed_in_a_matmul() -> None:
    """TMSA, TMSABlock and ResBlock, used in a model of your own, check their inputs' widths and dtype (free: shapes
    and dtypes only); torch's "mat1 and mat2 shapes cannot be multiplied (32x6 and 8x24)" named neither."""
    block, x, t = TMSABlock(dim=8, time_dim=4, num_heads=2, window=2), torch.randn(2, 4, 4, 8), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"^x must be \(B, H, W, dim\) with dim=8, got shape \(2, 4, 4, 6\)$"):
        block.forward_grid(x[..., :6], t)
    with pytest.raises(ValueError, match=r"^x must be \(B, H, W, dim\) with dim=8, got shape \(2, 8, 4, 4\)$"):
        block.forward_grid(x.permute(0, 3, 1, 2), t)  # channels first
    with pytest.raises(ValueError, match=r"^t must have one time token of time_dim=4 per sample of x \(batch 2\)"):
        block.forward_grid(x, torch.randn(2, 5))
    adaln = TMSABlock(dim=8, time_dim=4, num_heads=2, window=2, time_conditioning="adaln")
    with pytest.raises(ValueError, match=r"^t must have one time token of time_dim=4"):  # read by adaLN first
        adaln.forward_grid(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"^x has dtype torch.float64 but the model's weights are torch.float32"):
        block(x.reshape(2, 16, 8)[:, :4].double(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.forward_grid(x.bfloat16(), t).shape == x.shape
    res = ResBlock(dim=8, time_dim=4, num_heads=2, window=2, groups=2)
    with pytest.raises(ValueError, match=r"^x must have shape \(b, 8, h, w\), got \(2, 6, 4, 4\)$"):  # GroupNorm's
        res(torch.randn(2, 6, 4, 4), t)
    with pytest.raises(ValueError, match=r"^time_dim must be an integer >= 1, got 0$"):  # t was then ignored
        TMSA(dim=8, time_dim=0, num_heads=2, window=2)
    with pytest.raises(ValueError, match=r"^mlp_ratio must be a finite number > 0, got nan$"):
        TMSABlock(dim=8, time_dim=4, num_heads=2, window=2, mlp_ratio=float("nan"))


def test_embeddings_name_their_arguments() -> None:
    with pytest.raises(ValueError, match=r"^t must be 1-D, one noise level per sample, got shape \(2, 3\)$"):
        inspect.unwrap(sinusoidal_embedding)(torch.zeros(2, 3), 8)  # a broadcasting error before
    with pytest.raises(ValueError, match=r"^dim must be an integer >= 2, got 7.5$"):  # a (2, 7) embedding before
        inspect.unwrap(sinusoidal_embedding)(torch.zeros(2), 7.5)
    with pytest.raises(ValueError, match=r"^dim must be an integer >= 1, got 0$"):
        TimestepEmbedding(dim=0)
    with pytest.raises(ValueError, match=r"^grid_size must be an integer >= 1, got 0$"):
        sincos_pos_embed_2d(8, 0)
    with pytest.raises(ValueError, match=r"^labels must hold class ids as int64 \(or int32\), got torch.float32$"):
        inspect.unwrap(LabelEmbedding.forward)(LabelEmbedding(num_classes=3, dim=4), torch.tensor([1.0]))


def test_a_window_whose_position_index_cannot_be_allocated_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index has window**4 entries: LatentDiffiT(input_size=256, patch_size=1) asked the CPU allocator for
    64 GiB and got torch's 'DefaultCPUAllocator: can't allocate memory'."""

    def fails(window: int) -> torch.Tensor:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(attention, "relative_position_index", fails)
    with pytest.raises(OutOfMemory, match=r"^window: a 256x256 window's relative position index \(65536, 65536\) "):
        TMSA(dim=8, time_dim=4, num_heads=2, window=256)


def test_backbone_problems_name_each_missing_part_of_the_contract() -> None:
    """Each rule of the Backbone contract (diffit.nn.contract) gives its own problem, the first one first."""

    class Net(torch.nn.Module):
        def __init__(self, **attrs: object) -> None:
            super().__init__()
            self.__dict__.update(attrs)

    good = dict(in_channels=3, resolution=8, num_classes=None)
    assert backbone_problems(Net(**good)) == [] and backbone_problems(Net(**(good | dict(num_classes=10)))) == []
    assert backbone_problems(Net(**(good | dict(resolution=0)))) == [
        "needs a positive int attribute 'resolution' (got 0)"
    ]
    assert backbone_problems(Net(**(good | dict(in_channels=2.0)))) == [
        "needs a positive int attribute 'in_channels' (got 2.0)"
    ]
    assert backbone_problems(Net(in_channels=3, resolution=8)) == [
        "needs an attribute 'num_classes' (an int, or None for an unconditional model)"
    ]
    assert backbone_problems(object())[0] == "is a object, not a torch.nn.Module"
    for bad in (0, 10.0, True):
        assert backbone_problems(Net(**(good | dict(num_classes=bad)))) == [
            f"num_classes must be a positive int or None (got {bad!r})"
        ]
    with pytest.raises(ValueError, match=r"^model Net needs a positive int attribute 'resolution' \(got 0\) \(see "):
        check_backbone(Net(in_channels=3, resolution=0))  # num_classes is missing too: the first problem is named


def test_empty_batches_of_labels_and_windows() -> None:
    """An empty batch is no error: the class-id range check has no min/max to read."""
    assert LabelEmbedding(num_classes=3, dim=4)(torch.zeros(0, dtype=torch.long)).shape == (0, 4)
    attn = TMSA(dim=8, time_dim=4, num_heads=2, window=2)
    assert attn.forward_grid(torch.randn(0, 4, 4, 8), torch.randn(0, 4)).shape == (0, 4, 4, 8)
