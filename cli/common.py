"""What the commands share: one-line failures with exit code 2, and the model names the CLI knows."""

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch import nn

from diffit.nn.latent import latent_diffit_b_2, latent_diffit_l_2, latent_diffit_s_2, latent_diffit_xl_2
from diffit.nn.unet import diffit_cifar10, diffit_ffhq64, diffit_tiny

console = Console(stderr=True)

# The CLI is the only place that maps a name to a factory.
IMAGE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "tiny": diffit_tiny,
    "cifar10": diffit_cifar10,
    "ffhq64": diffit_ffhq64,
}
LATENT_MODELS: dict[str, Callable[..., nn.Module]] = {
    "s2": latent_diffit_s_2,
    "b2": latent_diffit_b_2,
    "l2": latent_diffit_l_2,
    "xl2": latent_diffit_xl_2,
}

VAE_FACTOR = 8  # the Stable Diffusion VAE maps H x W x 3 pixels to H/8 x W/8 x 4 latents


def latent_side(res: int) -> int:
    """Latent grid side of an image resolution; exits with a one-line error unless res is a multiple of 8."""
    if res < VAE_FACTOR or res % VAE_FACTOR:
        fail(f"--res {res} must be a multiple of {VAE_FACTOR} for latent models (the VAE downsamples by 8)")
    return res // VAE_FACTOR


Precision = Annotated[str, typer.Option(help="fp32 or bf16 (autocast; weights stay fp32).")]
TF32 = Annotated[
    bool,
    typer.Option("--tf32/--no-tf32", help="Allow TF32 matmuls and convolutions on Ampere+ GPUs (no effect on CPU)."),
]


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions: ~8x faster fp32 GEMMs, 10-bit mantissa inputs."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")]


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with code 2 (bad usage), without a traceback."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def check_precision(precision: str) -> str:
    if precision not in ("fp32", "bf16"):
        fail(f"--precision must be fp32 or bf16, got {precision!r}")
    return precision


def parse_int_ranges(text: str, *, name: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (non-negative, inclusive ranges); a one-line error otherwise."""
    values: list[int] = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            fail(f"{name} must be non-negative integers or inclusive ranges like '0-49999,50', got {text!r}")
        values.extend(range(int(bounds[0]), int(bounds[-1]) + 1))
    if not values:
        fail(f"{name} is empty: {text!r} selects nothing")
    return values


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A ``progress(done, total)`` callback drawing a rich bar on stderr, started at its first call (so that
    argument errors raised before any work print no bar)."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    task = None

    def update(done: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(description, total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()


def write_json(path: str | Path, record: dict[str, object]) -> None:
    """Write ``record`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
