"""Atomic writes (a file appears complete under its final name or not at all), output-path checks, and a
folder lock that keeps a second process out of a folder one is writing."""

import hashlib
import json
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; locked_folder warns and runs unlocked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


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
    tmp = path.with_name(_temporary_name(path))
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


def _temporary_name(path: Path) -> str:
    """``.{stem}.tmp-{pid}{suffix}``; for a name near the file system's length limit, its stem is shortened and a
    hash of the whole name added, so that every name that can be written has a temporary name too."""
    name, limit = f".{path.stem}.tmp-{os.getpid()}{path.suffix}", _name_max(path.parent)
    if len(os.fsencode(name)) <= limit:
        return name
    digest = hashlib.blake2b(os.fsencode(path.name), digest_size=4).hexdigest()
    stem = path.stem
    while stem and len(os.fsencode(name := f".{stem}~{digest}.tmp-{os.getpid()}{path.suffix}")) > limit:
        stem = stem[:-1]
    return name


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder``, or of its nearest existing ancestor, takes."""
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no such limit known
        return 255


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` as indented JSON, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def check_output_path(path: str | Path, *, name: str = "out", file: bool = False) -> Path:
    """``path`` as a Path that can be created and written: not empty, no existing file among its parents, no
    part of it longer than its file system allows, and its nearest existing ancestor writable. ``file``: path
    is a file to write (an existing one is replaced), else a folder. ValueError (one line, naming ``name``)
    otherwise; nothing is made."""
    text = str(path)
    if not text.strip():
        raise ValueError(f"{name} must be a path, got {text!r}")
    p = Path(text)
    limit = _name_max(p.parent)
    long = next((part for part in p.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:  # checked first: os.stat of such a path raises instead of answering
        raise ValueError(
            f"{name} {text}: a name of {len(os.fsencode(long))} bytes is longer than the {limit} its file system takes"
        )
    if file:
        p = p.parent
    ancestor = p.parent if not p.exists() else p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} {text}: {ancestor} is a file, not a directory")
    try:  # a real probe: permissions, read-only file systems and pseudo file systems (/proc) all show here
        os.rmdir(tempfile.mkdtemp(prefix=".diffit-probe-", dir=ancestor))
    except OSError:
        raise ValueError(f"{name} {text}: cannot create anything in {ancestor}") from None
    return Path(text)


@contextmanager
def locked_folder(folder: str | Path, *, name: str = "out") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block: ``flock`` on ``folder/.lock``, which
    records the holder's pid and host. ValueError naming ``name`` when another process holds it: two jobs writing
    one folder (a requeued job beside a live one, one command started twice) would truncate each other's log and
    interleave their files. The kernel drops the lock when its process ends, kill -9 included, so no stale lock
    outlives a crash. Where the file system cannot lock (some network mounts, Windows), it warns and runs unlocked.
    A folder this call created is removed again if the block fails while it holds nothing but the lock; otherwise
    the lock file stays (removing it would let two processes lock two different files)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            if fcntl is None:
                raise OSError("no flock on this platform")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that did not say which"
            raise ValueError(
                f"{name}: {folder} is in use by another process ({holder}); wait for it to end, or choose another "
                "folder"
            ) from None
        except OSError as err:  # ENOLCK or EOPNOTSUPP on some network file systems
            warnings.warn(f"{name}: cannot lock {folder} ({err}); nothing keeps a second process out", stacklevel=3)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    except BaseException:
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            with suppress(OSError):  # another process came in: leave it
                (folder / LOCK_NAME).unlink()
                folder.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock
