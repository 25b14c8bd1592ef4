"""`diffit info`: size and cost of a backbone preset (params, GFLOPs, tokens and windows per stage)."""

from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from diffit.nn import ImageDiffiT, LatentDiffiT, count_flops, count_params
from diffit_cli.common import IMAGE_MODELS, LATENT_MODELS, VAE_FACTOR, fail, latent_side


def _build(name: str, res: int | None) -> ImageDiffiT | LatentDiffiT:
    """The preset on the meta device (no memory), at ``res`` when given."""
    with torch.device("meta"):
        if name in IMAGE_MODELS:
            return IMAGE_MODELS[name](**({} if res is None else {"resolution": res}))
        return LATENT_MODELS[name](**({} if res is None else {"input_size": latent_side(res)}))


def info(
    model: Annotated[str, typer.Option(help="Image: tiny | cifar10 | ffhq64. Latent: s2 | b2 | l2 | xl2.")] = "tiny",
    res: Annotated[
        int | None, typer.Option(help="Image resolution in pixels (latent models: the latent side is res / 8).")
    ] = None,
) -> None:
    """Print a preset's parameters, GFLOPs of one forward pass, and tokens / windows per stage."""
    if model not in IMAGE_MODELS and model not in LATENT_MODELS:
        fail(f"--model must be one of {', '.join([*IMAGE_MODELS, *LATENT_MODELS])}, got {model!r}")
    try:
        net = _build(model, res)
        # FLOPs on the meta device; the label lookup costs none, so an unconditional twin is measured.
        with torch.device("meta"):
            twin = type(net)(**(net.config | {"num_classes": None}))
            side = net.resolution
            x = torch.randn(1, net.in_channels, side, side)
            flops = count_flops(twin, x, torch.zeros(1))
    except ValueError as err:
        fail(f"--res/--model: {err}")

    latent = isinstance(net, LatentDiffiT)
    title = f"diffit {model} at {side * VAE_FACTOR if latent else side} px" + (
        f" ({side}x{side} latents)" if latent else ""
    )
    table = Table(title=title)
    for col in ("stage", "resolution", "channels", "blocks", "tokens", "window", "windows"):
        table.add_column(col, justify="right")
    if isinstance(net, ImageDiffiT):
        blocks = net.config["blocks_per_stage"]
        for s, (c, w) in enumerate(zip(net.channels, net.windows, strict=True)):
            r = side // 2**s
            n = blocks[s] if s == len(blocks) - 1 else 2 * blocks[s]  # encoder + mirrored decoder
            table.add_row(str(s), f"{r}x{r}", str(c), str(n), str(r * r), f"{w}x{w}", str((r // w) ** 2))
    else:
        g = net.grid_size
        table.add_row(
            "all", f"{g}x{g} tokens", str(net.config["hidden_size"]), str(net.config["depth"]), str(g * g),
            f"{g}x{g} (global)", "1",
        )  # fmt: skip
    out = Console()
    out.print(table)
    out.print(
        f"params: {count_params(net) / 1e6:.2f}M trainable   "
        f"forward: {flops / 1e9:.2f} GFLOPs (multiply-add = 2; {flops / 2e9:.2f} G multiply-adds, the papers' unit)"
    )
