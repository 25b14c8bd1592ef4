"""`diffit sample`: images from a checkpoint with any sampler, guidance settings and per-sample seeds."""

import math
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffit.checkpoint import load_model
from diffit.data import load_vae
from diffit.diffusion import SAMPLERS, SCHEDULE_NAMES, resolve_sampling
from diffit.distributed import init_distributed, shutdown
from diffit.generate import (
    Guidance,
    class_labels,
    generate,
    guided_denoiser,
    images_out_kind,
    latent_decoder,
    sampling_protocol,
    sampling_sigmas,
    save_images,
)
from diffit.objectives import ADMObjective
from diffit.release import check_release_resolution
from diffit.runs import import_factory
from diffit.util import check_device, to_device
from diffit_cli.common import (
    MAX_IDS,
    TF32,
    Device,
    Precision,
    check_precision,
    console,
    fail,
    out_of_memory,
    parse_int_ranges,
    refusing,
    set_tf32,
)


def sample_command(
    ctx: typer.Context,
    ckpt: Annotated[
        str | None,
        typer.Option(
            help="Run dir, ckpt-* dir, .safetensors (ours or the release's) or hub id nvidia/DiffiT; "
            "default: the bundled digits model."
        ),
    ] = None,
    model_factory: Annotated[
        str | None,
        typer.Option(
            help="For a checkpoint of your own model: 'package.module:function' (or :Class) rebuilding it from "
            "its recorded constructor arguments."
        ),
    ] = None,
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "--num-images",
            help="Number of images (seeds 0..n-1) unless --seeds is given. Under torchrun write --num-images: "
            "torchrun reads --n as an abbreviation of its own options and stops.",
        ),
    ] = 100,
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
    guidance_interval: Annotated[str | None, typer.Option(help="'lo,hi': guide only for sigma in \\[lo, hi].")] = None,
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
        str,
        typer.Option(
            help="A .png grid, a new or empty directory of PNGs, or an ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels)."
        ),
    ] = "samples.png",
    device: Device = None,
) -> None:
    """Sample images. With no options: a grid from the bundled class-conditional digits model."""
    check_precision(precision)
    set_tf32(tf32)
    if n < 1 or batch_size < 1:
        fail(f"--n and --batch-size must be >= 1, got {n} and {batch_size}")
    if n > MAX_IDS:
        fail(f"--n names {n} images, more than the {MAX_IDS} one run may take: split the job (--seeds)")
    with refusing(ctx):
        sampler, steps, schedule, plan = resolve_sampling(
            sampler=sampler, schedule=schedule, steps=steps, nfe=nfe, guidance_scale=cfg
        )
    interval = _interval(guidance_interval) if guidance_interval is not None else None
    seed_list = parse_int_ranges(seeds, name="--seeds") if seeds is not None else list(range(n))
    classes = parse_int_ranges(class_ids, name="--class") if class_ids is not None else None
    with out_of_memory(ctx), refusing(ctx, _GUIDANCE_ALIASES):  # the VAE may not fit the device
        guidance = Guidance(scale=cfg, schedule=cfg_schedule, channels=cfg_channels, interval=interval)
        check_release_resolution(release_res)
        images_out_kind(out)  # checked before any work
        check_device(device)
        build = import_factory(model_factory) if model_factory is not None else None
        try:
            loaded = load_model(ckpt, build=build, use_ema=not raw, release_resolution=release_res)
        except (FileNotFoundError, ValueError, ImportError) as err:
            fail(f"--ckpt {ckpt if ckpt is not None else 'bundled'}: {err}")
        model, objective = loaded.model, loaded.objective
        labels = class_labels(seed_list, model.num_classes, classes)
        guided_denoiser(model, labels, guidance, objective)  # checks the guidance settings against the model
        decode = latent_decoder(load_vae(vae, check_device(device))) if isinstance(objective, ADMObjective) else None
    sampler_name = sampler or objective.default_sampler
    steps = steps or objective.default_steps
    dist = init_distributed(device)
    with out_of_memory(ctx):  # a model too large for the device: one line naming --device
        model = to_device(model, dist.device)
    bar, callback, state = _progress(len(range(dist.rank, len(seed_list), dist.world_size)), batch_size, steps, dist)
    with refusing(ctx, _GUIDANCE_ALIASES), out_of_memory(ctx):  # before the bar starts: its only line
        sigmas, fit_nfe = sampling_sigmas(
            model, steps, sampler=sampler_name, schedule=schedule, objective=objective, guidance=guidance
        )
    with out_of_memory(ctx), bar, refusing(ctx):  # the bar is gone before the error is printed
        images = generate(
            model, sampler=SAMPLERS[sampler_name], sigmas=sigmas, seeds=seed_list, labels=labels, guidance=guidance,
            objective=objective, precision=precision, batch_size=batch_size, decode=decode, dist=dist,
            callback=callback,
        )  # fmt: skip
    if dist.is_main:
        elapsed = time.perf_counter() - state["start"]
        record = sampling_protocol(
            source=loaded.source, objective=objective, sampler=sampler_name, sigmas=sigmas,
            nfe_per_image=state["nfe"], guidance=guidance, seeds=seeds or f"0-{n - 1}", count=len(seed_list),
            classes=class_ids or "random per seed", precision=precision, device=str(dist.device),
            world_size=dist.world_size, seconds=elapsed, schedule=schedule, plan=plan and plan.to_dict(),
            step_orders=state["orders"], schedule_fit_nfe=fit_nfe, tf32=tf32, vae=vae if decode is not None else None,
        )  # fmt: skip
        record_path = save_images(images, out, labels=labels, protocol=record)
        console.print(
            f"wrote {len(images)} images to {out} in {elapsed:.1f} s ({state['nfe']} NFE each); protocol: {record_path}"
        )
    shutdown(dist)


# Guidance's argument names, as the options that set them.
_GUIDANCE_ALIASES = {"scale": "--cfg", "schedule": "--cfg-schedule", "channels": "--cfg-channels",
                     "interval": "--guidance-interval", "classes": "--class",
                     "release_resolution": "--release-res"}  # fmt: skip


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        fail(f"--guidance-interval must be 'lo,hi' (two sigmas), got {text!r}")
    if not 0 <= lo <= hi or not math.isfinite(hi):
        fail(f"--guidance-interval needs 0 <= lo <= hi < inf, got {text!r}")
    return lo, hi


def _progress(mine: int, batch_size: int, steps: int, dist: Any) -> tuple[Progress, Any, dict[str, Any]]:
    """The sampling progress bar, the ``generate`` callback driving it, and what it measured: the NFE per image,
    the start time, and the order of each step of the first batch as the sampler reports it."""
    bar = Progress(
        TextColumn("[bold]sampling"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
        TextColumn("NFE {task.fields[nfe]}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not dist.is_main, transient=True,
    )  # fmt: skip
    task = bar.add_task("sample", total=-(-mine // batch_size) * steps, nfe=0, ips=0.0)
    state: dict[str, Any] = {"nfe": 0, "start": time.perf_counter(), "orders": []}

    def callback(s: dict[str, Any]) -> None:
        bar.live.transient = False  # a step is done: keep the bar on screen (one that fails before, goes)
        state["nfe"] = s["nfe"]  # denoiser evaluations per image (guided steps count cond + uncond)
        if s["batch"] == 0 and "order" in s:
            state["orders"].append(s["order"])
        # Images finished, counting the current batch's share of its steps.
        done = s["images_done"] + s["batch_size"] * (s["i"] + 1) / steps
        rate = done / max(time.perf_counter() - state["start"], 1e-9)
        bar.update(task, completed=s["batch"] * steps + s["i"] + 1, nfe=s["nfe"], ips=rate)

    return bar, callback, state
