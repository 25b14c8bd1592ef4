"""`diffit info`: size and cost of a backbone preset (params, GFLOPs, tokens and windows per stage)."""

from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from diffit.nn import count_flops, count_params
from diffit.runs import IMAGE_PRESETS, LATENT_PRESETS, VAE_FACTOR, latent_side
from diffit_cli.common import fail, refusing


def info(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Image: tiny | cifar10 | ffhq64. Latent: s2 | b2 | l2 | xl2.")] = "tiny",
    res: Annotated[
        int | None, typer.Option(help="Image resolution in pixels (latent models: the latent side is res / 8).")
    ] = None,
) -> None:
    """Print a preset's parameters, GFLOPs of one forward pass, and tokens / windows per stage."""
    latent = model in LATENT_PRESETS
    if model not in IMAGE_PRESETS and not latent:
        fail(f"--model must be one of {', '.join([*IMAGE_PRESETS, *LATENT_PRESETS])}, got {model!r}")
    if res is not None and res < 1:
        fail(f"--res must be >= 1, got {res}")
    with refusing(ctx), torch.device("meta"):  # no memory: shapes only
        size = {} if res is None else ({"input_size": latent_side(res)} if latent else {"resolution": res})
        net = (LATENT_PRESETS if latent else IMAGE_PRESETS)[model](**size)
        # The label lookup costs no FLOPs, so an unconditional twin is measured.
        twin = type(net)(**(net.config | {"num_classes": None}))
        x = torch.randn(1, net.in_channels, net.resolution, net.resolution)
        flops = count_flops(twin, x, torch.zeros(1))
    side = net.resolution
    title = f"diffit {model} at {side * VAE_FACTOR if latent else side} px" + (
        f" ({side}x{side} latents)" if latent else ""
    )
    table = Table(title=title)
    rows = net.stages()
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out = Console()
    out.print(table)
    out.print(
        f"params: {count_params(net) / 1e6:.2f}M trainable   "
        f"forward: {flops / 1e9:.2f} GFLOPs (multiply-add = 2; {flops / 2e9:.2f} G multiply-adds, the papers' unit)"
    )
