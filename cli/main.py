"""Root of the `diffit` command: it wires the sub-commands together and has every warning printed on one line."""

import warnings
from typing import Annotated

import typer

import diffit
from diffit_cli.common import console
from diffit_cli.data import data_app
from diffit_cli.eval import eval_app
from diffit_cli.info import info
from diffit_cli.sample import sample_command
from diffit_cli.train import train_command

app = typer.Typer(
    name="diffit",
    help="DiffiT: train, sample and evaluate Diffusion Vision Transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.command("info")(info)
app.command("train")(train_command)
app.command("sample")(sample_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffit {diffit.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """DiffiT: train, sample and evaluate Diffusion Vision Transformers."""
    warnings.showwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Every warning a command meets (skipped bad samples, a library's deprecation...) as one line, without the
    Python source line that the default format adds."""
    console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
