"""Latent DiffiT: equivalence with a slow reference written from the paper's equations, the release's key
layout, parameter counts, conditioning, checkpointing, bf16 and errors."""

import inspect
import json
import math

import numpy as np
import pytest
import torch
from helpers import layer_norm_reference

from diffit.nn import (
    LatentDiffiT,
    count_flops,
    count_params,
    latent_diffit_b_2,
    latent_diffit_l_2,
    latent_diffit_s_2,
    latent_diffit_xl_2,
)

TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=5)


def _random_tiny(**overrides: object) -> LatentDiffiT:
    model = LatentDiffiT(**(TINY | overrides)).eval()
    with torch.no_grad():  # every parameter non-trivial (the final layer is zero-initialised)
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _pos_embed(dim: int, g: int) -> torch.Tensor:
    """2D sin-cos codes: meshgrid(w, h), half the channels per axis, each [sin, cos] of pos / 10000^(2i/half)."""
    grid = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        out = pos.reshape(-1, 1) * (1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0)))[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1))


def latent_reference(sd: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Slow float64 forward from the paper's equations and the release's layout, token by token."""
    sd = {k: v.double() for k, v in sd.items()}
    p, d, heads = cfg["patch_size"], cfg["hidden_size"], cfg["num_heads"]
    e, g = d // heads, cfg["input_size"] // p
    b, c = x.shape[:2]
    out_c = 2 * c
    # Patch embedding: each p x p patch (row-major over the grid) through the conv as a linear map.
    w_patch = sd["x_embedder.proj.weight"].reshape(d, -1)
    tokens = (
        torch.stack(
            [
                torch.stack(
                    [
                        w_patch @ x[bi, :, i * p : (i + 1) * p, j * p : (j + 1) * p].double().reshape(-1)
                        for i in range(g)
                        for j in range(g)
                    ]
                )
                for bi in range(b)
            ]
        )
        + sd["x_embedder.proj.bias"]
    )
    tokens = tokens + sd["pos_embed"][0]  # the stored codes (checked against the formula separately)
    # Time token: [cos, sin] sinusoids of t (256 frequencies) -> Linear -> SiLU -> Linear, plus the label row.
    freqs = torch.exp(-math.log(10_000) * torch.arange(128, dtype=torch.float64) / 128)
    args = t.double()[:, None] * freqs
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    h = temb @ sd["t_embedder.mlp.0.weight"].T + sd["t_embedder.mlp.0.bias"]
    h = h * torch.sigmoid(h)
    cvec = (
        h @ sd["t_embedder.mlp.2.weight"].T + sd["t_embedder.mlp.2.bias"] + sd["y_embedder.embedding_table.weight"][y]
    )
    # Relative offsets of every (query, key) token pair, indexing the ((2g-1)^2, heads) bias table.
    rel = [
        [(i // g - j // g + g - 1) * (2 * g - 1) + (i % g - j % g + g - 1) for j in range(g * g)] for i in range(g * g)
    ]
    for blk in range(cfg["depth"]):
        pre = f"blocks.{blk}."
        xn = layer_norm_reference(tokens)
        # Eq. 3-5: q_s = x_s W_qs + x_t W_qt (and k, v), both with bias.
        qkv = xn @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"]
        qkv = qkv + (cvec @ sd[pre + "attn.qkv_temb.weight"].T + sd[pre + "attn.qkv_temb.bias"])[:, None]
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        attn_out = torch.zeros_like(xn)
        table = sd[pre + "attn.relative_position_bias_table"]
        for bi in range(b):
            for hd in range(heads):
                sl = slice(hd * e, (hd + 1) * e)
                # Eq. 6: softmax(q k^T / sqrt(e) + B) v, with B from the relative offsets.
                logits = torch.tensor(
                    [
                        [q[bi, i, sl] @ k[bi, j, sl] / math.sqrt(e) + table[rel[i][j], hd] for j in range(g * g)]
                        for i in range(g * g)
                    ],
                    dtype=torch.float64,
                )
                attn_out[bi, :, sl] = torch.softmax(logits, dim=-1) @ v[bi, :, sl]
        tokens = tokens + attn_out @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]  # Eq. 7
        hid = _gelu_tanh(layer_norm_reference(tokens) @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
        tokens = tokens + hid @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]  # Eq. 8
    fin = layer_norm_reference(tokens)
    fin = fin * torch.sigmoid(fin)
    fin = fin @ sd["final_layer.linear.weight"].T + sd["final_layer.linear.bias"]  # (b, T, p*p*out_c)
    # Unpatchify: token (i, j) holds its p x p x C patch with channels last.
    out = torch.zeros(b, out_c, g * p, g * p, dtype=torch.float64)
    for bi in range(b):
        for n in range(g * g):
            i, j = divmod(n, g)
            out[bi, :, i * p : (i + 1) * p, j * p : (j + 1) * p] = fin[bi, n].reshape(p, p, out_c).permute(2, 0, 1)
    return out


def test_forward_matches_paper_reference() -> None:
    model = _random_tiny()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 812.5]), torch.tensor([1, 5])
    out = model(x, t, y)
    assert out.shape == (2, 6, 8, 8)
    torch.testing.assert_close(out.double(), latent_reference(model.state_dict(), x, t, y, TINY), atol=1e-4, rtol=1e-4)


def release_layout(
    *,
    input_size: int,
    patch_size: int,
    in_channels: int,
    hidden_size: int,
    depth: int,
    num_heads: int,
    num_classes: int,
    out_channels: int,
) -> dict[str, tuple[int, ...]]:
    """The released state dict's keys and shapes as documented (paper doc, section 5)."""
    d, g = hidden_size, input_size // patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (d, in_channels, patch_size, patch_size),
        "x_embedder.proj.bias": (d,),
        "pos_embed": (1, g * g, d),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (num_classes + 1, d),
        "final_layer.linear.weight": (patch_size * patch_size * out_channels, d),
        "final_layer.linear.bias": (patch_size * patch_size * out_channels,),
    }
    for i in range(depth):
        shapes |= {
            f"blocks.{i}.attn.qkv.weight": (3 * d, d),
            f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.qkv_temb.weight": (3 * d, d),
            f"blocks.{i}.attn.qkv_temb.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d),
            f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.attn.relative_position_bias_table": ((2 * g - 1) ** 2, num_heads),
            f"blocks.{i}.attn.relative_position_index": (g * g, g * g),
            f"blocks.{i}.mlp.fc1.weight": (4 * d, d),
            f"blocks.{i}.mlp.fc1.bias": (4 * d,),
            f"blocks.{i}.mlp.fc2.weight": (d, 4 * d),
            f"blocks.{i}.mlp.fc2.bias": (d,),
        }
    return shapes


def test_state_dict_layout_is_the_releases_for_xl2() -> None:
    with torch.device("meta"):
        model = latent_diffit_xl_2()
    layout = release_layout(
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        num_classes=1000,
        out_channels=8,
    )
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout


def test_strict_load_of_a_random_release_state_dict() -> None:
    layout = release_layout(**(TINY | dict(out_channels=6)))
    sd = {k: 0.2 * torch.randn(shape) for k, shape in layout.items()}
    g = TINY["input_size"] // TINY["patch_size"]
    for k in sd:
        if k.endswith("relative_position_index"):  # the release's Swin index, built here from offsets
            sd[k] = torch.tensor(
                [
                    [(i // g - j // g + g - 1) * (2 * g - 1) + (i % g - j % g + g - 1) for j in range(g * g)]
                    for i in range(g * g)
                ]
            )
    model = LatentDiffiT(**TINY).eval()
    model.load_state_dict(sd, strict=True)
    x, t, y = torch.randn(1, 3, 8, 8), torch.tensor([500.0]), torch.tensor([2])
    torch.testing.assert_close(model(x, t, y).double(), latent_reference(sd, x, t, y, TINY), atol=1e-3, rtol=1e-3)


def test_param_counts_on_meta() -> None:
    with torch.device("meta"):
        counts = {
            f.__name__: sum(p.numel() for p in f().parameters() if p.requires_grad)
            for f in (latent_diffit_s_2, latent_diffit_b_2, latent_diffit_l_2, latent_diffit_xl_2)
        }
    assert round(counts["latent_diffit_xl_2"] / 1e6, 1) == 561.0  # the paper's 561M
    assert (
        counts["latent_diffit_s_2"]
        < counts["latent_diffit_b_2"]
        < counts["latent_diffit_l_2"]
        < counts["latent_diffit_xl_2"]
    )


@pytest.mark.parametrize("factory", [latent_diffit_s_2, latent_diffit_b_2, latent_diffit_l_2, latent_diffit_xl_2])
def test_preset_output_shapes_on_meta(factory) -> None:
    with torch.device("meta"):
        model = factory(num_classes=None, input_size=8)
        out = model(torch.randn(2, 4, 8, 8), torch.rand(2) * 999)
    assert out.shape == (2, 8, 8, 8)


def test_zero_init_pos_embed_not_trained_and_config_round_trip() -> None:
    model = LatentDiffiT(**TINY, learn_sigma=False)
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2) * 999, torch.tensor([0, 4]))
    assert out.shape == (2, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))
    assert not model.pos_embed.requires_grad and "pos_embed" in model.state_dict()
    torch.testing.assert_close(model.pos_embed[0].double(), _pos_embed(32, 4))  # fixed 2D sin-cos codes
    config = json.loads(json.dumps(model.config))
    rebuilt = type(model)(**config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config == config and rebuilt.resolution == 8 and rebuilt.num_classes == 5


def test_none_label_is_the_null_class() -> None:
    model = _random_tiny()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 900.0])
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([5, 5])))
    assert not torch.allclose(model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1])))


def test_checkpointing_gives_identical_outputs_and_gradients() -> None:
    plain = _random_tiny(class_dropout_prob=0.0).train()
    ckpt = LatentDiffiT(**TINY, class_dropout_prob=0.0).set_grad_checkpointing(True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0]), torch.tensor([0, 3])
    results = []
    for m in (plain, ckpt):
        out = m(x, t, y)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() if p.grad is not None else None for p in m.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        if g0 is None:
            assert g1 is None
        else:
            torch.testing.assert_close(g0, g1, rtol=0, atol=1e-6)


def test_bf16_autocast_close_to_fp32() -> None:
    """Documented tolerance: bf16 linear layers give ~1e-2 relative output error; LN/softmax stay fp32."""
    model = _random_tiny()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0]), torch.tensor([0, 3])
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, y)
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 3e-2


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="patch_size=3 must divide input_size=8"):
        LatentDiffiT(**(TINY | dict(patch_size=3)))
    with pytest.raises(ValueError, match="hidden_size=32 must be divisible by num_heads=5"):
        LatentDiffiT(**(TINY | dict(num_heads=5)))
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1, got 0"):
        LatentDiffiT(**(TINY | dict(num_heads=0)))
    init = inspect.unwrap(LatentDiffiT.__init__)  # as users run it: the suite's type checks would answer first
    for name, bad in (("depth", 1.5), ("patch_size", 2.0), ("num_classes", True)):  # torch's TypeErrors before
        with pytest.raises(ValueError, match=rf"^{name} must be an integer >= 1, got {bad}$"):
            init(LatentDiffiT.__new__(LatentDiffiT), **(TINY | {name: bad}))
    with pytest.raises(ValueError, match=r"^class_dropout_prob must be in \[0, 1\), got -0.1$"):
        LatentDiffiT(**(TINY | dict(class_dropout_prob=-0.1)))
    model = LatentDiffiT(**TINY)
    with pytest.raises(ValueError, match="x must have shape \\(b, 3, 8, 8\\), got \\(1, 3, 16, 16\\)"):
        model(torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([0]))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    with pytest.raises(ValueError, match=r"^x has dtype torch.float64 but the model's weights are torch.float32"):
        model(x.double(), t)  # was a convolution's "Input type (double) and bias type (float) should be the same"
    with pytest.raises(ValueError, match=r"^y must be class ids in \[0, 5\] \(5 = the null class\), got .* \[-1, 0\]$"):
        model(x, t, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"^y must be None: the model is unconditional"):
        LatentDiffiT(**(TINY | dict(num_classes=None)))(x, t, torch.tensor([0, 1]))


def test_count_params_and_flops_match_the_paper() -> None:
    with torch.device("meta"):
        model = latent_diffit_xl_2(num_classes=None)
        flops = count_flops(model, torch.randn(1, 4, 32, 32), torch.rand(1))
    # The paper's 114 GFLOPs count a multiply-add once and only the linear layers; the attention matmuls
    # (2 x 28 blocks x 16 heads x 256^2 x 72 MACs = 4.2 G) bring it to ~118.5 G multiply-adds.
    assert 118.0e9 < flops / 2 < 119.0e9
    with torch.device("meta"):
        xl = latent_diffit_xl_2()
    assert count_params(xl) == count_params(xl, trainable_only=False) - 256 * 1152  # pos_embed is frozen
    linear = torch.nn.Linear(5, 7)
    assert count_flops(linear, torch.randn(3, 5)) == 2 * 3 * 5 * 7


def test_inputs_on_another_device_are_named_and_autocast_takes_low_precision_latents() -> None:
    """A noise label or class id on another device than x is named (meta stands in for a GPU here); under
    autocast a bf16 latent is accepted (autocast casts it), outside autocast it is refused."""
    model = _random_tiny()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0]), torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"^noise_label is on meta but x is on cpu$"):
        model(x, t.to("meta"), y)
    with pytest.raises(ValueError, match=r"^y is on meta but x is on cpu$"):
        model(x, t, y.to("meta"))
    with pytest.raises(ValueError, match=r"^x has dtype torch.bfloat16 but the model's weights are torch.float32"):
        model(x.bfloat16(), t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x.bfloat16(), t, y)
    ref = model(x, t, y)
    assert low.dtype == torch.bfloat16 and (low.float() - ref).norm() / ref.norm() < 3e-2
