"""`diffit sample`: images from a checkpoint with any sampler, guidance settings and per-sample seeds."""

import os
import platform
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import diffit
from diffit.checkpoint import load_model
from diffit.data import load_vae
from diffit.diffusion import SAMPLERS, SCHEDULE_NAMES, final_for, plan_sampling
from diffit.distributed import init_distributed, shutdown
from diffit.generate import (
    FIT_SEEDS,
    Guidance,
    default_sigmas,
    fitted_sigmas,
    generate,
    latent_decoder,
    make_grid,
    random_labels,
    save_png,
)
from diffit.nn import LatentDiffiT
from diffit_cli.common import (
    TF32,
    Device,
    Precision,
    check_precision,
    console,
    fail,
    parse_int_ranges,
    set_tf32,
    write_json,
)

FIT_FINE_STEPS = 100  # candidate sigmas of --schedule optimized (its Heun teacher costs 2 * 100 - 1 NFE)


def sample_command(
    ckpt: Annotated[
        str | None,
        typer.Option(
            help="Run dir, ckpt-* dir, .safetensors (ours or the release's) or hub id nvidia/DiffiT; "
            "default: the bundled digits model."
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="Number of images (seeds 0..n-1) unless --seeds is given.")] = 100,
    seeds: Annotated[
        str | None, typer.Option(help="Per-sample seeds, e.g. 0-49999: image i depends on its seed only.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward batch (results do not depend on it).")] = 100,
    sampler: Annotated[
        str | None, typer.Option(help=f"{' | '.join(SAMPLERS)} (default: heun for image models, ddpm for latent).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default 18 image / 250 latent).")] = None,
    nfe: Annotated[
        int | None,
        typer.Option(
            help="Instead of --steps: evaluations per image (guided ones count 2); picks the sampler and "
            "schedule measured best at that budget unless --sampler / --schedule pin them."
        ),
    ] = None,  # fmt: skip
    schedule: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(SCHEDULE_NAMES)} (default: karras for image models, respaced DDPM for latent); "
            "optimized is fitted to the model first (199 evaluations on 32 extra seeds)."
        ),
    ] = None,
    cfg: Annotated[float, typer.Option(help="Guidance scale s: uncond + s (cond - uncond); 1 = no guidance.")] = 1.0,
    cfg_schedule: Annotated[
        str, typer.Option(help="constant | power-cosine (release, rises from 1 at t=T to s at t=0).")
    ] = "constant",
    cfg_channels: Annotated[
        int | None, typer.Option(help="Guide only the first k channels (3 = the release); default all.")
    ] = None,
    guidance_interval: Annotated[str | None, typer.Option(help="'lo,hi': guide only for sigma in [lo, hi].")] = None,
    class_ids: Annotated[
        str | None, typer.Option("--class", help="Class ids, e.g. '0-9' (cycled); default random per seed.")
    ] = None,
    raw: Annotated[bool, typer.Option(help="Use the raw weights instead of the EMA.")] = False,
    precision: Precision = "fp32",
    tf32: TF32 = True,
    vae: Annotated[
        str, typer.Option(help="AutoencoderKL (path or hub id) to decode latent models.")
    ] = "stabilityai/sd-vae-ft-ema",
    release_res: Annotated[
        int, typer.Option(help="Which release checkpoint a folder / hub id means (256 or 512).")
    ] = 256,
    out: Annotated[
        Path,
        typer.Option(help="A .png grid, a directory of PNGs, or an ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels)."),
    ] = Path("samples.png"),
    device: Device = None,
) -> None:
    """Sample images. With no options: a grid from the bundled class-conditional digits model."""
    check_precision(precision)
    set_tf32(tf32)
    if n < 1 or batch_size < 1:
        fail(f"--n and --batch-size must be >= 1, got {n} and {batch_size}")
    if steps is not None and steps < 1:
        fail(f"--steps must be >= 1, got {steps}")
    if sampler is not None and sampler not in SAMPLERS:
        fail(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if schedule is not None and schedule not in SCHEDULE_NAMES:
        fail(f"--schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {schedule!r}")
    if nfe is not None and steps is not None:
        fail("--nfe and --steps are alternatives: give one")
    plan = None
    if nfe is not None:
        try:
            plan = plan_sampling(nfe, guidance_scale=cfg, sampler=sampler, schedule=schedule)
        except ValueError as err:
            fail(f"--{err}" if str(err).startswith("nfe") else str(err))
        sampler, steps, schedule = plan.sampler, plan.steps, plan.schedule
    if cfg < 0:
        fail(f"--cfg must be >= 0, got {cfg}")
    if cfg_schedule not in ("constant", "power-cosine"):
        fail(f"--cfg-schedule must be constant or power-cosine, got {cfg_schedule!r}")
    interval = None
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval.split(","))
        except ValueError:
            fail(f"--guidance-interval must be 'lo,hi' (two sigmas), got {guidance_interval!r}")
        if not 0 <= lo <= hi:
            fail(f"--guidance-interval needs 0 <= lo <= hi, got {guidance_interval!r}")
        interval = (lo, hi)
    seed_list = parse_int_ranges(seeds, name="--seeds") if seeds is not None else list(range(n))
    out_kind = "npz" if out.suffix == ".npz" else "png" if out.suffix == ".png" else "dir"
    parent = out.parent if out_kind != "dir" else out.parent
    if not parent.is_dir():
        fail(f"--out {out}: directory {parent} does not exist")

    dist = init_distributed(device)
    try:
        model, source = load_model(ckpt, use_ema=not raw, release_resolution=release_res)
    except (FileNotFoundError, ValueError, ImportError) as err:
        fail(f"--ckpt {ckpt if ckpt is not None else 'bundled'}: {err}")
    model = model.to(dist.device)
    is_latent = isinstance(model, LatentDiffiT)
    sampler_name = sampler or ("ddpm" if is_latent else "heun")
    steps = steps or (250 if is_latent else 18)
    labels = None
    if model.num_classes is not None:
        if class_ids is None:  # random, but a function of each seed alone
            labels = random_labels(seed_list, model.num_classes)
        else:
            cls = parse_int_ranges(class_ids, name="--class")
            if max(cls) >= model.num_classes:
                fail(f"--class ids must be in [0, {model.num_classes - 1}] for this model, got {max(cls)}")
            labels = torch.tensor([cls[i % len(cls)] for i in range(len(seed_list))])
    elif class_ids is not None or cfg != 1.0:
        fail("the model is unconditional: --class and --cfg do not apply")
    decode = None
    if is_latent:
        try:
            decode = latent_decoder(load_vae(vae, dist.device))
        except ValueError as err:
            fail(f"--vae: {err}")

    guidance = Guidance(scale=cfg, schedule=cfg_schedule, channels=cfg_channels, interval=interval)
    fit_nfe = None
    if schedule is None:
        sigmas = default_sigmas(model, steps)
    elif schedule == "optimized":
        sigmas = fitted_sigmas(model, steps, guidance=guidance, seeds=FIT_SEEDS, fine_steps=FIT_FINE_STEPS)
        fit_nfe = (2 * FIT_FINE_STEPS - 1) * len(FIT_SEEDS) * (1 if cfg == 1.0 else 2)
    else:
        sigmas = default_sigmas(model, steps, schedule=schedule, final=final_for(sampler_name))
    orders: list[int] = []  # the order of each step of the first batch, as the sampler reports it
    nfe = 0  # denoiser evaluations per image (guided steps count cond + uncond)
    progress = Progress(
        TextColumn("[bold]sampling"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
        TextColumn("NFE {task.fields[nfe]}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not dist.is_main,
    )  # fmt: skip
    my_batches = -(-len(range(dist.rank, len(seed_list), dist.world_size)) // batch_size)
    task = progress.add_task("sample", total=my_batches * steps, nfe=0, ips=0.0)
    start = time.perf_counter()

    def callback(state: dict[str, Any]) -> None:
        nonlocal nfe
        nfe = state["nfe"]
        if state["batch"] == 0 and "order" in state:
            orders.append(state["order"])
        # Images finished, counting the current batch's share of its steps.
        done = state["images_done"] + state["batch_size"] * (state["i"] + 1) / steps
        rate = done / max(time.perf_counter() - start, 1e-9)
        progress.update(task, completed=state["batch"] * steps + state["i"] + 1, nfe=nfe, ips=rate)

    with progress:
        try:
            images = generate(
                model, sampler=SAMPLERS[sampler_name], sigmas=sigmas, seeds=seed_list, labels=labels,
                guidance=guidance, precision=precision, batch_size=batch_size, decode=decode, dist=dist,
                callback=callback,
            )  # fmt: skip
        except ValueError as err:
            fail(str(err))
    if dist.is_main:
        elapsed = time.perf_counter() - start
        _write(out, out_kind, images, labels)
        record = {
            "diffit_version": diffit.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "checkpoint": source, "weights": source["weights"],
            "sampler": sampler_name, "steps": steps, "nfe_per_image": nfe,
            "schedule": schedule or ("respaced" if is_latent else "karras"),
            "final": final_for(sampler_name) if schedule else "sigma_min",
            "plan": plan.to_dict() if plan is not None else None, "step_orders": orders or None,
            "schedule_fit_nfe": fit_nfe,
            "guidance": {"scale": cfg, "schedule": cfg_schedule, "channels": cfg_channels, "interval": interval},
            "seeds": seeds or f"0-{n - 1}", "count": len(seed_list), "classes": class_ids or "random per seed",
            "precision": precision, "tf32": tf32, "sigmas": [round(float(s), 6) for s in sigmas],
            "device": str(dist.device), "world_size": dist.world_size, "seconds": round(elapsed, 3),
            "vae": vae if is_latent else None,
        }  # fmt: skip
        record_path = out / "protocol.json" if out_kind == "dir" else out.with_suffix(".json")
        write_json(record_path, record)
        console.print(
            f"wrote {len(images)} images to {out} in {elapsed:.1f} s ({nfe} NFE each); protocol: {record_path}"
        )
    shutdown(dist)


def _write(out: Path, kind: str, images: torch.Tensor, labels: torch.Tensor | None) -> None:
    if kind == "png":
        nrow = 10 if labels is not None and len(images) % 10 == 0 else None
        save_png(make_grid(images, nrow=nrow), out, upscale=max(1, 128 // images.shape[1]))
    elif kind == "npz":
        tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npz")
        arrays = {"arr_0": images.numpy()}
        if labels is not None:
            arrays["arr_1"] = labels.numpy()
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    else:
        out.mkdir(exist_ok=True)
        for i, img in enumerate(images.numpy()):
            save_png(img, out / f"{i:06d}.png")
