"""Atomic writes: a file appears complete under its final name or not at all."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "check_output_path", "fsync_dir", "fsync_file", "write_json"]


def fsync_file(path: str | Path) -> None:
    """Flush the file at ``path`` to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush the folder at ``path`` (its entries: a rename into it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` (same suffix, so writers that add one do not) to write;
    when the block ends it is renamed onto ``path``, after an fsync when ``durable``. On any error, or a
    signal that unwinds the block, the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` as indented JSON, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def check_output_path(path: str | Path, *, name: str = "out") -> Path:
    """``path`` as a Path that can be created and written: not empty, no existing file among its parents, and
    its nearest existing ancestor writable. ValueError (one line, naming ``name``) otherwise; nothing is made."""
    text = str(path)
    if not text.strip():
        raise ValueError(f"{name} must be a path, got {text!r}")
    p = Path(text)
    ancestor = p.parent if not p.exists() else p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} {text}: {ancestor} is a file, not a directory")
    try:  # a real probe: permissions, read-only file systems and pseudo file systems (/proc) all show here
        os.rmdir(tempfile.mkdtemp(prefix=".diffit-probe-", dir=ancestor))
    except OSError:
        raise ValueError(f"{name} {text}: cannot create anything in {ancestor}") from None
    return p
