"""Reliability: bad input is a clean one-line refusal (exit 2, nothing written); state never goes bad
(overflowing updates rolled back, no non-finite checkpoint, orphans removed, damaged checkpoints passed over)."""

import errno
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_image_diffit
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffit.checkpoint import (
    checkpoint_dirs,
    load_model,
    load_weights,
    model_spec,
    read_state,
    save_checkpoint,
    save_weights,
    verify_checkpoint,
)
from diffit.data import array_source, memory_batches, write_image_shards
from diffit.diffusion import karras_sigmas, sample_euler
from diffit.distributed import DistInfo
from diffit.generate import generate, preview_writer, sample
from diffit.objectives import EDMObjective, check_objective
from diffit.runs import TrainingData, build_backbone, check_resume_data, import_factory, training_data
from diffit.train import TrainingOutOfMemory, check_train_args, train, train_step
from diffit.util import OutOfMemory, is_out_of_memory, to_device
from diffit_cli.main import app

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
runner = CliRunner()


class Overflow(EDMObjective):
    """An objective whose loss and gradient are finite but whose update overflows the weight (lr * 1 > max)."""

    def draw(self, generator: torch.Generator, n: int, sample_shape: tuple[int, ...]) -> dict:
        return {}

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, y: object, draws: dict) -> torch.Tensor:
        return -model.w.sum().expand(x0.shape[0])  # d loss / d w = -1: Adam moves w up by ~lr


class Weight(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((1,), 3.38e38))


def test_an_overflowing_update_is_rolled_back_and_skipped() -> None:
    model = Weight()
    opt = torch.optim.AdamW(model.parameters(), lr=1e37, weight_decay=0.0)
    stats = train_step(model=model, objective=Overflow(), optimizer=opt, x=torch.zeros(1, 1, 1, 1), y=None, draws={},
                       micro_batch=1, grad_clip=0.0, precision="fp32", dist=CPU)  # fmt: skip
    assert stats.skipped and math.isfinite(stats.loss) and math.isfinite(stats.grad_norm)
    assert torch.equal(model.w.detach(), torch.full((1,), 3.38e38))  # rolled back exactly
    assert not opt.state  # the step never happened: no Adam moments, no step count


def test_no_checkpoint_holds_non_finite_weights(tmp_path: Path) -> None:
    model = tiny_image_diffit(3)
    with torch.no_grad():
        model.head_conv.bias[0] = float("inf")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="head_conv.bias holds non-finite values"):
        save_checkpoint(tmp_path, step=1, model=model, ema=model, optimizer=opt, rng_states={}, state={})
    with pytest.raises(ValueError, match="refusing to save w.safetensors: the weight head_conv.bias holds non-finite"):
        save_weights(tmp_path / "w.safetensors", model)
    assert list(tmp_path.iterdir()) == []


def test_damaged_weight_files_give_one_line_errors_naming_them(tmp_path: Path) -> None:
    model = tiny_image_diffit(3)
    good = tmp_path / "w.safetensors"
    save_weights(good, model)
    whole = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    save_file({"x": torch.zeros(1)}, tmp_path / "badjson.safetensors", metadata={"diffit.model": "{not json"})
    save_file({"x": torch.zeros(1)}, tmp_path / "list.safetensors", metadata={"diffit.model": "[1, 2]"})
    cases = {
        "cut": "cannot read it as a checkpoint",
        "junk": "cannot read it as a checkpoint",
        "badjson": "its 'diffit.model' metadata is not valid JSON",
        "list": "its 'diffit.model' metadata is not a JSON object, got list",
    }
    for name, match in cases.items():
        for load in (load_weights, load_model):
            with pytest.raises(ValueError, match=f"{name}.safetensors: {match}"):
                load(tmp_path / f"{name}.safetensors")
    objectives = {  # TypeError / AttributeError before
        '{"class": "EDMObjective", "config": {"bogus": 1}}': "cannot rebuild objective EDMObjective .* 'bogus'",
        '{"class": "EDMObjective", "config": {"sigma_min": "abc"}}': "cannot rebuild objective EDMObjective",
        '{"class": "EDMObjective", "config": [1]}': "objective 'EDMObjective', which diffit cannot rebuild",
        "[]": "its 'diffit.objective' metadata is not a JSON object, got list",
    }
    for spec, match in objectives.items():
        save_weights(tmp_path / "o.safetensors", model, extra_metadata={"diffit.objective": spec})
        with pytest.raises(ValueError, match=match):
            load_model(tmp_path / "o.safetensors")
    with pytest.raises(ValueError, match="the folder .*missing does not exist"):
        save_weights(tmp_path / "missing" / "w.safetensors", model)
    assert load_weights(good)[0].config == model.config


def test_weights_that_do_not_fit_the_model_are_named_in_one_line_and_wrapper_prefixes_are_dropped(
    tmp_path: Path,
) -> None:
    model = tiny_image_diffit(3)
    metadata = {"diffit.model": json.dumps(model_spec(model))}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file({f"module._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "ddp.safetensors", metadata=metadata)
    loaded, _ = load_weights(tmp_path / "ddp.safetensors")  # keys as DDP and torch.compile name them
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    shape = tuple(state["head_conv.weight"].shape)
    bad = {**state, "extra.w": torch.zeros(1), "head_conv.weight": state["head_conv.weight"].flatten()}
    del bad["head_conv.bias"]
    save_file(bad, tmp_path / "bad.safetensors", metadata=metadata)
    message = (f"{tmp_path / 'bad.safetensors'} does not fit the model: keys 1 missing (e.g. head_conv.bias); "
               f"1 unexpected (e.g. extra.w); 1 of another shape (e.g. head_conv.weight: ({math.prod(shape)},) vs "
               f"{shape})")  # fmt: skip
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_weights(tmp_path / "bad.safetensors")


def test_a_checkpoint_without_rng_states_fails_its_check(tmp_path: Path) -> None:
    model = tiny_image_diffit(3)
    save_checkpoint(tmp_path, step=1, model=model, ema=model, optimizer=torch.optim.SGD(model.parameters()),
                    rng_states={"rank0.cpu": torch.get_rng_state()}, state={})  # fmt: skip
    ckpt = checkpoint_dirs(tmp_path)[0]
    assert verify_checkpoint(ckpt)["step"] == 1
    record = json.loads((ckpt / "state.json").read_text())
    del record["files"]["rng.safetensors"]  # as checkpoints before 2026-11-27 recorded it: not hashed
    (ckpt / "state.json").write_text(json.dumps(record))
    (ckpt / "rng.safetensors").unlink()
    with pytest.raises(ValueError, match=f"^checkpoint {re.escape(str(ckpt))} has no rng.safetensors$"):
        verify_checkpoint(ckpt)


@pytest.mark.parametrize("step", [-1, 10**8])
def test_a_step_outside_the_checkpoint_names_is_refused(tmp_path: Path, step: int) -> None:
    model = tiny_image_diffit(3)
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 10\*\*8\)"):
        save_checkpoint(tmp_path, step=step, model=model, ema=model, optimizer=torch.optim.SGD(model.parameters()),
                        rng_states={}, state={})  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [  # each failed half-way: the first after creating the run directory, the others inside the write
        ({"step": 1.5}, r"^step must be an integer in \[0, 10\*\*8\), got 1.5$"),  # "Unknown format code 'd'"
        ({"rng_states": {"cpu": 1}}, r"^rng_states must map names to tensors, got a int for 'cpu'$"),
        ({"state": {"x": object()}}, r"^state must be plain JSON data \(it is written to state.json\): Object of"),
        ({"keep_last": 0}, r"^keep_last must be an integer >= 1, got 0$"),  # [:-0] would have kept every one
    ],
)
def test_save_checkpoint_checks_everything_before_writing_anything(tmp_path: Path, kwargs: dict, match: str) -> None:
    model = tiny_image_diffit(3)
    args = dict(step=1, model=model, ema=model, optimizer=torch.optim.SGD(model.parameters()), rng_states={}, state={})
    with pytest.raises(ValueError, match=match):
        inspect.unwrap(save_checkpoint)(tmp_path / "run", **{**args, **kwargs})  # as users run it, no type checks
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"^source must be a path, a hub id such as nvidia/DiffiT, or None, got 42$"):
        inspect.unwrap(load_model)(42)  # Path()'s "expected str, bytes or os.PathLike object, not int" before


def test_checkpoint_files_follow_the_umask_like_any_new_file(tmp_path: Path) -> None:
    """safetensors writes its files 0o600; every file of a checkpoint gets 0o666 less the umask instead."""
    model = tiny_image_diffit(3)
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path, step=1, model=model, ema=model, optimizer=torch.optim.AdamW(model.parameters()),
                        rng_states={"torch": torch.get_rng_state()}, state={})  # fmt: skip
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in checkpoint_dirs(tmp_path)[0].iterdir()}
    assert set(modes) == {"model.safetensors", "ema.safetensors", "optimizer.pt", "rng.safetensors", "state.json"}
    assert set(modes.values()) == {0o640}, modes


def test_current_umask_reads_it_without_changing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux from /proc/self/status, so no other thread ever sees a borrowed umask; elsewhere by os.umask."""
    from diffit.checkpoint import current_umask

    old = os.umask(0o027)
    try:
        with monkeypatch.context() as m:
            if Path("/proc/self/status").exists():
                m.setattr(os, "umask", lambda *_: pytest.fail("os.umask called where /proc/self/status says it"))
            assert current_umask() == 0o027
        real_open = open

        def open_without_proc(file: object, *args: object, **kwargs: object) -> object:
            if str(file) == "/proc/self/status":
                raise OSError("no /proc here")
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("builtins.open", open_without_proc)
        assert current_umask() == 0o027 and os.umask(0o027) == 0o027  # the fallback puts it back
    finally:
        os.umask(old)


def _toy_run(tmp: Path, steps: int, **kw: object) -> object:
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randint(0, 256, (16, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(16) % 3
    return train(
        model=kw.pop("model") if "model" in kw else tiny_image_diffit(3), objective=kw.pop("objective", EDMObjective()),
        run_dir=tmp, dist=CPU,
        data=lambda s: memory_batches(images, labels, batch_size=4, seed=0, start_step=s, flip=False),
        steps=steps, batch_size=kw.pop("batch_size", 4), lr=1e-3, ckpt_every=kw.pop("ckpt_every", 2), **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("name", "value"), [("steps", 1.5), ("steps", True), ("seed", 0.5), ("warmup", 2.0)])
def test_train_counts_must_be_integers_also_without_the_type_checks(name: str, value: object) -> None:
    args = dict(steps=2, batch_size=4, micro_batch=None, world_size=1, lr=1e-3, warmup=0, betas=(0.9, 0.99),
                weight_decay=0.0, ema=0.99, grad_clip=1.0, precision="fp32", label_dropout=None, ckpt_every=1,
                keep_last=1, log_every=1, sample_every=0, max_bad_steps=1, seed=0)  # fmt: skip
    inspect.unwrap(check_train_args)(**args)  # as users run it: DIFFIT_TYPECHECK off
    with pytest.raises(ValueError, match=rf"^{name} must be an integer (>= [01]|in \[0, 2\*\*63\)).*, got {value}$"):
        inspect.unwrap(check_train_args)(**{**args, name: value})
    np_steps = {**args, "steps": np.int64(3)}
    inspect.unwrap(check_train_args)(**np_steps)


def test_train_refuses_an_objective_without_the_contract_and_an_out_that_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="objective object lacks default_sampler, .*sampling_sigmas"):
        check_objective(object())  # what train does first; the suite's type checks would answer before it
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out .*file is a file, not a directory"):
        _toy_run(tmp_path / "file", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_train_refuses_data_batches_of_another_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data: expected batches of this rank's 8 samples .* got x \(4, 1, 8, 8\)"):
        _toy_run(tmp_path, 2, batch_size=8)
    assert checkpoint_dirs(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [  # the model named its own x or y (or Python: 'NoneType' is not callable, leaving the run directory behind)
        (None, r"^data must be a function step -> iterator of \(x, y\) batches, .* got NoneType$"),
        (lambda step: iter([(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))]),
         r"^data: expected batches .* of shape \(1, 8, 8\), got x \(4, 1, 16, 16\) and y \(4,\) at step 0$"),
        (lambda step: iter([(torch.zeros(4, 1, 8, 8), torch.zeros(4))]),
         r"^data: expected integer class labels y, got torch.float32 at step 0$"),
    ],
)  # fmt: skip
def test_train_names_data_that_is_no_function_or_yields_batches_the_model_cannot_take(
    tmp_path: Path, data: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        inspect.unwrap(train)(model=tiny_image_diffit(3), objective=EDMObjective(), data=data, run_dir=tmp_path / "run",
                              dist=CPU, steps=1, batch_size=4, lr=1e-3)  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # the run directory it made is gone again


ALLOCATION_FAILURES = [  # (what each allocator raises, as torch 2.13 and numpy word it; the size it tried)
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"),
     "20.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1024000000 bytes. Error code 12 (Cannot allocate memory)"), "1024000000 bytes"),
    (MemoryError("Unable to allocate 72.8 TiB for an array with shape (10000000000000,) and data type int64"),
     "72.8 TiB"),
]  # fmt: skip


def _failing_forward(model: torch.nn.Module, error: BaseException, after: int = 0) -> None:
    """Make ``model``'s forward raise ``error`` from its call ``after + 1`` on (one call per step here)."""
    calls, forward = [0], model.forward

    def fail_later(*args: object, **kwargs: object) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > after:
            raise error
        return forward(*args, **kwargs)

    model.forward = fail_later


@pytest.mark.parametrize(("error", "tried"), ALLOCATION_FAILURES)
def test_a_step_out_of_memory_names_the_batch_and_leaves_no_empty_run_behind(
    tmp_path: Path, error: BaseException, tried: str
) -> None:
    model = tiny_image_diffit(3)
    _failing_forward(model, error)
    with pytest.raises(TrainingOutOfMemory) as caught:
        _toy_run(tmp_path / "run", 2, model=model, micro_batch=2)
    assert str(caught.value) == (
        f"batch_size and micro_batch: a step of 4 samples per process in micro-batches of 2 ran out of memory on cpu "
        f"(it tried to allocate {tried}); lower the batch size, or accumulate gradients over smaller micro-batches "
        "(the same step in less memory)"
    )
    assert caught.value.__cause__ is error and isinstance(caught.value, torch.OutOfMemoryError)  # still caught as one
    assert list(tmp_path.iterdir()) == []  # the run directory it created, still empty, is gone


def test_out_of_memory_after_a_checkpoint_keeps_it_whole_and_other_errors_pass_unchanged(tmp_path: Path) -> None:
    model = tiny_image_diffit(3)
    _failing_forward(model, ALLOCATION_FAILURES[1][0], after=2)  # steps 1 and 2 run, step 3 fails
    with pytest.raises(TrainingOutOfMemory, match="^batch_size and micro_batch: a step of 4 samples per process"):
        _toy_run(tmp_path / "run", 4, model=model)
    assert [c.name for c in checkpoint_dirs(tmp_path / "run")] == ["ckpt-00000002"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "ckpt-00000002"]  # no half-written step 3
    load_model(tmp_path / "run")  # intact: its hashes check
    for other in (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"), ValueError("out of memory")):
        broken = tiny_image_diffit(3)
        _failing_forward(broken, other)
        with pytest.raises(type(other)) as caught:
            _toy_run(tmp_path / "other", 2, model=broken)
        assert caught.value is other and not is_out_of_memory(other)  # not taken for a batch that is too large


def _sample_on(model: torch.nn.Module, **kw: object) -> torch.Tensor:
    """``generate`` of 5 seeds in batches of 2 (3 batches), two Euler steps."""
    return generate(model, sampler=sample_euler, sigmas=karras_sigmas(2, 0.002, 80.0), seeds=range(5),
                    labels=torch.arange(5) % 3, batch_size=kw.pop("batch_size", 2), **kw)  # fmt: skip


@pytest.mark.parametrize(("error", "tried"), ALLOCATION_FAILURES)
def test_a_sampling_batch_out_of_memory_names_batch_size(error: BaseException, tried: str) -> None:
    model = tiny_image_diffit(3).eval()
    _failing_forward(model, error, after=2)  # the first batch's two steps run, the second batch's first fails
    with pytest.raises(OutOfMemory) as caught:
        _sample_on(model)
    assert str(caught.value) == (
        f"batch_size: sampling a batch of 2 image(s) ran out of memory on cpu (it tried to allocate {tried}); "
        "lower the batch size (the images do not depend on it)"
    )
    assert caught.value.__cause__ is error and isinstance(caught.value, torch.OutOfMemoryError)
    _failing_forward(model, error)  # sample() on its own: its one batch is all of its seeds
    with pytest.raises(OutOfMemory, match=r"^seeds: sampling a batch of 3 image\(s\) ran out of memory on cpu .*; "
                       r"sample fewer seeds per call \(generate takes a batch_size\)$"):  # fmt: skip
        sample(model, sampler=sample_euler, sigmas=karras_sigmas(2, 0.002, 80.0), seeds=[0, 1, 2],
               labels=torch.arange(3))  # fmt: skip
    with pytest.raises(OutOfMemory, match=r"^batch_size: sampling a batch of 1 image\(s\) .*; one image does not fit"):
        _sample_on(model, batch_size=1)  # nothing smaller to advise


def test_all_images_that_do_not_fit_together_name_seeds_and_other_errors_pass_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_image_diffit(3).eval()
    images = _sample_on(model)
    cat = torch.cat

    def cat_failing_on_all_images(tensors: list[torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
        if len(tensors) == 3 and tensors[0].dtype == torch.uint8:  # generate's three batches of images, put together
            raise MemoryError("Unable to allocate 960 bytes for an array")
        return cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat_failing_on_all_images)
    with pytest.raises(OutOfMemory, match=r"^seeds: the 5 images of this call \(0.0 GiB as uint8\) do not fit in "
                       r"memory together \(it tried to allocate 960 bytes\); sample fewer seeds per call"):  # fmt: skip
        _sample_on(model)
    monkeypatch.setattr(torch, "cat", cat)
    assert torch.equal(_sample_on(model, batch_size=5), images)  # one batch or three: the same images
    for other in (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"), ValueError("out of memory")):
        broken = tiny_image_diffit(3).eval()
        _failing_forward(broken, other)
        with pytest.raises(type(other)) as caught:
            _sample_on(broken)
        assert caught.value is other  # not taken for a batch that is too large


@pytest.mark.parametrize(("error", "tried"), ALLOCATION_FAILURES)
def test_a_model_too_large_for_its_device_names_device(error: BaseException, tried: str) -> None:
    model = tiny_image_diffit(3)
    model.to = lambda *args, **kwargs: (_ for _ in ()).throw(error)  # the device's allocator refuses the weights
    with pytest.raises(OutOfMemory) as caught:
        to_device(model, "cpu")
    assert str(caught.value) == (
        f"device: ImageDiffiT (0.00 GiB of weights) does not fit in the free memory of cpu (it tried to allocate "
        f"{tried}); use a device with more free memory (or cpu)"
    )
    assert caught.value.__cause__ is error
    assert to_device(tiny_image_diffit(3), "cpu").time_embed is not None  # a model that fits moves as before


def test_sample_with_a_model_too_large_for_the_device_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    move = torch.nn.Module.to

    def refuse_backbones(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        if type(module).__name__ == "ImageDiffiT" and isinstance(args[0], torch.device):  # the move to --device
            raise ALLOCATION_FAILURES[0][0]
        return move(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", refuse_backbones)
    out = str(tmp_path / "g.png")
    result = runner.invoke(app, ["sample", "--n", "2", "--steps", "2", "--device", "cpu", "--out", out])
    assert result.exit_code == 2 and not (tmp_path / "g.png").exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device: ImageDiffiT (") and "20.00 GiB" in lines[0]


def test_a_preview_grid_out_of_memory_names_sample_every_not_the_training_batch(tmp_path: Path) -> None:
    writer, steps = preview_writer(tmp_path / "run"), []

    def preview(step: int, ema_model: torch.nn.Module) -> None:  # the steps fit, the grid does not
        steps.append(step)
        _failing_forward(ema_model, ALLOCATION_FAILURES[0][0])
        writer(step, ema_model)

    with pytest.raises(TrainingOutOfMemory) as caught:
        _toy_run(tmp_path / "run", 4, sample_every=2, on_sample=preview)
    assert str(caught.value) == (  # generate said batch_size: not the training's, which fitted
        "sample_every: the preview grid of step 2 ran out of memory on cpu (it tried to allocate 20.00 GiB); resume "
        f"from its latest checkpoint, {tmp_path / 'run' / 'ckpt-00000002'}, without preview grids (sample_every 0)"
    )
    assert caught.value.__cause__ is ALLOCATION_FAILURES[0][0] and steps == [2]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "ckpt-00000002"]  # no grid, whole or half


def test_orphaned_temporary_checkpoints_are_removed_at_the_next_save(tmp_path: Path) -> None:
    orphan = tmp_path / ".ckpt-00000002.tmp-99999"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"half")
    _toy_run(tmp_path, 2)
    assert not orphan.exists() and [p.name for p in checkpoint_dirs(tmp_path)] == ["ckpt-00000002"]


@pytest.mark.parametrize("damaged", ["model.safetensors", "rng.safetensors"])
def test_a_damaged_latest_checkpoint_is_passed_over_on_resume(tmp_path: Path, damaged: str) -> None:
    _toy_run(tmp_path, 4)
    latest = checkpoint_dirs(tmp_path)[-1]
    with open(latest / damaged, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"XXXX")
    events: list[dict] = []
    result = _toy_run(tmp_path, 6, resume=True, callback=events.append)
    assert result.step == 6
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and f"ckpt-00000004/{damaged} does not match its recorded sha256" in warnings[0]
    for ckpt in checkpoint_dirs(tmp_path):
        with open(ckpt / "ema.safetensors", "r+b") as f:
            f.write(b"XXXX")
    with pytest.raises(ValueError, match="no intact checkpoint in .*: the newest, ckpt-00000006"):
        _toy_run(tmp_path, 8, resume=True)


def test_a_resume_past_a_damaged_newer_checkpoint_keeps_the_checkpoints_it_writes(tmp_path: Path) -> None:
    _toy_run(tmp_path, 6, ckpt_every=2, seed=2)
    with open(tmp_path / "ckpt-00000006" / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"XXXX")
    # Resumed from ckpt-4: rotation to keep_last=1 counted the damaged ckpt-6 as the newest and deleted ckpt-5, the
    # checkpoint it had just written (the result named a folder that did not exist; the next resume fell back).
    result = _toy_run(tmp_path, 5, ckpt_every=1, keep_last=1, resume=True, seed=2)
    assert result.checkpoint == tmp_path / "ckpt-00000005" and result.checkpoint.is_dir()
    names = {p.name for p in checkpoint_dirs(tmp_path)}  # beside them, at most the best step's (always kept)
    assert {"ckpt-00000005", "ckpt-00000006"} <= names and "ckpt-00000004" not in names
    assert _toy_run(tmp_path, 7, ckpt_every=1, keep_last=1, resume=True, seed=2).step == 7  # from ckpt-5
    names = {p.name for p in checkpoint_dirs(tmp_path)}
    assert "ckpt-00000007" in names and not names & {"ckpt-00000005", "ckpt-00000006"}  # ckpt-6 rewritten, rotated


@pytest.mark.parametrize("state", ["{}", "[]", "{bad", '{"step": 4, "model": {}, "files": []}'])
def test_a_newest_checkpoint_with_a_damaged_state_json_is_passed_over(tmp_path: Path, state: str) -> None:
    _toy_run(tmp_path, 4)
    (checkpoint_dirs(tmp_path)[-1] / "state.json").write_text(state)  # KeyError / AttributeError before
    check_resume_data(tmp_path, "0" * 64)  # reads the newest readable state.json, as train will
    events: list[dict] = []
    assert _toy_run(tmp_path, 6, resume=True, callback=events.append).step == 6
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "ckpt-00000004: state.json" in warnings[0]


def test_sampling_refuses_a_checkpoint_file_that_does_not_match_its_recorded_hash(tmp_path: Path) -> None:
    _toy_run(tmp_path, 2)
    ema = checkpoint_dirs(tmp_path)[-1] / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-8:] = b"\xff" * 8  # weights that still parse, as NaN: sampled as black images before
    ema.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ema.safetensors does not match the sha256 its checkpoint's state.json"):
        load_model(tmp_path)


def test_a_resume_with_changed_arguments_says_which(tmp_path: Path) -> None:
    _toy_run(tmp_path, 2)
    events: list[dict] = []
    _toy_run(tmp_path, 4, resume=True, seed=5, grad_clip=0.5, callback=events.append)  # silent before
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == ["resumed with changed arguments: grad_clip 0.0 -> 0.5, seed 0 -> 5"]
    events.clear()
    _toy_run(tmp_path, 6, resume=True, seed=5, grad_clip=0.5, callback=events.append)  # steps may grow
    assert [e for e in events if e["event"] == "warning"] == []
    events.clear()
    more = {"resume": True, "seed": 5, "grad_clip": 0.5, "callback": events.append}
    _toy_run(tmp_path, 7, run_info={"data": {"flip": False}}, **more)  # the run so far recorded no data
    _toy_run(tmp_path, 8, run_info={"data": {"flip": True}}, **more)
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "resumed with changed arguments: data flip False -> True"
    ]
    events.clear()
    _toy_run(tmp_path, 3, run_info={"data": {"flip": True}}, **more)
    assert [e["message"] for e in events if e["event"] == "warning"] == ["the run is at step 8: steps=3 trains nothing"]


def test_a_streamed_run_resumed_with_other_ranks_or_workers_says_so(tmp_path: Path) -> None:
    # A stream's batches depend on its readers (ranks x workers): another count resumes on other batches.
    stream, held = training_data(None, memory_limit=0), training_data(None)
    assert (stream.kind, held.kind) == ("stream", "memory")
    assert "readers" not in held.describe(world_size=2, num_workers=2)  # RAM-held data resumes on any layout
    assert stream.describe(num_workers=0)["readers"] == stream.describe(num_workers=1)["readers"]  # one reader each
    events: list[dict] = []
    _toy_run(tmp_path, 2, run_info={"data": stream.describe(num_workers=0)})
    _toy_run(tmp_path, 4, resume=True, run_info={"data": stream.describe(num_workers=1)}, callback=events.append)
    assert [e for e in events if e["event"] == "warning"] == []
    _toy_run(tmp_path, 6, resume=True, run_info={"data": stream.describe(world_size=2, num_workers=2)},
             callback=events.append)  # fmt: skip
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "resumed with changed arguments: data readers 1 rank(s) x 1 reader(s) -> 2 rank(s) x 2 reader(s)"
    ]


def test_resumed_data_is_checked_against_the_newest_readable_record_and_that_of_diffit_0_1_0(tmp_path: Path) -> None:
    def checkpoint(run: str, step: int, state: str) -> Path:
        (tmp_path / run / f"ckpt-{step:08d}").mkdir(parents=True)
        (tmp_path / run / f"ckpt-{step:08d}" / "state.json").write_text(state)
        return tmp_path / run

    run = checkpoint("run", 2, json.dumps({"step": 2, "model": {}, "run": {"data": {"content_hash": "a" * 64}}}))
    checkpoint("run", 4, "{bad")  # the newest, damaged: passed over, as train passes it over
    check_resume_data(run, "a" * 64)
    with pytest.raises(ValueError, match=rf"^data is not the data the run in {run} was trained on \(content hash "
                       r"bbbbbbbbbbbb, run: aaaaaaaaaaaa\); resume with the same shards$"):  # fmt: skip
        check_resume_data(run, "b" * 64)
    old = checkpoint("old", 1, json.dumps({"step": 1, "model": {}, "args": {"data_content_hash": "c" * 64}}))
    check_resume_data(old, "c" * 64)
    with pytest.raises(ValueError, match=r"\(content hash bbbbbbbbbbbb, run: cccccccccccc\)"):
        check_resume_data(old, "b" * 64)
    edited = checkpoint("edited", 3, json.dumps({"step": 3, "model": {}, "run": {"data": {"content_hash": 1234}}}))
    with pytest.raises(ValueError, match=r"\(content hash bbbbbbbbbbbb, run: 1234\)"):  # TypeError: not subscriptable
        check_resume_data(edited, "b" * 64)
    with pytest.raises(ValueError, match=r"state.json lacks its step or model record$"):  # true was read as step 1
        read_state(checkpoint("bool", 5, json.dumps({"step": True, "model": {}})) / "ckpt-00000005")


def test_import_factory_follows_dotted_names_and_augment_is_refused_for_latent_data() -> None:
    assert import_factory("diffit.runs:TrainingData.batches") is TrainingData.batches
    with pytest.raises(ValueError, match=r"^model_factory 'diffit.runs:TrainingData.nope': 'diffit.runs' has no "
                       r"attribute 'TrainingData.nope'$"):  # fmt: skip
        import_factory("diffit.runs:TrainingData.nope")
    with pytest.raises(ValueError, match=r"^model_factory 'diffit.runs:VAE_FACTOR' is not callable$"):
        import_factory("diffit.runs:VAE_FACTOR")
    latent = TrainingData(urls=["l-000.tar"], latent=True, resolution=32, side=4, channels=4, num_classes=None,
                          count=None, content_hash=None, kind="stream", flip=False)  # fmt: skip
    with pytest.raises(ValueError, match="^augment is for image-space training only$"):
        build_backbone(latent, model="s2", augment=0.5)


def test_a_part_of_a_shard_set_is_counted_as_the_part(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((10, 4, 4), np.uint8))
    write_image_shards(array_source(str(tmp_path / "a.npy")), str(tmp_path / "s" / "s-%03d.tar"), max_count=4)
    open_ = lambda pattern: training_data(str(tmp_path / "s" / pattern), memory_limit=4 * 16)  # 4 images of 16 bytes
    whole, part = open_("s-{000..002}.tar"), open_("s-000.tar")
    assert (whole.count, whole.kind) == (10, "stream")  # 10 images of 16 bytes: more than the limit
    assert (part.count, part.kind) == (4, "memory")  # the set's 10 before, so the 4 that fit streamed
    assert (part.describe()["shards"], part.content_hash) == (1, whole.content_hash)


def test_flip_defaults_by_data_and_an_explicit_choice_reaches_the_batches(tmp_path: Path) -> None:
    """Mirroring is on by default for the user's data and off for the digits (not mirror-symmetric); ``flip=``
    overrides either default, and only then do the batches hold mirrored images."""
    np.save(tmp_path / "a.npy", np.arange(16, dtype=np.uint8).reshape(1, 4, 4).repeat(16, 0))  # left != right
    write_image_shards(array_source(str(tmp_path / "a.npy")), str(tmp_path / "s" / "s-%03d.tar"))
    url = str(tmp_path / "s" / "s-000.tar")
    assert [training_data(url).flip, training_data(url, flip=False).flip] == [True, False]
    assert [training_data(None).flip, training_data(None, flip=True).flip] == [False, True]
    plain, flipped = (next(training_data(url, flip=f).batches(batch_size=16, seed=0)(0))[0] for f in (False, True))
    image = plain[0]
    assert not torch.equal(image, image.flip(-1)) and all(torch.equal(img, image) for img in plain)
    mirrored = [torch.equal(img, image.flip(-1)) for img in flipped]
    assert 0 < sum(mirrored) < 16 and all(
        m or torch.equal(img, image) for m, img in zip(mirrored, flipped, strict=True)
    )


class NaNAtEnd(EDMObjective):
    def __init__(self, bad_from: int) -> None:
        super().__init__()
        self.bad_from, self.calls = bad_from, 0

    def loss(self, model, x0, y, draws):  # type: ignore[no-untyped-def]
        self.calls += 1
        out = super().loss(model, x0, y, draws)
        return out * float("nan") if self.calls >= self.bad_from else out


def test_a_run_another_process_is_writing_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    run, cli_run = tmp_path / "run", tmp_path / "cli"
    _toy_run(run, 2, log_every=1)
    cli_run.mkdir()
    log = (run / "log.jsonl").read_bytes()
    holder = subprocess.Popen(  # another job writing these runs: a requeued job beside a live one, say
        [sys.executable, "-c", "import contextlib, sys, time; from diffit.util import locked_folder\n"
         "with contextlib.ExitStack() as held:\n    for f in sys.argv[1:]: held.enter_context(locked_folder(f))\n"
         "    print('held', flush=True); time.sleep(60)", str(run), str(cli_run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=rf"^run_dir: {run} is in use by another process \(pid {holder.pid} on "):
            _toy_run(run, 4, resume=True, log_every=1)
        assert (run / "log.jsonl").read_bytes() == log  # not truncated, nothing added
        assert [c.name for c in checkpoint_dirs(run)] == ["ckpt-00000002"]
        result = runner.invoke(app, ["train", "--out", str(cli_run), "--steps", "1", "--batch-size", "8"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: --out: {cli_run} is in use by another process (pid {holder.pid} on ")
    finally:
        holder.kill()  # kill -9: the kernel drops its locks, no stale lock is left behind
        holder.wait()
    assert _toy_run(run, 4, resume=True).step == 4


def test_a_folder_that_cannot_be_locked_warns_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("diffit.util.files.fcntl.flock", no_locks)  # as on some network file systems
    with pytest.warns(UserWarning, match=r"^run_dir: cannot lock .*No locks available.*nothing keeps a second"):
        assert _toy_run(tmp_path / "run", 2).step == 2


def test_a_run_that_fails_at_once_leaves_no_folder_and_no_lock_behind(tmp_path: Path) -> None:
    model = tiny_image_diffit(3)
    _failing_forward(model, RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        _toy_run(tmp_path / "run", 2, model=model)
    assert list(tmp_path.iterdir()) == []


def test_a_run_ending_on_skipped_steps_still_writes_its_final_checkpoint(tmp_path: Path) -> None:
    result = _toy_run(tmp_path, 5, objective=NaNAtEnd(bad_from=4), ckpt_every=2)
    assert result.status == "completed" and result.skipped_steps == 2
    assert result.checkpoint is not None and result.checkpoint.name == "ckpt-00000005"
    assert json.loads((result.checkpoint / "state.json").read_text())["skipped_steps"] == 2


BAD = [
    # (command, arguments, what the one-line message must contain)
    ("train", ["--lr", "-1"], "--lr must be a finite number > 0"),
    ("train", ["--lr", "inf"], "--lr must be a finite number > 0"),
    ("train", ["--lr", "nan"], "--lr must be a finite number > 0"),
    ("train", ["--beta1", "2"], "--beta1/--beta2"),
    ("train", ["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    ("train", ["--micro-batch", "0"], "--micro-batch must be an integer >= 1"),
    ("train", ["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    ("train", ["--num-workers", "-1"], "--num-workers must be >= 0"),
    ("train", ["--ema", "1"], "--ema must be in [0, 1)"),
    ("train", ["--grad-clip", "-1"], "--grad-clip must be"),
    ("train", ["--label-dropout", "1.5"], "--label-dropout must be in [0, 1)"),
    ("train", ["--warmup", "-3"], "--warmup must be an integer >= 0"),
    ("train", ["--out", ""], "--out must be a path"),
    ("train", ["--out", "notes.txt/run"], "--out notes.txt/run: notes.txt is a file"),
    ("train", ["--device", "cuda"], "--device"),
    ("train", ["--device", "tpu9"], "--device: unknown device 'tpu9'"),
    ("train", ["--model-factory", "nope"], "--model-factory must be 'module:function'"),
    ("train", ["--augment", "0.5", "--latent", "--data", "x.tar"], "--data"),
    ("sample", ["--seeds", "0-99999999999"], "--seeds names 100000000000 values"),
    ("sample", ["--cfg", "nan"], "--cfg (guidance) must be a finite number"),
    ("sample", ["--cfg-channels", "5"], "--cfg-channels (guided) must be in [1, 1]"),
    ("sample", ["--cfg-schedule", "zigzag"], "--cfg-schedule (guidance) must be"),
    ("sample", ["--out", "x.jpg"], "--out must be a .png file, an .npz file or a directory"),
    ("sample", ["--out", ".png"], "--out .png: a .png or .npz file needs a name before its suffix"),  # a dir before
    ("sample", ["--out", "notes.txt/x.png"], "--out notes.txt/x.png: notes.txt is a file, not a directory"),
    ("sample", ["--out", "/proc/x.png"], "--out /proc/x.png: cannot create anything in /proc"),  # after sampling before
    ("sample", ["--class", "\u00b2"], "--class must be non-negative integers"),  # '²'.isdigit(): a traceback
    ("sample", ["--seeds", "0-\u0663"], "--seeds must be non-negative integers"),
    ("sample", ["--cfg", "1e39", "--class", "0"], "--cfg (guidance scale) must be a finite number >= 0 (float32)"),
    ("sample", ["--nfe", "1000000000"], "--nfe must be an integer in [1, 100000]"),  # StopIteration before
    ("sample", ["--n", "20000000"], "--n names 20000000 images, more than the 10000000"),
    ("sample", ["--out", "full"], "--out full exists and is not an empty directory"),
    ("sample", ["--device", "cuda:7"], "--device"),
    ("sample", ["--guidance-interval", "1,nan"], "--guidance-interval"),
    ("sample", ["--cfg", "2", "--guidance-interval", "100,200"], "--guidance-interval (guidance) [100, 200] holds"),
    ("sample", ["--cfg", "2", "--steps", "2", "--guidance-interval", "1,2"], "[1, 2] holds none of the 2 noise levels"),
    ("sample", ["--steps", "0"], "--steps must be an integer in [1, 100000]"),
    ("sample", ["--class", "12"], "--class must be ids in [0, 9]"),
    ("sample", ["--ckpt", "missing-run"], "--ckpt"),
    ("sample", ["--release-res", "300"], "--release-res must be one of (256, 512)"),
    ("train", ["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    ("train", ["--seed", "18446744073709551615"], "--seed must be an integer in [0, 2**63)"),
    ("train", ["--device", "meta"], "--device: diffit runs on cpu or cuda devices, got 'meta'"),
    ("train", ["--out", "/proc/run"], "--out /proc/run: cannot create anything in /proc"),
    ("eval", ["stats", "nothing.npz", "out.npz"], "nothing.npz"),
    ("eval", ["fid", "full", "missing.npz"], "REF: 'missing.npz' does not exist"),  # it said src:
    ("eval", ["fid", "full", "full", "--splits", "0"], "--splits must be >= 1, got 0"),
    ("eval", ["stats", "full", "out.npz", "--device", "foo"], "--device: unknown device 'foo'"),  # blamed the net
    ("eval", ["stats", "full", "out.npz", "--batch-size", "0"], "--batch-size"),
    ("data", ["shard", "full", "out/x-%03d.tar", "--res", "0"], "--res"),
    ("info", ["--res", "0"], "--res must be >= 1"),
    ("info", ["--model", "xl2", "--res", "100"], "multiple of 8"),
    ("info", ["--model", "giant"], "--model must be one of"),
    # Names longer than the file system takes (or whose .json protocol or temporary name would be): an OSError
    # traceback before, after the sampling or the statistics for sample and eval
    ("sample", ["--out", "n" * 251 + ".png"], "bytes is longer than the 255 its file system takes"),
    ("sample", ["--out", "n" * 256], "--out nnnn"),
    ("train", ["--out", "n" * 300], "--out nnnn"),
    ("eval", ["stats", "full", "n" * 256 + ".npz"], "OUT nnnn"),
    ("eval", ["stats", "full", "/proc/x.npz"], "OUT /proc/x.npz: cannot create anything in /proc"),
    ("eval", ["fid", "full", "full", "--json", "/proc/x.json"], "--json /proc/x.json: cannot create anything"),
    ("data", ["shard", "full", "o/" + "n" * 250 + "-%06d.tar"], "out_pattern o/nnnn"),  # it left o/ behind
    ("train", ["--data", "full"], "--data 'full': urls: shard 'full' is a folder, not a shard"),  # "does not exist"
    ("eval", ["stats", "images.npz", "images.npz"], "OUT: 'images.npz' holds arr_0, not statistics"),  # lost them
    # What typer itself refuses: a one-line error too, not its boxed panel
    ("train", ["--res", "abc"], "error: Invalid value for '--res': "),
    ("train", ["--unknown", "3"], "error: No such option: --unknown; see 'diffit train --help'"),
    ("sample", ["--nope"], "No such option: --nope (Possible options: --n, --nfe); see 'diffit sample --help'"),
    ("sample", ["--cfg"], "error: Option '--cfg' requires an argument"),
    ("sample", ["--n", "2", "extra"], "error: Got unexpected extra argument(s) (extra)"),
    ("info", ["--res", "1.5"], "error: Invalid value for '--res': "),
    ("eval", ["fid", "full"], "error: Missing argument 'ref'; see 'diffit eval fid --help'"),
    ("data", ["encode"], "error: Missing argument 'shards'; see 'diffit data encode --help'"),
    ("nope", [], "error: No such command 'nope'; see 'diffit --help'"),
]


@pytest.mark.parametrize(("command", "args", "message"), BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_bad_invocations_are_clean_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a directory")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "000000.png").write_bytes(b"an older image")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    extra = ["--steps", "1", "--batch-size", "4"] if command == "train" and "--batch-size" not in args else []
    res = runner.invoke(app, [command, *extra, *args])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert message in out and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, out
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_usage_errors_are_one_line_through_the_console_script_and_help_is_left_as_it_was(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("diffit")  # the entry point users run, not CliRunner's call of app
    proc = subprocess.run([str(script), "train", "--res", "abc"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("error: Invalid value for '--res': ") and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.rstrip().endswith("; see 'diffit train --help'")
    for words, command in ((["sample", "--n"], "sample"), (["data", "encode", "x", "y", "--vae"], "data encode")):
        missing = runner.invoke(app, words)  # an option missing its value: click gives no context to name it by
        assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1, missing.output
        assert missing.output.strip().endswith(f" {command} --help'"), missing.output
    helped = runner.invoke(app, ["sample", "--help"])
    assert helped.exit_code == 0 and "--cfg-channels" in helped.output
    bare = runner.invoke(app, ["data"])  # a group without its command still shows its help
    assert "shard" in bare.output and "encode" in bare.output and "error" not in bare.output


def test_every_cli_option_has_a_spelling_that_torchrun_passes_through() -> None:
    """torchrun parses the whole command line with argparse, abbreviations included: an option of ours that is a
    prefix of torchrun's (``--n`` of --nnodes, --nproc-per-node...) stops it with "ambiguous option", and one
    that is a unique prefix would be taken from us. Every parameter needs one spelling that reaches diffit."""
    import contextlib
    import io

    import typer
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()

    def passes(path: list[str], opt: str) -> bool:
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                ns = parser.parse_args(["--nproc-per-node", "2", "-m", "diffit_cli.main", *path, opt, "1"])
            except SystemExit:
                return False
        return ns.training_script_args == [*path, opt, "1"]

    def spellings(cmd: object, path: list[str]) -> list[tuple[list[str], list[str]]]:
        """(command path, the spellings of one meaning): an option's names, or a flag's --no- form."""
        if hasattr(cmd, "commands"):
            return [item for name, sub in cmd.commands.items() for item in spellings(sub, [*path, name])]
        names = [p.opts for p in cmd.params] + [p.secondary_opts for p in cmd.params if p.secondary_opts]
        return [(path, opts) for opts in names if any(o.startswith("--") for o in opts)]

    found = spellings(typer.main.get_command(app), [])
    assert len(found) > 50 and any(opts == ["--no-flip"] for _, opts in found)
    stopped = [(" ".join(path), opts) for path, opts in found if not any(passes(path, o) for o in opts)]
    assert stopped == []
    assert not passes(["sample"], "--n") and passes(["sample"], "--num-images")  # the case that needed an alias


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"sigma_data": float("nan")}, "^sigma_data must be a finite number > 0, got nan$"),
        ({"sigma_data": 0.0}, "^sigma_data must be a finite number > 0, got 0.0$"),
        ({"P_std": 0.0}, "^P_std must be a finite number > 0, got 0.0$"),
        ({"P_mean": float("inf")}, "^P_mean must be a finite number, got inf$"),
        ({"augment_p": 1.5}, "^augment_p must be in \\[0, 1\\], got 1.5$"),
        ({"rho": float("nan")}, "rho"),
    ],
)
def test_edm_objective_refuses_settings_that_would_train_on_nan(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EDMObjective(**settings)
