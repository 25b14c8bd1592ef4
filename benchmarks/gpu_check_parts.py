"""The five parts of ``gpu_check.py``; each returns a JSON-able dict with a ``failures`` list (empty: passed).

Everything goes through diffit's public API (backbones, ``diffit.train.train_step``, ``diffit.objectives``,
``diffit.generate``, the ``diffit`` CLI); only timing, profiling and bookkeeping live here.
"""

import copy
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from diffit.diffusion import SAMPLERS
from diffit.distributed import DistInfo
from diffit.generate import Guidance, generate, sample
from diffit.nn import (
    TMSA,
    LatentDiffiT,
    count_flops,
    diffit_cifar10,
    diffit_tiny,
    flex_attend,
    latent_diffit_s_2,
    latent_diffit_xl_2,
    measure_backends,
    window_partition,
)
from diffit.objectives import ADMObjective, EDMObjective
from diffit.train import compiled_blocks, train_step

# Dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, FLOP/s; matched in this order.
DENSE_BF16_PEAKS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("H800", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
]
FP32_REL_TOL = 1e-4  # CUDA fp32 (TF32 off) against CPU fp32
BF16_REL_TOL = 5e-2  # bf16 autocast against fp32: a bound on gross errors (a wrong dtype, a lost cast)


def dense_bf16_peak(card: str) -> float | None:
    return next((peak for key, peak in DENSE_BF16_PEAKS if key in card), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _per_call_ms(fn: Callable[[], object], device: torch.device, *, repeats: int, sample_s: float) -> float:
    """Median milliseconds per call of ``fn``. Each of the ``repeats`` samples times a run of back-to-back calls
    lasting about ``sample_s`` (up to 200 calls), between two CUDA events on a GPU (the host clock on the CPU), so
    that launch and synchronisation overheads, which one timed millisecond call includes, are spread out."""
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    calls = max(1, min(200, int(sample_s / max(time.perf_counter() - start, 1e-6))))
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / calls)
        else:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append(1e3 * (time.perf_counter() - start) / calls)
    return sorted(samples)[len(samples) // 2]


def part_result_path(out: Path, part: str) -> Path:
    """Where a part's result goes (read by ``gpu_check.py`` after the part's process ends)."""
    return out / f"part-{part}.json"


def save_part_result(out: Path, part: str, result: dict[str, Any]) -> None:
    """Write a part's result; parts also call it with what they have so far, so that a part killed at its time
    budget still reports."""
    part_result_path(out, part).write_text(json.dumps(result, indent=1, default=str))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64 (0 when both are 0)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm().item()
    return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()


def _quick_latent() -> torch.nn.Module:
    """latent_diffit_s_2 shrunk for the CPU quick run (8x8 latents, one block of width 64)."""
    return latent_diffit_s_2(input_size=8, depth=1, hidden_size=64, num_heads=2, num_classes=10)


def _quick_cifar() -> torch.nn.Module:
    """diffit_cifar10 shrunk for the CPU quick run (16x16, one ResBlock per stage, widths 16/32/32)."""
    return diffit_cifar10(resolution=16, channels=(16, 32, 32), blocks_per_stage=(1, 1, 1), num_heads=2, time_dim=32)


def _compile_backend(device: str, quick: bool) -> str:
    """Inductor on a GPU; on the CPU quick run, Dynamo's tracing with the eager backend (inductor's C++ build
    would take minutes on a small CPU, and is not what this check is for)."""
    return "eager" if quick and device == "cpu" else "inductor"


# ---------------------------------------------------------------------------------------------- 1. correctness
def _models(quick: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    if quick:
        return {
            "diffit_tiny": diffit_tiny,
            "diffit_cifar10": _quick_cifar,
            "latent_diffit_s_2": _quick_latent,
        }
    return {"diffit_tiny": diffit_tiny, "diffit_cifar10": diffit_cifar10, "latent_diffit_s_2": latent_diffit_s_2}


def _inputs(model: torch.nn.Module, batch: int, gen: torch.Generator) -> tuple[torch.Tensor | None, ...]:
    shape = (batch, model.in_channels, model.resolution, model.resolution)
    x = torch.randn(shape, generator=gen)
    if isinstance(model, LatentDiffiT):  # the DDPM timestep
        label = torch.rand(batch, generator=gen) * 999
    else:  # EDM's c_noise = ln(sigma) / 4
        label = torch.randn(batch, generator=gen) * 0.5
    y = torch.randint(0, model.num_classes or 1, (batch,), generator=gen)  # drawn either way: the same stream
    return x, label, (None if model.num_classes is None else y)  # an unconditional model refuses classes


def _errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor (output and each gradient) ||got - ref|| / ||ref||, in fp64."""
    return {n: _rel(got[n], ref[n]) for n in ref}


def _forward_and_grads(model: torch.nn.Module, inputs: tuple, cot: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    x, label, y = (None if t is None else t.to(device) for t in inputs)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, label, y)
    (out.float() * cot.to(device)).sum().backward()
    return {"output": out.detach().float()} | {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def part_correctness(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    """Device fp32 against CPU fp32, each judged against a CPU float64 reference: a tensor fails only if the
    device is off from CPU fp32 by more than FP32_REL_TOL *and* is less accurate than CPU fp32 itself (by more
    than 4x). Gradients that cancel to ~0 in exact arithmetic (a bias feeding a normalisation) are rounding noise
    in any fp32 run, and read as large relative errors between two fp32 runs; the float64 reference tells them
    from a device bug."""
    dev = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, failures = [], []
    for name, factory in _models(quick).items():
        torch.manual_seed(0)
        cpu_model = factory().train()
        for m in cpu_model.modules():  # label dropout off: it draws from the device's RNG
            if hasattr(m, "dropout_prob"):
                m.dropout_prob = 0.0
        with torch.no_grad():  # zero-initialised output layers would hide most gradients
            for p in cpu_model.parameters():
                if p.requires_grad and p.abs().max() == 0:
                    p.normal_(0, 0.02)
        gen = torch.Generator().manual_seed(1)
        inputs = _inputs(cpu_model, 2 if quick else 4, gen)
        out_channels = getattr(cpu_model, "out_channels", cpu_model.in_channels)
        cot = torch.randn((inputs[0].shape[0], out_channels, *inputs[0].shape[2:]), generator=gen)  # d loss / d out
        ref64 = _forward_and_grads(
            copy.deepcopy(cpu_model).double(), (inputs[0].double(), inputs[1].double(), inputs[2]), cot.double(), False
        )
        ref = _forward_and_grads(cpu_model, inputs, cot, False)
        dev_model = cpu_model.to(dev)
        fp32 = _forward_and_grads(dev_model, inputs, cot, False)
        bf16 = _forward_and_grads(dev_model, inputs, cot, True)
        grads = [k for k in ref if k != "output"]
        vs_cpu, dev_acc, cpu_acc = _errors(fp32, ref), _errors(fp32, ref64), _errors(ref, ref64)
        bad = [k for k in ref if vs_cpu[k] >= FP32_REL_TOL and dev_acc[k] > 4 * cpu_acc[k] + 1e-12]
        bf16_err = _errors(bf16, fp32)
        # Gradients that are rounding noise even in CPU fp32 (exactly ~0: a bias feeding a normalisation) are
        # left out of the "worst" columns, where any relative error of theirs would read as huge.
        noise = [k for k in grads if cpu_acc[k] > 1e-3]
        kept = [k for k in grads if k not in noise] or grads
        worst = max(kept, key=vs_cpu.__getitem__)
        row = {
            "model": name,
            "fp32_output_rel": vs_cpu["output"],
            "fp32_grad_rel_max": vs_cpu[worst],
            "fp32_worst_grad": worst,
            "worst_grad_vs_fp64": {"device": dev_acc[worst], "cpu": cpu_acc[worst]},
            "fp32_less_accurate_than_cpu": bad,
            "noise_grads": noise,
            "bf16_output_rel": bf16_err["output"],
            "bf16_grad_rel_max": max(bf16_err[k] for k in kept),
            "bf16_worst_grad": max(kept, key=bf16_err.__getitem__),
            "bf16_grads_rel": _rel(
                torch.cat([bf16[k].flatten() for k in grads]), torch.cat([fp32[k].flatten() for k in grads])
            ),
            "grads_compared": len(grads),
        }
        rows.append(row)
        if bad:
            failures.append(f"{name}: {device} fp32 differs from CPU fp32 and is less accurate, in {', '.join(bad)}")
        # bf16 is judged on all gradients together: a gradient that cancels to ~0 carries bf16's rounding noise.
        if max(row["bf16_output_rel"], row["bf16_grads_rel"]) >= BF16_REL_TOL:
            failures.append(f"{name}: bf16 differs from fp32 (rel {row['bf16_grads_rel']:.2e})")
    return {"rows": rows, "tf32": False, "failures": failures}


# ------------------------------------------------------------------------------------------------ 2. attention
_SDPA_KERNELS = [
    ("flash_attention", "flash"),
    ("efficient_attention", "memory-efficient"),
    ("cudnn_attention", "cudnn"),
    ("attention_math", "math"),
]


def _sdpa_kernels(fn: Callable[[], torch.Tensor]) -> dict[str, list[str]]:
    """The SDPA kernels (aten op names) that run in ``fn()``'s forward and in its backward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
        out.float().sum().backward()
    found: dict[str, set[str]] = {"forward": set(), "backward": set()}
    for event in prof.events():
        label = next((label for key, label in _SDPA_KERNELS if key in event.name), None)
        if label is not None and event.name.startswith("aten::"):
            found["backward" if "backward" in event.name else "forward"].add(f"{label} ({event.name[6:]})")
    if found["forward"] and not found["backward"]:
        found["backward"].add("math (autograd of the forward's ops)")
    return {k: sorted(v) for k, v in found.items()}


def _attention_cases(quick: bool) -> dict[str, dict[str, int]]:
    if quick:
        return {
            "windowed": dict(batch=2, side=8, dim=32, heads=2, window=4),
            "global": dict(batch=2, side=4, dim=32, heads=2, window=4),
        }
    # diffit_ffhq64's first stage (64x64 grid, window 8) and one latent XL/2 layer (16x16 tokens, global).
    return {
        "windowed": dict(batch=32, side=64, dim=128, heads=4, window=8),
        "global": dict(batch=32, side=16, dim=1152, heads=16, window=16),
    }


def _try_ms(
    timed: Callable[[Callable[[], object]], float], fn: Callable[[], object], row: dict[str, Any], key: str
) -> float | None:
    """``timed(fn)`` (milliseconds per call), or None with the error recorded in ``row[key]`` (flex on a shape or a
    card its kernels do not support must not lose the part's other figures)."""
    try:
        return timed(fn)
    except Exception as err:
        row[key] = f"{type(err).__name__}: {str(err)[:300]}"
        return None


def _flex_fp32_rel(attn: TMSA, side: int, dim: int, dev: torch.device, row: dict[str, Any]) -> float | None:
    """Largest relative difference between the flex and SDPA paths of ``attn`` in fp32, over the output and the
    gradients of the input and the bias table (batch 2); None with ``row["flex_fp32_error"]`` if flex fails."""
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(2, side, side, dim, device=dev, requires_grad=True)
    qkv_t = attn.qkv_temb(torch.randn(2, dim, device=dev))[:, None, :].detach()
    cot = torch.randn(2, side, side, dim, device=dev)
    found = {}
    try:
        for backend in ("sdpa", "flex"):
            out = attn._run(backend, x, qkv_t)
            found[backend] = [out.detach(), *torch.autograd.grad(out, [x, attn.relative_position_bias_table], cot)]
    except Exception as err:
        row["flex_fp32_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        return None
    return max(_rel(a, b) for a, b in zip(found["flex"], found["sdpa"], strict=True))


def _attention_row(
    case: str,
    c: dict[str, int],
    *,
    dev: torch.device,
    dtype: torch.dtype,
    repeats: int,
    sample_s: float,
    compile_flex: str,
    failures: list[str],
) -> dict[str, Any]:
    """One shape: SDPA kernels used, SDPA / flex / unbiased flash timings, and what "auto" picks."""
    flex_backward = dev.type == "cuda"  # torch has no FlexAttention backward on CPU
    torch.manual_seed(0)
    attn = TMSA(dim=c["dim"], time_dim=c["dim"], num_heads=c["heads"], window=c["window"]).to(dev)
    b, s, w, h, e = c["batch"], c["side"], c["window"], c["heads"], c["dim"] // c["heads"]
    qkv = [torch.randn(b, h, s * s, e, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
    table = attn.relative_position_bias_table

    def sdpa_core() -> torch.Tensor:  # TMSA's SDPA core: windows as a batch, B as a 4-D float mask
        q, k, v = (window_partition(rearrange(t, "b h (y x) e -> (b h) y x e", y=s), w) for t in qkv)
        q, k, v = (rearrange(t, "(b h n) m e -> (b n) h m e", b=b, h=h) for t in (q, k, v))
        bias = attn.relative_position_bias().to(dtype)[None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def flash_core() -> torch.Tensor:  # the same shape, no bias: the fastest attention there is
        q, k, v = (window_partition(rearrange(t, "b h (y x) e -> (b h) y x e", y=s), w) for t in qkv)
        q, k, v = (rearrange(t, "(b h n) m e -> (b n) h m e", b=b, h=h) for t in (q, k, v))
        if dev.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v)

    flex_fn = torch.compile(flex_attend, backend=compile_flex, dynamic=False)

    def flex_core() -> torch.Tensor:  # B as score_mod, windows as a block mask over the whole grid
        q, k, v = qkv if torch.is_grad_enabled() else [t.detach() for t in qkv]
        return flex_fn(q, k, v, table=table, window=w, grid=(s, s))

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            fn().float().sum().backward()

        return step

    row: dict[str, Any] = {"case": case, **c, "dtype": str(dtype).removeprefix("torch."), "tokens": s * s}
    row["sample_s"] = sample_s
    row["timing"] = "CUDA events around back-to-back calls" if dev.type == "cuda" else "host clock"
    row["sdpa_kernels"] = _sdpa_kernels(sdpa_core)
    timed = partial(_per_call_ms, device=dev, repeats=repeats, sample_s=sample_s)
    with torch.no_grad():
        row["flash_fwd_ms"] = timed(flash_core)
        row["sdpa_fwd_ms"] = timed(sdpa_core)
        row["flex_fwd_ms"] = _try_ms(timed, flex_core, row, "flex_fwd_error")
        row["flex_vs_sdpa_fwd_rel"] = None
        if row["flex_fwd_ms"] is not None:
            ref, flex_out = sdpa_core(), flex_core()
            flex_out = rearrange(flex_out, "b h (ny y nx x) e -> (b ny nx) h (y x) e", ny=s // w, nx=s // w, y=w)
            row["flex_vs_sdpa_fwd_rel"] = _rel(flex_out.float(), ref.float())
    row["flash_fwd_bwd_ms"] = timed(fwd_bwd(flash_core))
    row["sdpa_fwd_bwd_ms"] = timed(fwd_bwd(sdpa_core))
    row["flex_fwd_bwd_ms"] = _try_ms(timed, fwd_bwd(flex_core), row, "flex_fwd_bwd_error") if flex_backward else None
    for k in ("sdpa", "flex"):
        for p in ("fwd", "fwd_bwd"):
            ms = row[f"{k}_{p}_ms"]
            row[f"{k}_{p}_vs_flash"] = None if ms is None else ms / row[f"flash_{p}_ms"]
    # The library's own decision: the whole TMSA layer with each backend, as "auto" times it.
    x = torch.randn(b, s, s, c["dim"], device=dev)
    qkv_t = attn.qkv_temb(torch.randn(b, c["dim"], device=dev))[:, None, :].detach()
    if dev.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            layer = measure_backends(attn, x, qkv_t, backward=True, repeats=repeats)
        refused = [str(w.message) for w in caught if "flex attention failed" in str(w.message)]
        if refused:
            row["layer_flex_error"] = refused[0]
        row["layer_fwd_bwd_ms"] = {k: 1e3 * v for k, v in layer.items()}
        row["auto_picks"] = min(layer, key=layer.__getitem__)
    else:
        row["layer_fwd_bwd_ms"], row["auto_picks"] = None, "sdpa (cpu)"
    if flex_backward:  # the library's TMSA in fp32 (TF32 off): flex against SDPA, output and gradients
        row["flex_fp32_rel"] = _flex_fp32_rel(attn, s, c["dim"], dev, row)
    if row["flex_vs_sdpa_fwd_rel"] is None:
        failures.append(f"{case}: flex did not run ({row.get('flex_fwd_error')})")
    elif row["flex_vs_sdpa_fwd_rel"] > (2e-2 if dtype == torch.bfloat16 else 1e-5):
        failures.append(f"{case}: flex differs from SDPA (rel {row['flex_vs_sdpa_fwd_rel']:.2e})")
    if row.get("flex_fp32_rel") is not None and row["flex_fp32_rel"] > 1e-4:
        failures.append(f"{case}: fp32 flex differs from SDPA in output or gradients (rel {row['flex_fp32_rel']:.2e})")
    return row


def part_attention(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    repeats, sample_s = (1, 0.0) if quick else (10, 0.05)
    compile_flex = _compile_backend(device, quick)
    rows, failures = [], []
    for case, c in _attention_cases(quick).items():
        timing = {"repeats": repeats, "sample_s": sample_s, "compile_flex": compile_flex}
        rows.append(_attention_row(case, c, dev=dev, dtype=dtype, failures=failures, **timing))
        save_part_result(out, "attention", {"rows": rows, "flex_compile_backend": compile_flex, "failures": failures})
    return {"rows": rows, "flex_compile_backend": compile_flex, "failures": failures}


# ----------------------------------------------------------------------------------------------- 3. train step
def _train_case(quick: bool) -> tuple[Callable[[], torch.nn.Module], list[int], str]:
    if quick:
        return _quick_latent, [8, 4], "latent S/2 (quick, 8x8)"
    return lambda: latent_diffit_xl_2(input_size=32), [256, 192, 128, 96, 64, 32, 16], "latent XL/2 256 px"


def _step_once(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int, dev: torch.device) -> float:
    objective = ADMObjective()
    gen = torch.Generator().manual_seed(0)
    shape = (model.in_channels, model.resolution, model.resolution)
    x = torch.randn(batch, *shape, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)
    draws = {k: v.to(dev) for k, v in objective.draw(gen, batch, shape).items()}
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    stats = train_step(
        model=model,
        objective=objective,
        optimizer=opt,
        x=x,
        y=y,
        draws=draws,
        micro_batch=batch,
        grad_clip=0.0,
        precision="bf16",
        dist=dist,
        guard_updates=False,
    )
    return stats.loss


def _top_kernels(step: Callable[[], object], top: int = 15) -> list[dict[str, Any]]:
    """Where one training step's device time goes: the ops with the most self device time (profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_device_time_total)
    return [
        {
            "op": e.key[:90],
            "calls": e.count,
            "ms": e.self_device_time_total / 1e3,
            "share": e.self_device_time_total / total,
        }  # fmt: skip
        for e in events[:top]
    ]


def part_train_step(
    *, device: str, quick: bool, out: Path, compiled: bool | str, batch: int | None = None
) -> dict[str, Any]:
    """The bf16 training step of the largest model, eager, under ``torch.compile`` (``compiled=True``) or with its
    blocks compiled (``compiled="blocks"``, ``diffit.train.compiled_blocks``)."""
    dev = torch.device(device)
    factory, batches, label = _train_case(quick)
    torch.manual_seed(0)
    net = factory().to(dev).train()
    shape = (1, net.in_channels, net.resolution, net.resolution)
    fwd_flops = count_flops(
        net, torch.randn(shape, device=dev), torch.ones(1, device=dev), torch.zeros(1, dtype=torch.long, device=dev)
    )
    step_flops_per_image = 3 * fwd_flops  # forward + backward (2x forward)
    model = torch.compile(net, backend=_compile_backend(device, quick)) if compiled is True else net
    regional = compiled_blocks(net, backend=_compile_backend(device, quick)) if compiled == "blocks" else nullcontext()
    regional.__enter__()  # for the rest of this part's process
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    peak = dense_bf16_peak(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None
    part = {False: "train_step_eager", True: "train_step_compiled", "blocks": "train_step_compiled_blocks"}[compiled]
    tries, failures, result = [], [], None
    for b in [b for b in batches if b <= batch] if batch else batches:  # from the batch eager found, down
        try:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            _step_once(model, opt, b, dev)  # warm-up (and compilation)
            _sync(dev)
            warm_s = time.perf_counter() - start
            none = dict.fromkeys(["images_per_s", "peak_memory_gib", "achieved_tflops", "mfu"])
            save_part_result(out, part, {"model": label, "compiled": compiled, "precision": "bf16", "tries": tries,
                                      "batch": b, "first_step_s": warm_s, **none, "failures": []})  # fmt: skip
            sec = _median_s(
                lambda b=b: _step_once(model, opt, b, dev), dev, repeats=1 if quick else 5, warmup=0 if quick else 1
            )
            loss = _step_once(model, opt, b, dev)
        except torch.OutOfMemoryError:
            tries.append({"batch": b, "status": "out of memory"})
            opt.zero_grad(set_to_none=True)
            continue
        ips = b / sec
        result = {
            "batch": b,
            "images_per_s": ips,
            "step_s": sec,
            "first_step_s": warm_s,
            "loss": loss,
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "model_flops_per_image": step_flops_per_image,
            "achieved_tflops": ips * step_flops_per_image / 1e12,
            "mfu": ips * step_flops_per_image / peak if peak else None,
        }
        tries.append({"batch": b, "status": "ok"})
        if dev.type == "cuda" and not compiled:
            result["top_kernels"] = _top_kernels(lambda b=b: _step_once(model, opt, b, dev))
        break
    if result is None:
        failures.append(f"no batch of {batches} fits")
    return {
        "model": label,
        "compiled": compiled,
        "precision": "bf16",
        "tries": tries,
        **(result or {}),
        "failures": failures,
    }


def part_train_step_eager(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    return part_train_step(device=device, quick=quick, out=out, compiled=False)


def part_train_step_compiled(*, device: str, quick: bool, out: Path, batch: int | None = None) -> dict[str, Any]:
    return part_train_step(device=device, quick=quick, out=out, compiled=True, batch=batch)


def part_train_step_compiled_blocks(*, device: str, quick: bool, out: Path, batch: int | None = None) -> dict[str, Any]:
    return part_train_step(device=device, quick=quick, out=out, compiled="blocks", batch=batch)


# ------------------------------------------------------------------------------------------------- 4. sampling
def part_sampling(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    dev = torch.device(device)
    torch.manual_seed(0)
    latent = (_quick_latent() if quick else latent_diffit_xl_2()).to(dev).eval()
    objective = ADMObjective()
    batch, k = (2, 1) if quick else (64, 5)
    sigmas = objective.sampling_sigmas(250)
    guidance = Guidance(scale=4.0)

    def ddpm(steps: int) -> None:  # the first `steps` DDPM steps of the 250-step chain (the last one to 0), guided
        sample(
            latent,
            sampler=SAMPLERS["ddpm"],
            sigmas=torch.cat([sigmas[:steps], sigmas[-1:]]),
            seeds=list(range(batch)),
            labels=torch.arange(batch) % latent.num_classes,
            guidance=guidance,
            objective=objective,
            precision="bf16",
        )

    ddpm(1)  # warm-up
    per_step = _median_s(lambda: ddpm(k), dev, repeats=1 if quick else 2, warmup=0) / k
    rows = [
        {
            "model": "latent XL/2" if not quick else "latent S/2 (quick)",
            "sampler": "ddpm, guidance 4.0",
            "batch": batch,
            "steps_timed": k,
            "step_ms": 1e3 * per_step,
            "steps": 250,
            "images_per_s": batch / (250 * per_step),
            "note": "extrapolated; VAE decode not included",
        }
    ]
    torch.manual_seed(0)
    cifar = (_quick_cifar() if quick else diffit_cifar10()).to(dev).eval()
    edm = EDMObjective()
    n = 4 if quick else 256
    heun_steps = 2 if quick else 18

    def heun() -> None:
        generate(
            cifar,
            sampler=SAMPLERS["heun"],
            sigmas=edm.sampling_sigmas(heun_steps),
            seeds=list(range(n)),
            objective=edm,
            precision="bf16",
            batch_size=n,
        )

    sec = _median_s(heun, dev, repeats=1 if quick else 2, warmup=0 if quick else 1)
    rows.append(
        {
            "model": "diffit_cifar10" + (" (quick)" if quick else ""),
            "sampler": f"heun-{heun_steps}",
            "batch": n,
            "steps": heun_steps,
            "nfe": 2 * heun_steps - 1,
            "seconds": sec,
            "images_per_s": n / sec,
        }
    )
    return {"rows": rows, "failures": []}


# ------------------------------------------------------------------------------------------------ 5. train CLI
def run_cli(backend: str, argv: list[str]) -> None:
    """The ``diffit`` CLI, with ``torch.compile``'s backend set to ``backend`` (the CPU quick run's "eager")."""
    if backend != "inductor":
        real = torch.compile
        torch.compile = lambda model=None, **kw: real(model, **(kw | {"backend": backend}))  # type: ignore[assignment]
    try:
        from diffit_cli.main import app
    except ImportError:  # diffit not installed (a GPU machine's own Python): the source tree's cli/ is diffit_cli
        import importlib

        sys.modules["diffit_cli"] = importlib.import_module("cli")
        from diffit_cli.main import app

    app(argv, prog_name="diffit")


def _cli_run(name: str, launcher: list[str], argv: list[str], timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(launcher + argv, capture_output=True, text=True, timeout=timeout)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as timeout_error:
        code, err = "timeout", str(timeout_error.stderr or "")
    row: dict[str, Any] = {"run": name, "exit": code, "seconds": round(time.perf_counter() - start, 1)}
    if code:
        row["stderr_tail"] = err[-1500:]
    return row


def part_train_cli(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    backend = _compile_backend(device, quick)
    script = str(Path(__file__).with_name("gpu_check.py"))
    direct = [sys.executable, script, "--cli", backend, "--"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        script,
        "--cli",
        backend,
        "--",
    ]
    steps, more, batch = (2, 1, 8) if quick else (200, 10, 64)
    common = [
        "train",
        "--device",
        device,
        "--precision",
        "bf16",
        "--batch-size",
        str(batch),
        "--sample-every",
        "0",
        "--log-every",
        str(max(1, steps // 4)),
        "--ckpt-every",
        str(steps),
        "--warmup",
        "10",
    ]
    rows, failures = [], []
    # The CPU quick run leaves --compile out: Dynamo's tracing of a step is part 3's, and would take a minute here.
    compile_flag = [] if quick and device == "cpu" else ["--compile"]
    runs = (("bf16" + " --compile" * bool(compile_flag), direct, compile_flag), ("torchrun world 1 bf16", torchrun, []))
    for name, launcher, extra in runs:
        run_dir = out / "runs" / name.split()[0].replace("-", "")
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        first = _cli_run(name, launcher, common + extra + ["--steps", str(steps), "--out", str(run_dir)], 100)
        resumed = _cli_run(
            name + " --resume",
            launcher,
            common + extra + ["--steps", str(steps + more), "--out", str(run_dir), "--resume"],
            100,
        )
        log = (
            [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
            if (run_dir / "log.jsonl").is_file()
            else []
        )
        ckpts = sorted(p.name for p in run_dir.glob("*") if p.is_dir())
        first["checkpoints"], first["last_step"] = ckpts, (log[-1]["step"] if log else None)
        first["images_per_s"] = log[-1]["images_per_s"] if log else None
        rows += [first, resumed]
        if first["exit"] or resumed["exit"]:
            failures.append(f"{name}: exit {first['exit']} then {resumed['exit']} on --resume")
        elif not log or log[-1]["step"] != steps + more:
            failures.append(f"{name}: the resumed run did not reach step {steps + more}")
    return {
        "rows": rows,
        "steps": steps,
        "resumed_to": steps + more,
        "compile_backend": backend,
        "note": "under torchrun diffit creates the process group even at world size 1 (NCCL on GPU, gloo on CPU) "
        "and wraps the model in DDP, so this run exercises the multi-GPU code path",
        "failures": failures,
    }


# A process that leaves right after collectives while DDP still holds the process group (world size 1).
_TEARDOWN = """
import sys, torch
from diffit.distributed import all_gather, all_reduce_max, init_distributed, shutdown
info = init_distributed(sys.argv[1])
ids = [info.device.index] if info.device.type == "cuda" else None
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2).to(info.device), device_ids=ids)
if sys.argv[2] == "diffit":
    all_reduce_max(torch.ones(1, device=info.device), info)
    all_gather(torch.get_rng_state(), info)
else:  # torch's object gather, which does not wait for the backend's threads to let go of its tensors
    torch.distributed.all_gather_object([None] * info.world_size, {"rng": torch.get_rng_state()})
shutdown(info)
"""


RUN_TIMEOUT_S = 40


def part_teardown(*, device: str, quick: bool, out: Path) -> dict[str, Any]:
    """Exit codes of processes that leave right after collectives, DDP holding the group: on gloo a backend thread
    freeing a collective's tensors during interpreter shutdown aborted them ("terminate called without an active
    exception"); diffit's collectives wait for it there, NCCL's do not. Counts for diffit's collectives (a
    failure when any exits non-zero) and, for comparison, for torch's ``all_gather_object``."""
    import socket

    # Each run starts CUDA and NCCL (over 10 s on an H200: 5 runs of diffit's variant did not fit 52 s), so 2 of
    # each fit the part's budget; a run that does not exit within RUN_TIMEOUT_S is a hang, recorded as the exit
    # code "timeout" (and counted as non-zero). tests/test_train.py races the gloo case many times on the CPU.
    repeats = 1 if quick else 2
    rows: list[dict[str, Any]] = []
    for variant in ("diffit", "torch"):
        row: dict[str, Any] = {"collectives": variant, "runs": 0, "nonzero_exits": 0, "exit_codes": [], "seconds": []}
        rows.append(row)
        for _ in range(repeats):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}  # fmt: skip
            start = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, "-c", _TEARDOWN, device, variant], env=env,
                                      capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
                code, stderr = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired as hung:
                code, stderr = "timeout", str(hung.stderr or "")
            row["runs"] += 1
            row["seconds"].append(round(time.perf_counter() - start, 1))
            if code != 0:
                row["nonzero_exits"] += 1
                row["stderr_tail"] = stderr[-800:]
            row["exit_codes"] = sorted(set(row["exit_codes"]) | {code}, key=str)
            save_part_result(out, "teardown", {"rows": rows, "failures": []})  # what a part killed at its budget has
    bad = rows[0]["nonzero_exits"]
    failures = [f"{bad} of {repeats} runs with diffit's collectives exited non-zero or hung"] if bad else []
    return {"rows": rows, "failures": failures}


PARTS: dict[str, Callable[..., dict[str, Any]]] = {
    "correctness": part_correctness,
    "attention": part_attention,
    "train_step_eager": part_train_step_eager,
    "train_step_compiled": part_train_step_compiled,
    "train_step_compiled_blocks": part_train_step_compiled_blocks,
    "sampling": part_sampling,
    "train_cli": part_train_cli,
    "teardown": part_teardown,
}


# ---------------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def markdown(record: dict[str, Any]) -> str:
    """The record as markdown tables (one per part)."""
    env = record["environment"]
    lines = [
        f"# diffit GPU check ({'quick, ' if record['quick'] else ''}{env['device']})",
        "",
        f"{env['card']}; torch {env['torch']}, CUDA {env['cuda'] or '-'}, cuDNN {env['cudnn'] or '-'}; "
        f"{record['started']}; {record.get('wall_s', '-')} s",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {r['status']} | {r.get('seconds', '-')} |" for n, r in record["parts"].items()]
    get = {n: r.get("result", {}) for n, r in record["parts"].items()}
    if get.get("correctness", {}).get("rows"):
        lines += [
            "",
            "## 1. Correctness (relative error; fp32: device vs CPU, TF32 off; bf16: autocast vs fp32)",
            "",
            "| model | fp32 output | fp32 worst grad | its error vs fp64: device / CPU | bf16 output | bf16 all grads "
            "| bf16 worst grad | grads ~0 (left out of worst) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {_fmt(r['fp32_output_rel'])} | {_fmt(r['fp32_grad_rel_max'])} ({r['fp32_worst_grad']}) "
            f"| {_fmt(r['worst_grad_vs_fp64']['device'])} / {_fmt(r['worst_grad_vs_fp64']['cpu'])} "
            f"| {_fmt(r['bf16_output_rel'])} | {_fmt(r['bf16_grads_rel'])} "
            f"| {_fmt(r['bf16_grad_rel_max'])} ({r['bf16_worst_grad']}) | {len(r['noise_grads'])} |"
            for r in get["correctness"]["rows"]
        ]
    if get.get("attention", {}).get("rows"):
        lines += [
            "",
            "## 2. Attention (ms; ratio to an unbiased flash call of the same shape)",
            "",
            "| case | dtype | SDPA kernels fwd / bwd | flash fwd | SDPA fwd | flex fwd | flash f+b | SDPA f+b | "
            "flex f+b | auto picks | flex vs SDPA fp32 (out, grads) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in get["attention"]["rows"]:
            kern = "; ".join(r["sdpa_kernels"]["forward"]) + " / " + "; ".join(r["sdpa_kernels"]["backward"])
            lines.append(
                f"| {r['case']} {r['side']}x{r['side']} w{r['window']} b{r['batch']} | {r['dtype']} | {kern} "
                f"| {_fmt(r['flash_fwd_ms'])} | {_fmt(r['sdpa_fwd_ms'])} ({_fmt(r['sdpa_fwd_vs_flash'], 2)}x) "
                f"| {_fmt(r['flex_fwd_ms'])} ({_fmt(r['flex_fwd_vs_flash'], 2)}x) | {_fmt(r['flash_fwd_bwd_ms'])} "
                f"| {_fmt(r['sdpa_fwd_bwd_ms'])} ({_fmt(r['sdpa_fwd_bwd_vs_flash'], 2)}x) "
                f"| {_fmt(r['flex_fwd_bwd_ms'])} ({_fmt(r['flex_fwd_bwd_vs_flash'], 2)}x) "
                f"| {r['auto_picks']} | {_fmt(r.get('flex_fp32_rel'))} |"
            )
        first = get["attention"]["rows"][0] if get["attention"]["rows"] else {}
        lines += ["", f"Timing: {first.get('timing', '-')}, each sample about {first.get('sample_s', '-')} s of calls."]
        errors = [f"- {r['case']}, {key.removesuffix('_error').replace('_', ' ')}: {r[key]}"
                  for r in get["attention"]["rows"] for key in sorted(r) if key.endswith("_error")]  # fmt: skip
        lines += ["", "Where flex did not run:", ""] + errors if errors else []
    steps = [get.get(n, {}) for n in ("train_step_eager", "train_step_compiled", "train_step_compiled_blocks")]
    if any(s.get("batch") for s in steps):
        lines += [
            "",
            "## 3. Training step (bf16)",
            "",
            "| model | mode | batch | first step s | images/s | peak GiB | TFLOP/s | MFU | OOM at |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in steps:
            if s.get("batch"):
                oom = ", ".join(str(t["batch"]) for t in s["tries"] if t["status"] != "ok") or "-"
                lines.append(
                    f"| {s['model']} | {({False: 'eager', True: 'compiled'}).get(s['compiled'], 'compiled blocks')} "
                    f"| {s['batch']} "
                    f"| {_fmt(s.get('first_step_s'))} | {_fmt(s['images_per_s'])} | {_fmt(s['peak_memory_gib'])} "
                    f"| {_fmt(s['achieved_tflops'])} "
                    f"| {_fmt(s['mfu'])} | {oom} |"
                )
    kernels = get.get("train_step_eager", {}).get("top_kernels")
    if kernels:
        lines += ["", "Eager step, device time by op (profiler, one step):", "", "| op | calls | ms | share |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| `{k['op']}` | {k['calls']} | {_fmt(k['ms'])} | {_fmt(k['share'], 2)} |" for k in kernels]
    if get.get("sampling", {}).get("rows"):
        lines += [
            "",
            "## 4. Sampling (bf16)",
            "",
            "| model | sampler | batch | images/s | detail |",
            "|---|---|---|---|---|",
        ]
        for r in get["sampling"]["rows"]:
            detail = f"{_fmt(r['step_ms'])} ms/step, 250 steps" if "step_ms" in r else f"{r['nfe']} NFE"
            lines.append(f"| {r['model']} | {r['sampler']} | {r['batch']} | {_fmt(r['images_per_s'])} | {detail} |")
    if get.get("train_cli", {}).get("rows"):
        lines += [
            "",
            "## 5. `diffit train` on the digits",
            "",
            "| run | exit | seconds | images/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['run']} | {r['exit']} | {r['seconds']} | {_fmt(r.get('images_per_s'))} |"
            for r in get["train_cli"]["rows"]
        ]
    if get.get("teardown", {}).get("rows"):
        lines += ["", "## 6. Leaving right after collectives (world size 1, DDP holding the group)", "",
                  "| collectives | runs | non-zero exits | exit codes | seconds per run |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r['collectives']} | {r['runs']} | {r['nonzero_exits']} | {r['exit_codes']} | {r['seconds']} |"
            for r in get["teardown"]["rows"]
        ]
    failures = [f"- {n}: {f}" for n, r in get.items() for f in r.get("failures", [])]
    failures += [f"- {n}: {r['status']}" for n, r in record["parts"].items() if r["status"] in ("error", "timeout")]
    if failures:
        lines += ["", "## Failures", ""] + failures
    return "\n".join(lines) + "\n"
