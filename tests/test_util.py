"""diffit.util: the checks every layer shares."""

import inspect
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from diffit.util import (
    OutOfMemory,
    atomic_path,
    check_device,
    check_output_path,
    is_integer,
    is_out_of_memory,
    locked_folder,
    out_of_memory_as,
    split_batch,
)


def test_is_integer_takes_python_and_numpy_integers_only() -> None:
    assert all(is_integer(v) for v in (0, -3, 2**70, np.int64(5), np.uint8(1)))
    assert not any(is_integer(v) for v in (True, False, 1.0, 2.5, np.float32(1), "1", None, torch.tensor(1)))


def test_split_batch_gives_each_rank_its_share_and_refuses_a_batch_it_cannot_split() -> None:
    assert split_batch(8, None, None) == (0, 1, 8)
    assert split_batch(8, 3, 4) == (3, 4, 2)
    for batch_size in (0, -4, 6, 8.0, True):  # unwrapped: what users meet without DIFFIT_TYPECHECK
        with pytest.raises(
            ValueError, match=f"^batch_size: expected a positive multiple of world_size=4 .* {batch_size}$"
        ):
            inspect.unwrap(split_batch)(batch_size, 0, 4)
    with pytest.raises(ValueError, match="^rank/world_size: expected 0 <= rank < world_size, got rank=4"):
        split_batch(8, 4, 4)


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("nonsense", "^device: unknown device 'nonsense'"),
        ("meta", "^device: diffit runs on cpu or cuda devices, got 'meta'$"),
        ("cuda:99", "^device: 'cuda:99' is not available on this machine"),
    ],
)
def test_check_device_refuses_what_this_machine_lacks_in_one_line(device: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_device(device)


def test_check_device_defaults_to_what_the_machine_has() -> None:
    assert check_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert check_device("cpu") == torch.device("cpu")


CPU_ALLOCATOR = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes.")


def _restated(tried: str) -> OutOfMemory:
    return OutOfMemory(f"batch_size: too large{tried}")


def test_out_of_memory_as_restates_an_allocation_failure_with_the_size_it_tried() -> None:
    with pytest.raises(OutOfMemory, match=r"^batch_size: too large \(it tried to allocate 4096 bytes\)$") as caught:
        with out_of_memory_as(_restated):
            raise CPU_ALLOCATOR
    assert caught.value.__cause__ is CPU_ALLOCATOR and isinstance(caught.value, torch.OutOfMemoryError)
    with pytest.raises(OutOfMemory, match=r"^batch_size: too large$"):  # no size given: none invented
        with out_of_memory_as(_restated):
            raise MemoryError()


@pytest.mark.parametrize(
    "other", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("out of memory"), KeyError("x")]
)
def test_out_of_memory_as_passes_every_other_error_unchanged(other: Exception) -> None:
    assert not is_out_of_memory(other)
    with pytest.raises(type(other)) as caught, out_of_memory_as(_restated):
        raise other
    assert caught.value is other


def test_an_inner_restatement_wins_unless_the_outer_block_restates_it() -> None:
    inner = OutOfMemory("seeds: one batch too large")
    inner.__cause__ = CPU_ALLOCATOR
    with pytest.raises(OutOfMemory) as caught, out_of_memory_as(_restated):
        raise inner
    assert caught.value is inner
    with pytest.raises(OutOfMemory, match=r"^batch_size: too large \(it tried to allocate 4096 bytes\)$") as caught:
        with out_of_memory_as(_restated, restate_inner=True):
            raise inner
    assert caught.value.__cause__ is CPU_ALLOCATOR  # the allocator's error, not the inner restatement


def test_a_name_near_the_length_limit_is_written_atomically_and_one_past_it_refused_before_any_work(
    tmp_path: Path,
) -> None:
    near = tmp_path / ("n" * 251 + ".npz")  # 255 bytes: its temporary name was 266, "File name too long"
    with atomic_path(near) as tmp:
        assert len(tmp.name) <= 255 and tmp.parent == tmp_path
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == [near.name] and near.read_bytes() == b"whole"
    assert check_output_path(near, file=True) == near  # an existing file is replaced
    for long in (tmp_path / ("n" * 256), tmp_path / ("n" * 300) / "run", tmp_path / "run" / ("n" * 256 + ".png")):
        with pytest.raises(ValueError, match=r"^out .*: a name of (256|300|260) bytes is longer than the 255 its"):
            check_output_path(long, file=long.suffix == ".png")  # an OSError from os.stat before
    assert [p.name for p in tmp_path.iterdir()] == [near.name]
    with pytest.raises(ValueError, match=r"is a file, not a directory$"):
        check_output_path(near / "x.png", file=True)  # a file among the parents, as before


def test_an_atomic_write_is_fsynced_before_its_rename_and_one_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stats.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="^disk full$"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".stats.tmp-{os.getpid()}.npz"  # suffix kept, as np.savez wants
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"] and path.read_bytes() == b"old"
    synced: list[tuple[str, bytes]] = []
    monkeypatch.setattr("diffit.util.files.fsync_file", lambda f: synced.append((Path(f).name, path.read_bytes())))
    for durable in (False, True):
        with atomic_path(path, durable=durable) as tmp:
            tmp.write_bytes(b"new")
    assert synced == [(f".stats.tmp-{os.getpid()}.npz", b"new")]  # the durable one only, before it replaced "new"
    assert path.read_bytes() == b"new"


def test_a_failed_block_removes_only_the_folder_locked_folder_made_and_the_lock_names_its_holder_alone(
    tmp_path: Path,
) -> None:
    made, mine = tmp_path / "made", tmp_path / "mine"
    mine.mkdir()
    for folder in (made, mine):
        with pytest.raises(RuntimeError, match="^failed$"), locked_folder(folder):
            raise RuntimeError("failed")
    assert not made.exists() and [p.name for p in mine.iterdir()] == [".lock"]  # the user's folder stays
    (mine / ".lock").write_text("pid 123456789 on a-host-whose-name-is-longer-than-this-one\n")  # an earlier holder
    with locked_folder(mine):
        assert (mine / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
