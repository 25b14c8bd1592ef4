"""What the commands share: one-line failures with exit code 2, shared options, the progress bar."""

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Annotated, NoReturn

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from diffit.util import OutOfMemory

console = Console(stderr=True)

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


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit with ``code`` (2: bad usage), without a traceback."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())), highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def fail_from(err: Exception, ctx: typer.Context | None = None, aliases: dict[str, str] | None = None) -> NoReturn:
    """:func:`fail` with a library error. By convention it starts with the Python argument it is about (or two,
    "a and b ..."); those that are options of the command (``ctx``) are shown as the options (``batch_size`` ->
    ``--batch-size``), or as ``aliases`` says where the library's name differs from the option's."""
    words = str(err).split(" ")
    options = {p.name: p.opts[0] for p in ctx.command.params if getattr(p, "opts", None)} if ctx is not None else {}
    options |= aliases or {}
    for i in (0, 2) if len(words) > 2 and words[1] == "and" else (0,):
        name = words[i].removesuffix(":")
        if name in options:
            words[i] = options[name] + words[i][len(name) :]
    fail(" ".join(words))


@contextmanager
def refusing(
    ctx: typer.Context | None = None, aliases: dict[str, str] | None = None, *, hold_warnings: bool = False
) -> Iterator[None]:
    """Turn the library's ValueError / FileNotFoundError raised inside the block into a one-line exit 2. With
    ``hold_warnings`` (a block of checks before any work), the warnings raised inside are shown only once the
    block has refused nothing: a refused invocation prints its error line alone."""
    with warnings.catch_warnings(record=True) if hold_warnings else nullcontext() as held:
        try:
            yield
        except (ValueError, FileNotFoundError) as err:
            fail_from(err, ctx, aliases)
    for w in held or []:  # shown as if never held (catch_warnings has put showwarning back)
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


@contextmanager
def out_of_memory(ctx: typer.Context | None = None, aliases: dict[str, str] | None = None) -> Iterator[None]:
    """The library's OutOfMemory (it names the argument that sets the memory) as a one-line exit 2. Put it
    outside a progress bar's block, so that the bar is gone before the line is printed."""
    try:
        yield
    except OutOfMemory as err:
        fail_from(err, ctx, aliases)


def check_precision(precision: str) -> str:
    if precision not in ("fp32", "bf16"):
        fail(f"--precision must be fp32 or bf16, got {precision!r}")
    return precision


MAX_IDS = 10_000_000  # seeds or class ids one command may name (a list of this many ints is ~300 MB)


def parse_int_ranges(text: str, *, name: str, limit: int = MAX_IDS) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (non-negative, inclusive ranges); a one-line error otherwise,
    also when the ranges name more than ``limit`` values (checked before any list is built)."""
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        # ASCII digits only: str.isdigit() also accepts '²', which int() then refuses with a traceback.
        if len(bounds) > 2 or not all(re.fullmatch(r"[0-9]+", b.strip()) for b in bounds):
            fail(f"{name} must be non-negative integers or inclusive ranges like '0-49999,50', got {text!r}")
        spans.append((int(bounds[0]), int(bounds[-1])))
    total = sum(max(0, hi - lo + 1) for lo, hi in spans)
    if total == 0:
        fail(f"{name} is empty: {text!r} selects nothing")
    if total > limit:
        fail(f"{name} names {total} values, more than the {limit} one run may take: split the job")
    if any(hi >= 2**63 for _, hi in spans):
        fail(f"{name} values must be < 2^63, got {text!r}")
    return [v for lo, hi in spans for v in range(lo, hi + 1)]


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
