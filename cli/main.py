"""Root of the `diffit` command: it wires the sub-commands together and has every warning, and every usage
error typer finds (an unknown option, a value of the wrong type, a missing argument), printed on one line."""

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import diffit
from diffit_cli.common import console, fail
from diffit_cli.data import data_app
from diffit_cli.eval import eval_app
from diffit_cli.info import info
from diffit_cli.sample import sample_command
from diffit_cli.train import train_command

try:  # typer >= 0.22 raises the exceptions of its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer: click's
    from click.exceptions import ClickException


@contextmanager
def _one_line_errors(command_path: Callable[[], str] | None = None) -> Iterator[None]:
    """A click error (a usage error: exit 2) as one ``error:`` line and its exit code, not typer's boxed panel,
    ending with the help to read: the failing command's, else ``command_path()``'s (click raises an option missing
    its value without a context). The help that a group called without a command prints (``diffit data``) stays."""
    try:
        yield
    except ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # not importable under every typer: matched by name
            raise
        ctx = getattr(err, "ctx", None)
        path = ctx.command_path if ctx is not None else command_path() if command_path is not None else None
        fail(err.format_message().rstrip(".") + (f"; see '{path} --help'" if path else ""), code=err.exit_code)


def _command_path(group: TyperGroup, ctx: typer.Context, words: list[str]) -> str:
    """``diffit data encode`` for the words ``data encode x y --vae``: the (sub-)commands they name."""
    path, command = [ctx.command_path], group
    for word in words:
        if not hasattr(command, "get_command") or (command := command.get_command(ctx, word)) is None:
            break
        path.append(word)
    return " ".join(path)


class _RootGroup(TyperGroup):
    """The root command. Typer reports what click refuses before a command runs (its options, values and
    arguments, at every level below) in a multi-line panel; both ways it can fail pass through here instead."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with _one_line_errors():  # the root's own options
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        words = [*getattr(ctx, "_protected_args", []), *ctx.args]  # read now: click's invoke consumes them
        with _one_line_errors(lambda: _command_path(self, ctx, words)):  # a sub-command's name, options, arguments
            return super().invoke(ctx)


app = typer.Typer(
    cls=_RootGroup,
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
