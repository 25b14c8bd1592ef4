"""`diffit train`: image-space DiffiT with EDM, or latent DiffiT with the ADM objective, DDP under torchrun."""

import json
import math
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffit.augment import AUGMENT_DIM
from diffit.checkpoint import latest_checkpoint
from diffit.data import (
    digits_urls,
    expand_urls,
    find_manifest,
    image_pipeline,
    latent_pipeline,
    load_images,
    load_vae,
    memory_batches,
)
from diffit.diffusion import sample_ddpm, sample_heun
from diffit.distributed import init_distributed, shutdown
from diffit.generate import default_sigmas, generate, latent_decoder, make_grid, release_alphas_cumprod, save_png
from diffit.train import ADMObjective, EDMObjective, TrainingDiverged, train
from diffit_cli.common import (
    IMAGE_MODELS,
    LATENT_MODELS,
    TF32,
    VAE_FACTOR,
    Device,
    Precision,
    check_precision,
    console,
    fail,
    latent_side,
    set_tf32,
)

MEMORY_LIMIT_BYTES = 2 << 30  # image datasets below this size are held in RAM: exact, seekable batches


def train_command(
    data: Annotated[
        str | None, typer.Option(help="Shard URLs ('d/train-{000000..000127}.tar'); default: the bundled digits.")
    ] = None,
    res: Annotated[
        int | None,
        typer.Option(help="Image resolution in pixels (also with --latent); checked against dataset.json."),
    ] = None,
    latent: Annotated[
        bool, typer.Option(help="Train latent DiffiT on pre-encoded latent shards (ADM objective).")
    ] = False,
    model: Annotated[str, typer.Option(help="Image: tiny | cifar10 | ffhq64. Latent: s2 | b2 | l2 | xl2.")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="Global batch size (all ranks together).")] = 64,
    micro_batch: Annotated[
        int | None,
        typer.Option(help="Per-device micro-batch (gradient accumulation); default: the whole per-rank batch."),
    ] = None,
    lr: Annotated[
        float,
        typer.Option(help="Peak learning rate (paper: 1e-3 CIFAR-10 at batch 512, 2e-4 FFHQ-64, 3e-4 latent-256)."),
    ] = 5e-4,
    warmup: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 200,
    beta1: Annotated[float, typer.Option(help="Adam beta1.")] = 0.9,
    beta2: Annotated[float, typer.Option(help="Adam beta2.")] = 0.999,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    ema: Annotated[float, typer.Option(help="EMA decay (warmed up as min(decay, (1+n)/(10+n))).")] = 0.9999,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this value; 0 disables.")] = 0.0,
    precision: Precision = "fp32",
    tf32: TF32 = True,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    grad_checkpointing: Annotated[
        bool, typer.Option(help="Recompute block activations in backward (less memory).")
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of all data order, noise and dropout (a pure function of seed and step).")
    ] = 0,
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 2000,
    ckpt_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and at the end / on SIGTERM).")] = 500,
    keep_last: Annotated[int, typer.Option(help="Checkpoints kept besides the best one.")] = 3,
    log_every: Annotated[int, typer.Option(help="Log every N steps (log.jsonl and the progress bar).")] = 10,
    sample_every: Annotated[
        int, typer.Option(help="Write a fixed-seed EMA sample grid every N steps; 0 disables.")
    ] = 500,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Random horizontal flips (default: on with --data; off for the digits, not mirror-symmetric).",
        ),
    ] = None,
    augment: Annotated[
        float,
        typer.Option(help="Image space: probability of each non-leaking geometric augmentation (EDM: 0.12 CIFAR-10)."),
    ] = 0.0,
    label_dropout: Annotated[
        float, typer.Option(help="Probability of the null label (classifier-free guidance).")
    ] = 0.1,
    max_bad_steps: Annotated[int, typer.Option(help="Stop after this many consecutive non-finite steps.")] = 10,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per rank for streamed shards.")] = 2,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, log.jsonl, sample grids).")] = Path(
        "runs/digits"
    ),
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")] = False,
    vae: Annotated[
        str | None, typer.Option(help="With --latent: AutoencoderKL (path or hub id) to decode the sample grids.")
    ] = None,
    device: Device = None,
) -> None:
    """Train DiffiT. With no --data: the class-conditional tiny model on the bundled 16x16 digits."""
    check_precision(precision)
    set_tf32(tf32)
    for name, value in (
        ("--steps", steps),
        ("--batch-size", batch_size),
        ("--ckpt-every", ckpt_every),
        ("--log-every", log_every),
        ("--keep-last", keep_last),
        ("--max-bad-steps", max_bad_steps),
    ):
        if value < 1:
            fail(f"{name} must be >= 1, got {value}")
    if not 0 <= augment <= 1 or (augment > 0 and latent):
        fail(f"--augment must be in [0, 1] and is for image-space training only, got {augment}")
    if sample_every < 0 or warmup < 0 or grad_clip < 0 or not 0 <= ema < 1 or not 0 <= label_dropout < 1:
        fail("--sample-every, --warmup and --grad-clip must be >= 0; --ema and --label-dropout in [0, 1)")
    factories = LATENT_MODELS if latent else IMAGE_MODELS
    if latent and model == "tiny":
        model = "xl2"
    if model not in factories:
        fail(f"--model must be one of {', '.join(factories)} {'with' if latent else 'without'} --latent, got {model!r}")
    if latent and data is None:
        fail("--latent needs --data: latent shards made by `diffit data encode`")
    urls = digits_urls() if data is None else _expand(data)
    manifest = find_manifest(urls)
    if manifest is None and data is not None:
        fail(f"no dataset.json found beside {urls[0]}: write shards with `diffit data shard` or `diffit data encode`")
    # --res is always the image resolution in pixels; latent shards record it as image_resolution and their
    # own (latent) side as resolution, whatever the VAE's downsampling factor.
    data_res = manifest.resolution if manifest is not None else None
    if latent and manifest is not None:
        data_res = manifest.extra.get("image_resolution", (manifest.resolution or 0) * VAE_FACTOR)
    res = res if res is not None else data_res
    if res is None:
        fail("--res is required (the dataset does not record its resolution)")
    if data_res is not None and res != data_res:
        fail(f"--res {res} does not match the data's resolution {data_res} (dataset.json)")
    side = (manifest.resolution or latent_side(res)) if latent and manifest is not None else res
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world:
        fail(f"--batch-size {batch_size} must be divisible by the number of processes ({world})")
    per_rank = batch_size // world
    micro = micro_batch or per_rank
    if micro < 1 or per_rank % micro:
        fail(f"--micro-batch {micro} must divide the per-process batch {per_rank}")
    num_classes = manifest.classes if manifest is not None and manifest.classes > 0 else None
    channels = manifest.channels if manifest is not None else 1
    torch.manual_seed(seed)  # the initial weights are a function of --seed (identical on every rank)
    try:
        if latent:
            net = factories[model](
                input_size=side, in_channels=channels, num_classes=num_classes or 1000, checkpointing=grad_checkpointing
            )
        else:
            net = factories[model](
                resolution=res, in_channels=channels, num_classes=num_classes, checkpointing=grad_checkpointing,
                augment_dim=AUGMENT_DIM if augment > 0 else 0,
            )  # fmt: skip
    except ValueError as err:
        fail(f"--model {model} at --res {res}: {err}")

    last = latest_checkpoint(out)
    if not resume and last is not None:
        fail(f"--out {out} already holds checkpoints: add --resume to continue that run, or choose another --out")
    data_hash = manifest.content_hash if manifest is not None else None
    if resume and last is not None:  # the shards' content hash (dataset.json) must be the run's
        recorded = json.loads((last / "state.json").read_text()).get("args", {}).get("data_content_hash")
        if recorded is not None and data_hash is not None and recorded != data_hash:
            fail(
                f"--data is not the data the run in {out} was trained on (content hash {data_hash[:12]}, "
                f"run: {recorded[:12]}); resume with the same shards"
            )
    dist = init_distributed(device)
    torch.manual_seed(seed + 1 + dist.rank)  # any other global randomness differs per rank
    flip = data is not None if flip is None else flip
    split = dict(batch_size=batch_size, seed=seed, rank=dist.rank, world_size=dist.world_size)
    if latent:
        objective: Any = ADMObjective(alphas_cumprod=release_alphas_cumprod())
        data_fn = lambda start: iter(  # noqa: E731
            latent_pipeline(urls, num_workers=num_workers, start_step=start, flip=flip, **split)
        )
    else:
        objective = EDMObjective(augment_p=augment)
        if (manifest.count if manifest else 0) * channels * res * res <= MEMORY_LIMIT_BYTES:
            images, labels = load_images(urls, resolution=res, channels=channels)  # exact, seekable batches
            data_fn = lambda start: memory_batches(images, labels, start_step=start, flip=flip, **split)  # noqa: E731
        else:
            data_fn = lambda start: iter(  # noqa: E731
                image_pipeline(
                    urls,
                    resolution=res,
                    channels=channels,
                    num_workers=num_workers,
                    start_step=start,
                    flip=flip,
                    **split,
                )
            )

    run_args = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in locals().items()
        if k in train_command.__code__.co_varnames[: train_command.__code__.co_argcount]
    } | {"data_content_hash": data_hash}

    decode = None
    if latent and vae is not None and sample_every > 0 and dist.is_main:
        try:
            decode = latent_decoder(load_vae(vae, dist.device))
        except ValueError as err:
            fail(f"--vae: {err}")

    def on_sample(step: int, ema_model: torch.nn.Module) -> None:
        """A fixed-seed grid of the EMA model: Heun 18 steps (image space) or DDPM 100 steps + VAE (latent)."""
        if latent and decode is None:
            return  # latent grids need --vae
        n = 64 if num_classes is None else 8 * min(num_classes, 10)
        sampler, steps_ = (sample_ddpm, 100) if latent else (sample_heun, 18)
        images = generate(
            ema_model, sampler=sampler, sigmas=default_sigmas(ema_model, steps_), seeds=list(range(n)),
            labels=None if num_classes is None else torch.arange(n) % num_classes, batch_size=16 if latent else n,
            decode=decode,
        )  # fmt: skip
        grid = make_grid(images, nrow=10 if num_classes else 8)
        save_png(grid, out / f"samples-{step:08d}.png", upscale=max(1, 128 // images.shape[1]))

    progress = Progress(
        TextColumn("[bold]step {task.completed}/{task.total}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s  {task.fields[its]:.2f} it/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not dist.is_main,
    )
    task = progress.add_task("train", total=steps, loss=math.nan, ips=0.0, its=0.0)

    def callback(event: dict[str, Any]) -> None:
        if event["event"] == "log":
            progress.update(
                task,
                completed=event["step"],
                loss=event["loss"],
                ips=event["images_per_s"],
                its=event["images_per_s"] / batch_size,
            )
        elif event["event"] == "checkpoint":
            progress.console.log(f"checkpoint step {event['step']}: {event['path']}")

    try:
        with progress:
            result = train(
                model=net,
                objective=objective,
                data=data_fn,
                run_dir=out,
                dist=dist,
                steps=steps,
                batch_size=batch_size,
                micro_batch=micro,
                lr=lr,
                warmup=warmup,
                betas=(beta1, beta2),
                weight_decay=weight_decay,
                ema=ema,
                grad_clip=grad_clip,
                precision=precision,
                compile=compile,
                seed=seed,
                label_dropout=label_dropout,
                ckpt_every=ckpt_every,
                keep_last=keep_last,
                log_every=log_every,
                sample_every=sample_every,
                on_sample=on_sample,
                max_bad_steps=max_bad_steps,
                resume=resume,
                run_args=run_args,
                callback=callback,
            )
    except TrainingDiverged as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    finally:
        shutdown(dist)
    if dist.is_main:
        console.print(
            f"{result.status} at step {result.step}; checkpoint: {result.checkpoint}; "
            f"skipped steps: {result.skipped_steps}"
            + ("; continue with --resume" if result.status == "interrupted" else "")
        )
    if result.status == "interrupted":
        raise typer.Exit(code=128 + (result.signal or signal.SIGINT))


def _expand(data: str) -> list[str]:
    try:
        return expand_urls(data)
    except (ValueError, FileNotFoundError) as err:
        fail(f"--data {data!r}: {err}")
