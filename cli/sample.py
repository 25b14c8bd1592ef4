"""`diffit sample`: images from a checkpoint with any sampler, guidance settings and per-sample seeds."""

import json
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
from diffit.checkpoint import load_weights, read_metadata, resolve_weights, sha256_file
from diffit.diffusion import SAMPLERS
from diffit.distributed import init_distributed, shutdown
from diffit.generate import Guidance, default_sigmas, make_grid, sample, save_png, to_uint8
from diffit.nn import LatentDiffiT
from diffit.release import load_release
from diffit_cli.common import Device, Precision, check_precision, console, fail, parse_int_ranges

LATENT_SCALE = 0.18215  # Stable Diffusion VAE latent scale used by the release


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
    if n < 1 or batch_size < 1:
        fail(f"--n and --batch-size must be >= 1, got {n} and {batch_size}")
    if steps is not None and steps < 1:
        fail(f"--steps must be >= 1, got {steps}")
    if sampler is not None and sampler not in SAMPLERS:
        fail(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
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
    model, source = _load_model(ckpt, use_ema=not raw, release_res=release_res)
    model = model.to(dist.device)
    is_latent = isinstance(model, LatentDiffiT)
    sampler_name = sampler or ("ddpm" if is_latent else "heun")
    steps = steps or (250 if is_latent else 18)
    num_classes = model.num_classes
    labels_all = None
    if num_classes is not None:
        if class_ids is not None:
            cls = parse_int_ranges(class_ids, name="--class")
            if max(cls) >= num_classes:
                fail(f"--class ids must be in [0, {num_classes - 1}] for this model, got {max(cls)}")
            labels_all = torch.tensor([cls[i % len(cls)] for i in range(len(seed_list))])
        else:  # random, but a function of each seed alone
            labels_all = torch.tensor(
                [
                    int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s + 2**40)))
                    for s in seed_list
                ]
            )
    elif class_ids is not None or cfg != 1.0:
        fail("the model is unconditional: --class and --cfg do not apply")
    decoder = _vae_decoder(vae, dist.device) if is_latent else None

    guidance = Guidance(scale=cfg, schedule=cfg_schedule, channels=cfg_channels, interval=interval)
    sigmas = default_sigmas(model, steps)
    mine = list(range(dist.rank, len(seed_list), dist.world_size))  # this rank's share of the seeds
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    images: list[torch.Tensor] = []
    nfe = 0  # denoiser evaluations per image (guided steps count cond + uncond)
    progress = Progress(
        TextColumn("[bold]sampling"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
        TextColumn("NFE {task.fields[nfe]}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not dist.is_main,
    )  # fmt: skip
    task = progress.add_task("sample", total=len(batches) * steps, nfe=0, ips=0.0)
    start, done = time.perf_counter(), 0
    with progress:
        for b, idx in enumerate(batches):

            def callback(state: dict[str, Any], b: int = b, done: int = done) -> None:
                nonlocal nfe
                nfe = state["nfe"]
                rate = done / max(time.perf_counter() - start, 1e-9)
                progress.update(task, completed=b * steps + state["i"] + 1, nfe=nfe, ips=rate)

            try:
                x = sample(
                    model,
                    sampler=SAMPLERS[sampler_name],
                    sigmas=sigmas,
                    seeds=[seed_list[i] for i in idx],
                    labels=None if labels_all is None else labels_all[idx],
                    guidance=guidance,
                    precision=precision,
                    callback=callback,
                )
            except ValueError as err:
                fail(str(err))
            images.append(to_uint8(decoder(x) if decoder is not None else x))
            done += len(idx)
    local = torch.cat(images) if images else torch.zeros(0, dtype=torch.uint8)
    order = torch.tensor(mine)
    if dist.enabled:  # gather every rank's images in seed order
        gathered: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (order, local))
        order = torch.cat([g[0] for g in gathered])
        local = torch.cat([g[1] for g in gathered])
    if dist.is_main:
        all_images = local[torch.argsort(order)]
        elapsed = time.perf_counter() - start
        _write(out, out_kind, all_images, labels_all)
        record = {
            "diffit_version": diffit.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "checkpoint": source, "weights": "raw" if raw else "ema",
            "sampler": sampler_name, "steps": steps, "nfe_per_image": nfe,
            "guidance": {"scale": cfg, "schedule": cfg_schedule, "channels": cfg_channels, "interval": interval},
            "seeds": seeds or f"0-{n - 1}", "count": len(seed_list), "classes": class_ids or "random per seed",
            "precision": precision, "sigmas": [round(float(s), 6) for s in sigmas], "device": str(dist.device),
            "world_size": dist.world_size, "seconds": round(elapsed, 3), "vae": vae if is_latent else None,
        }  # fmt: skip
        record_path = out / "protocol.json" if out_kind == "dir" else out.with_suffix(".json")
        _atomic_text(record_path, json.dumps(record, indent=2))
        console.print(
            f"wrote {len(all_images)} images to {out} in {elapsed:.1f} s ({nfe} NFE each); protocol: {record_path}"
        )
    shutdown(dist)


def _load_model(ckpt: str | None, *, use_ema: bool, release_res: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Our checkpoints (self-describing safetensors) or the authors' release (file, folder or hub id)."""
    try:
        path = resolve_weights(ckpt, use_ema=use_ema)
    except FileNotFoundError as err:
        if ckpt is not None and "/" in ckpt and not Path(ckpt).exists() and not ckpt.startswith((".", "/")):
            return _load_release(ckpt, release_res)  # a hub id such as nvidia/DiffiT
        fail(str(err))
    try:
        if "diffit.model" in read_metadata(path):
            model, _ = load_weights(path)
            return model, {"path": str(path), "sha256": sha256_file(path), "kind": "diffit"}
    except Exception as err:  # not a safetensors file at all, or a damaged one
        fail(f"--ckpt {path}: cannot read it as a checkpoint ({type(err).__name__}: {err})")
    return _load_release(str(path), release_res)


def _load_release(source: str, release_res: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    try:
        model = load_release(source, resolution=release_res)
    except (ValueError, FileNotFoundError, ImportError) as err:
        fail(f"--ckpt {source}: {err}")
    sha = sha256_file(Path(source)) if Path(source).is_file() else None
    return model, {"path": source, "sha256": sha, "kind": "release"}


def _vae_decoder(vae: str, device: torch.device) -> Any:
    from diffit.data import load_vae

    try:
        model = load_vae(vae, device)
    except ValueError as err:
        fail(f"--vae: {err}")

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z / LATENT_SCALE).sample.float()

    return decode


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
