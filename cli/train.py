"""`diffit train`: image-space DiffiT with EDM, or latent DiffiT with the ADM objective, DDP under torchrun."""

import math
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated, Any

import torch
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffit.data import load_vae
from diffit.distributed import init_distributed, shutdown, world_size
from diffit.generate import latent_decoder, preview_writer
from diffit.objectives import ADMObjective, EDMObjective
from diffit.runs import (
    build_backbone,
    check_resume_data,
    import_factory,
    preview_needs_vae,
    training_data,
)
from diffit.train import TrainingDiverged, check_run_dir, check_train_args, compile_option, train
from diffit.util import check_device
from diffit_cli.common import TF32, Device, Precision, console, out_of_memory, refusing, set_tf32


def train_command(
    ctx: typer.Context,
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
    model: Annotated[
        str | None,
        typer.Option(help="Image: tiny | cifar10 | ffhq64 (default tiny). Latent: s2 | b2 | l2 | xl2 (default xl2)."),
    ] = None,
    model_factory: Annotated[
        str | None,
        typer.Option(
            help="Your own backbone instead of a preset: 'package.module:function', called with resolution=, "
            "in_channels=, num_classes= (None for unlabelled data)."
        ),
    ] = None,
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
    compile: Annotated[bool, typer.Option(help="torch.compile the whole model.")] = False,
    compile_blocks: Annotated[
        bool,
        typer.Option(
            "--compile-blocks",
            help="torch.compile each repeated block instead (regional: compile time does not grow with depth).",
        ),
    ] = False,
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
    guard_updates: Annotated[
        bool,
        typer.Option(
            "--guard-updates/--no-guard-updates",
            help="Roll back a step whose update makes a weight non-finite (keeps a copy of weights and optimizer "
            "state during the step).",
        ),
    ] = True,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per rank for streamed shards.")] = 2,
    out: Annotated[str, typer.Option(help="Run directory (checkpoints, log.jsonl, sample grids).")] = "runs/digits",
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --out from its newest intact checkpoint (none yet: start it, so a "
            "preemptible job can always pass --resume)."
        ),
    ] = False,
    vae: Annotated[
        str | None, typer.Option(help="With --latent: AutoencoderKL (path or hub id) to decode the sample grids.")
    ] = None,
    device: Device = None,
) -> None:
    """Train DiffiT. With no --data: the class-conditional tiny model on the bundled 16x16 digits."""
    set_tf32(tf32)
    aliases = {"betas": "--beta1/--beta2", "factory": "--model-factory", "run_dir": "--out"}
    with out_of_memory(ctx, aliases), refusing(ctx, aliases, hold_warnings=True):
        compile_mode = compile_option(compile, compile_blocks)
        check_train_args(
            steps=steps, batch_size=batch_size, micro_batch=micro_batch, world_size=world_size(), lr=lr,
            warmup=warmup, betas=(beta1, beta2), weight_decay=weight_decay, ema=ema, grad_clip=grad_clip,
            precision=precision, label_dropout=label_dropout, ckpt_every=ckpt_every, keep_last=keep_last,
            log_every=log_every, sample_every=sample_every, max_bad_steps=max_bad_steps, seed=seed,
            compile=compile_mode,
        )  # fmt: skip
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        run_dir = check_run_dir(out, resume=resume)
        check_device(device)
        use_vae = preview_needs_vae(vae, latent=latent, sample_every=sample_every)
        factory = import_factory(model_factory) if model_factory is not None else None
        data_ = training_data(data, latent=latent, resolution=res, flip=flip)
        model = model or ("xl2" if latent else "tiny")
        if resume:
            check_resume_data(run_dir, data_.content_hash)
        torch.manual_seed(seed)  # the initial weights are a function of --seed (identical on every rank)
        net = build_backbone(
            data_, model=model, factory=factory, augment=augment, grad_checkpointing=grad_checkpointing
        )
        decode = latent_decoder(load_vae(vae, check_device(device))) if use_vae else None
    objective = ADMObjective() if latent else EDMObjective(augment_p=augment)
    preview = preview_writer(run_dir, objective=objective, decode=decode, upscale=max(1, 128 // data_.resolution))
    on_sample = preview if not latent or decode is not None else None  # latent grids need --vae

    dist = init_distributed(device)
    torch.manual_seed(seed + 1 + dist.rank)  # any other global randomness differs per rank
    progress, callback = _progress(steps, batch_size, enabled=dist.is_main)
    try:
        with out_of_memory(ctx), progress, refusing(ctx, aliases):  # the bar is gone before an out-of-memory line
            result = train(
                model=net, objective=objective, run_dir=run_dir, dist=dist, steps=steps, batch_size=batch_size,
                data=data_.batches(batch_size=batch_size, seed=seed, rank=dist.rank, world_size=dist.world_size,
                                   num_workers=num_workers),
                micro_batch=micro_batch, lr=lr, warmup=warmup, betas=(beta1, beta2), weight_decay=weight_decay,
                ema=ema, grad_clip=grad_clip, precision=precision, compile=compile_mode, seed=seed,
                label_dropout=label_dropout, ckpt_every=ckpt_every, keep_last=keep_last, log_every=log_every,
                sample_every=sample_every, on_sample=on_sample, max_bad_steps=max_bad_steps,
                guard_updates=guard_updates, resume=resume, callback=callback,
                run_info={"data": data_.describe(world_size=dist.world_size, num_workers=num_workers),
                          "model": model_factory or model},
            )  # fmt: skip
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


def _progress(
    steps: int, batch_size: int, *, enabled: bool
) -> tuple[AbstractContextManager[None], Callable[[dict[str, Any]], None]]:
    """The training progress bar (a context manager) and the ``train`` callback that drives it (rank 0 only).
    Until the first logged step the bar is transient: a run that fails before it (a batch that does not fit)
    leaves only its one-line error, not a bar at step 0."""
    progress = Progress(
        TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TaskProgressColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s  {task.fields[its]:.2f} it/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled,
        transient=True,
    )  # fmt: skip
    task = progress.add_task("train", total=steps, loss=math.nan, ips=0.0, its=0.0)

    def callback(event: dict[str, Any]) -> None:
        if event["event"] == "log":
            progress.live.transient = False  # there is progress to keep on screen
            ips = event["images_per_s"]
            progress.update(task, completed=event["step"], loss=event["loss"], ips=ips, its=ips / batch_size)
        elif event["event"] == "checkpoint":
            progress.console.log(f"checkpoint step {event['step']}: {event['path']}")
        elif event["event"] == "warning":
            progress.console.log(f"warning: {event['message']}")

    @contextmanager
    def shown() -> Iterator[None]:
        progress.start()
        try:
            yield
        finally:
            if progress.live.transient:
                progress.live.stop()  # erased (Progress.stop would add a blank line to a non-terminal's output)
            else:
                progress.stop()

    return shown(), callback
