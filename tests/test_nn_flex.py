"""TMSA's FlexAttention path (diffit.nn.flex) against its SDPA path: outputs and every gradient, windowed and
global, eager and under torch.compile; the backend is a run-time switch that leaves checkpoints alone.

torch has no FlexAttention backward on CPU (its public ``flex_attention`` refuses inputs that require grad),
so the gradient tests lift that device check and differentiate torch's own eager reference of the same
higher-order op, which is what the score_mod / block mask / captured bias table are differentiated through.
"""

import subprocess
import sys

import pytest
import torch
from helpers import tiny_image_diffit

from diffit.nn import (
    TMSA,
    attention_backends,
    diffit_tiny,
    flex_available,
    latent_diffit_s_2,
    measure_backends,
    relative_position_index,
    set_attention_backend,
)

pytestmark = [
    pytest.mark.skipif(not flex_available(), reason="FlexAttention needs torch >= 2.5"),
    # eager FlexAttention is what these tests compare against SDPA; torch warns that it is unfused
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning"),
]


@pytest.fixture
def cpu_flex_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the eager (unfused, reference) FlexAttention differentiate on CPU."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)


def _random_tmsa(window: int, dim: int = 16, heads: int = 2) -> TMSA:
    attn = TMSA(dim=dim, time_dim=8, num_heads=heads, window=window)
    with torch.no_grad():  # a non-trivial bias table and biases: every term of Eq. 3-6 matters
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def _outputs_and_grads(attn: TMSA, backend: str, x: torch.Tensor, t: torch.Tensor, grid: bool) -> list[torch.Tensor]:
    attn.attention_backend = backend
    attn.zero_grad(set_to_none=True)
    x, t = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    out = attn.forward_grid(x, t) if grid else attn(x, t)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()  # a non-uniform cotangent
    return [out.detach(), x.grad, t.grad] + [p.grad for p in attn.parameters()]


@pytest.mark.parametrize(
    "window, shape, grid",
    [(2, (2, 4, 6, 16), True), (3, (2, 6, 3, 16), True), (3, (2, 3, 6, 16), True), (3, (2, 9, 16), False)],
    ids=["windowed-4x6", "windowed-6x3", "windowed-3x6", "global-3x3"],
)
def test_flex_equals_sdpa_outputs_and_all_gradients(
    cpu_flex_backward: None, window: int, shape: tuple[int, ...], grid: bool
) -> None:
    attn = _random_tmsa(window)
    x, t = torch.randn(shape), torch.randn(shape[0], 8)
    ref = _outputs_and_grads(attn, "sdpa", x, t, grid)
    flex = _outputs_and_grads(attn, "flex", x, t, grid)
    names = ["out", "x", "t"] + [n for n, _ in attn.named_parameters()]
    assert "relative_position_bias_table" in names
    for name, a, b in zip(names, ref, flex, strict=True):
        assert a is not None and b is not None, name
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert ref[names.index("relative_position_bias_table")].abs().sum() > 0


def test_flex_score_mod_index_is_swins_relative_position_index() -> None:
    """The score_mod's arithmetic index, read back through a one-hot table, is relative_position_index."""
    from torch.nn.attention.flex_attention import flex_attention

    from diffit.nn import relative_bias_score_mod

    w = 3
    table = torch.arange((2 * w - 1) ** 2, dtype=torch.float32)[:, None]  # T[r, 0] = r
    q = torch.zeros(1, 1, w * w, 4)
    scores = []
    for j in range(w * w):  # softmax weights with one-hot values read off exp(T[index(i, j)]) up to a row factor
        v = torch.zeros(1, 1, w * w, 4)
        v[0, 0, j, 0] = 1.0
        scores.append(flex_attention(q, q, v, score_mod=relative_bias_score_mod(table, w, w))[0, 0, :, 0])
    probs = torch.stack(scores, dim=1)  # (i, j) = softmax_j(T[index(i, j)])
    logits = probs.log() - probs.log()[:, :1] + relative_position_index(w)[:, :1].float()
    torch.testing.assert_close(logits, relative_position_index(w).float(), atol=1e-4, rtol=0)


_COMPILED = """
import torch
from diffit.nn import TMSA
torch.manual_seed(0)
attn = TMSA(dim=16, time_dim=8, num_heads=2, window=2).eval()
with torch.no_grad():
    for p in attn.parameters():
        p.normal_(0, 0.3)
    x, t = torch.randn(2, 4, 4, 16), torch.randn(2, 8)
    ref = attn.forward_grid(x, t)
    attn.attention_backend = "flex"
    out = torch.compile(attn.forward_grid, fullgraph=True)(x, t)
print((out - ref).abs().max().item())
"""


@pytest.mark.slow  # ~30 s: inductor compiles the CPU flex kernel
def test_flex_windowed_tmsa_runs_under_torch_compile() -> None:
    """A compiled TMSA with flex (inductor's fused CPU flex kernel; inference, as torch has no CPU flex
    backward) equals eager SDPA. A subprocess: Dynamo cannot trace the test run's jaxtyping hook."""
    proc = subprocess.run([sys.executable, "-c", _COMPILED], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 1e-5


def test_backend_switch_keeps_state_dict_and_config() -> None:
    for model in (diffit_tiny(), latent_diffit_s_2(input_size=8, depth=1, num_classes=4)):
        keys, config = list(model.state_dict()), dict(model.config)
        assert set(attention_backends(model).values()) == {"sdpa"}  # the default
        assert model.set_attention_backend("flex") is model
        assert set(attention_backends(model).values()) == {"flex"}
        assert list(model.state_dict()) == keys and model.config == config
        type(model)(**model.config).load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(ValueError, match="backend must be one of sdpa, flex, auto"):
        set_attention_backend(diffit_tiny(), "flash")


def test_auto_is_sdpa_on_cpu_and_flex_model_matches() -> None:
    """ "auto" resolves to SDPA on CPU (bit-identical), and the whole tiny U-Net with flex equals SDPA."""
    model = tiny_image_diffit().eval()  # 8x8: windowed 4x4 attention, then a global 4x4 stage
    with torch.no_grad():  # a non-zero output layer, so the comparison sees every block
        model.head_conv.weight.normal_(0, 0.1)
    x, sigma, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        ref = model(x, sigma, y)
        assert torch.equal(model.set_attention_backend("auto")(x, sigma, y), ref)
        out = model.set_attention_backend("flex")(x, sigma, y)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_measure_backends_says_why_flex_was_refused() -> None:
    """Where flex cannot run (here: torch has no CPU FlexAttention backward), "auto"'s timing gives it inf and
    warns once with the layer, the input and torch's reason, instead of falling back to SDPA in silence."""
    attn = TMSA(dim=8, time_dim=8, num_heads=2, window=4)
    x = torch.randn(1, 8, 8, 8)
    with pytest.warns(RuntimeWarning, match=r"TMSA\(dim=8, num_heads=2, window=4\): flex attention failed on a "
                      r"\(1, 8, 8, 8\) torch.float32 input \(\w+: .+\); SDPA is used") as caught:  # fmt: skip
        times = measure_backends(attn, x, None, backward=True, repeats=1)
    assert len(caught) == 1 and times["flex"] == float("inf") and 0 < times["sdpa"] < float("inf")


def test_auto_never_times_flex_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "auto" on CPU is SDPA without measuring (torch has no CPU flex backward and an unfused CPU forward)."""

    def no_timing(*args: object, **kwargs: object) -> dict[str, float]:
        raise AssertionError("auto timed the backends on CPU")

    monkeypatch.setattr("diffit.nn.attention.measure_backends", no_timing)
    attn = _random_tmsa(window=2)
    x, t = torch.randn(1, 4, 4, 16), torch.randn(1, 8)
    for grad in (True, False):  # SDPA's CPU kernel differs with and without a bias gradient: compare like with like
        with torch.set_grad_enabled(grad):
            attn.attention_backend = "sdpa"
            ref = attn.forward_grid(x, t)
            attn.attention_backend = "auto"
            assert torch.equal(attn.forward_grid(x, t), ref)
