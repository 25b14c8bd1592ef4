"""`diffit data shard` and `diffit data encode`: write image shards, pre-encode latent shards."""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from diffit.data import (
    SD_SCALE_FACTOR,
    BadSampleLog,
    BadSampleWarning,
    array_source,
    digits_source,
    encode_latents,
    folder_source,
    write_image_shards,
)
from diffit_cli.common import console, fail, fail_from, out_of_memory, progress_bar

data_app = typer.Typer(
    name="data", help="Write WebDataset shards of images or pre-encoded latents.", no_args_is_help=True
)

_ALIASES = {"resolution": "--res"}  # library argument names that differ from the options


@contextmanager
def _bad_sample_summary(log: BadSampleLog) -> Iterator[None]:
    """Show every BadSampleWarning (each shard's first; the root command prints warnings on one line), then the
    final count of skipped samples."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", BadSampleWarning)
        yield
    if log.count:
        console.print(f"skipped {log.count} bad sample(s)", markup=False)


@data_app.command("shard")
def shard(
    ctx: typer.Context,
    src: Annotated[
        str,
        typer.Argument(
            help="Image folder (class subfolders -> labels, flat -> unlabelled), "
            ".npy or .npz; with --digits: the OUT_PATTERN."
        ),
    ],
    out_pattern: Annotated[str | None, typer.Argument(help="Shard names, printf-style: out/train-%06d.tar")] = None,
    res: Annotated[int | None, typer.Option("--res", help="Square output resolution (default: keep).")] = None,
    center_crop: Annotated[bool, typer.Option("--center-crop", help="ADM center crop to --res (else resize).")] = False,
    jpeg_quality: Annotated[
        int | None, typer.Option("--jpeg-quality", help="Store JPEG at this quality instead of lossless PNG.")
    ] = None,
    max_count: Annotated[int, typer.Option("--max-count", help="Samples per shard at most.")] = 10_000,
    max_size: Annotated[int, typer.Option("--max-size", help="Bytes of sample data after which a shard is closed.")] = 1
    << 30,
    channels: Annotated[int | None, typer.Option("--channels", help="1 (grayscale) or 3 (RGB).")] = None,
    digits: Annotated[
        bool,
        typer.Option(
            "--digits", help="Shard the bundled scikit-learn digits (give only OUT_PATTERN; --res defaults to 16)."
        ),
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a shard set already in the output folder (else refused).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes that decode, resize and encode the images (0: this one); e.g. the CPU count for a "
            "large set. The shards are byte-identical for every count.",
        ),
    ] = 0,
) -> None:
    """Write images as WebDataset shards plus dataset.json."""
    if digits:
        if out_pattern is not None:
            fail("with --digits give only OUT_PATTERN (there is no SRC)")
        out_pattern = src
    elif out_pattern is None:
        fail("missing OUT_PATTERN (e.g. out/train-%06d.tar)")
    log = BadSampleLog()
    try:
        if digits:
            source = digits_source(16 if res is None else res)
        elif os.path.isdir(src):
            source = folder_source(src)
        else:
            source = array_source(src)
        with _bad_sample_summary(log), progress_bar("sharding") as progress:
            manifest = write_image_shards(
                source,
                out_pattern,
                resolution=None if digits else res,
                center_crop=center_crop,
                channels=channels,
                image_format="png" if jpeg_quality is None else "jpg",
                jpeg_quality=95 if jpeg_quality is None else jpeg_quality,
                png_compress_level=0 if digits else 6,
                max_count=max_count,
                max_size=max_size,
                replace=replace,
                workers=workers,
                log=log,
                progress=progress,
            )
    except (ValueError, OSError) as exc:
        fail_from(exc, ctx, _ALIASES)
    console.print(
        f"wrote {manifest.count} samples in {len(manifest.shards)} shard(s), "
        f"{manifest.classes} classes, content_hash {manifest.content_hash[:16]}",
        markup=False,
    )


@data_app.command("encode")
def encode(
    ctx: typer.Context,
    shards: Annotated[str, typer.Argument(help="Image shards, e.g. 'data/train-{000000..000127}.tar'.")],
    out_pattern: Annotated[str, typer.Argument(help="Latent shard names, printf-style: out/lat-%06d.tar")],
    vae: Annotated[str, typer.Option("--vae", help="AutoencoderKL folder or Hub id (e.g. stabilityai/sd-vae-ft-ema).")],
    res: Annotated[int, typer.Option("--res", help="Image resolution to encode at.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per VAE call.")] = 32,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1...")] = "cpu",
    scale_factor: Annotated[
        float, typer.Option("--scale-factor", help="Latent scale recorded for training.")
    ] = SD_SCALE_FACTOR,
    sample: Annotated[
        bool, typer.Option("--sample", help="Store one posterior sample instead of mean and std.")
    ] = False,
) -> None:
    """Encode image shards into float16 latent shards (resumable: finished shards are skipped)."""
    log = BadSampleLog()
    try:
        with out_of_memory(ctx, _ALIASES), _bad_sample_summary(log), progress_bar("encoding") as progress:
            manifest = encode_latents(
                shards,
                out_pattern,
                vae=vae,
                resolution=res,
                batch_size=batch_size,
                device=device,
                scale_factor=scale_factor,
                store="sample" if sample else "mean_std",
                log=log,
                progress=progress,
            )
    except (ValueError, OSError) as exc:
        fail_from(exc, ctx, _ALIASES)
    console.print(
        f"wrote {manifest.count} latents {manifest.channels}x{manifest.resolution}x{manifest.resolution} "
        f"in {len(manifest.shards)} shard(s)",
        markup=False,
    )
