"""`diffit train` from the command line: argument errors before any work, and a latent run on encoded shards."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from diffit.data import array_source, encode_latents, write_image_shards
from diffit.nn import ImageDiffiT
from diffit.runs import IMAGE_PRESETS, preview_needs_vae
from diffit.train import TrainResult
from diffit_cli.common import refusing
from diffit_cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "xl9"], "--model must be one of tiny, cifar10, ffhq64"),
        (["--res", "32"], "--res 32 does not match the data's resolution 16"),
        (["--data", "/nonexistent/train-{000000..000003}.tar"], "--data"),
        (["--micro-batch", "3"], "--micro-batch must be a divisor of the per-rank batch 8, got 3"),
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--precision", "fp8"], "--precision must be 'fp32' or 'bf16'"),
        (["--latent"], "--data is required for latent training"),
        (["--vae", "sd-vae"], "--vae 'sd-vae' is for latent training only (latent=True)"),  # it went unused
    ],
)
def test_bad_arguments_exit_2_before_work(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["train", "--batch-size", "8", "--out", str(tmp_path / "run"), *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_a_vae_is_loaded_only_where_sample_grids_need_it() -> None:
    assert preview_needs_vae("sd-vae", latent=True, sample_every=500)
    with pytest.warns(UserWarning, match="^sample_every=500 writes no sample grids in latent training without a vae"):
        assert not preview_needs_vae(None, latent=True, sample_every=500)  # silent before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not preview_needs_vae(None, latent=True, sample_every=0)
        assert not preview_needs_vae(None, latent=False, sample_every=500)
    with pytest.warns(UserWarning, match="^vae 'sd-vae' is unused: sample_every=0 writes no sample grids$"):
        assert not preview_needs_vae("sd-vae", latent=True, sample_every=0)
    with pytest.raises(ValueError, match="^vae 'sd-vae' is for latent training only"):
        preview_needs_vae("sd-vae", latent=False, sample_every=0)  # image space: a mistake however it samples


def test_a_batch_that_does_not_fit_in_memory_is_one_line_naming_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forward(self: object, *args: object, **kwargs: object) -> None:  # what the CPU allocator raises
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(ImageDiffiT, "forward", forward)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--batch-size", "8", "--steps", "1", "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (  # one line: no traceback, no progress bar left at step 0
        "error: --batch-size and --micro-batch: a step of 8 samples per process in micro-batches of 8 ran out of "
        "memory on cpu (it tried to allocate 68719476736 bytes); lower the batch size, or accumulate gradients over "
        "smaller micro-batches (the same step in less memory)"
    )
    assert not run.exists()  # nothing written, not even the run directory


def test_batch_must_divide_over_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    res = runner.invoke(app, ["train", "--batch-size", "8", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--batch-size must be divisible by the world size 3" in res.output


@pytest.mark.slow
def test_latent_training_on_encoded_shards(tmp_path: Path, tiny_vae: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(8) % 4)
    write_image_shards(array_source(str(tmp_path / "a.npz")), str(tmp_path / "img" / "i-%03d.tar"), max_count=4)
    encode_latents(
        str(tmp_path / "img" / "i-{000..001}.tar"),
        str(tmp_path / "lat" / "l-%03d.tar"),
        vae=tiny_vae,
        resolution=8,
    )
    data = str(tmp_path / "lat" / "l-{000..001}.tar")
    mismatch = runner.invoke(app, ["train", "--latent", "--data", data, "--res", "16", "--out", str(tmp_path / "x")])
    assert mismatch.exit_code == 2 and "does not match the data's resolution 8" in mismatch.output
    assert len(mismatch.output.strip().splitlines()) == 1  # without the warning that no --vae means no grids
    for wrong, hint in (
        ([], "these are latent shards; train with latent=True (--latent)"),
        (["--latent", "--data", str(tmp_path / "img" / "i-000.tar")], "these are image shards"),
    ):
        res = runner.invoke(app, ["train", "--data", data, *wrong, "--out", str(tmp_path / "x")])  # last --data wins
        assert res.exit_code == 2 and hint in " ".join(res.output.split()), res.output  # fmt: skip
    assert not (tmp_path / "x").exists()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--latent",
            "--data",
            data,
            "--model",
            "s2",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--ckpt-every",
            "2",
            "--sample-every",
            "2",
            "--vae",
            tiny_vae,
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "samples-00000002.png").is_file()  # the EMA grid, decoded by the VAE
    state = json.loads((out / "ckpt-00000002" / "state.json").read_text())
    assert state["model"]["class"] == "LatentDiffiT" and state["model"]["config"]["input_size"] == 4
    assert state["model"]["config"]["num_classes"] == 4
    again = runner.invoke(
        app,
        ["train", "--latent", "--data", data, "--model", "s2", "--steps", "2", "--batch-size", "4", "--out", str(out)],
    )
    assert again.exit_code == 2 and "already holds checkpoints" in again.output
    more = ["--resume", "--steps", "3", "--num-workers", "2", "--sample-every", "0"]  # a stream of 2 readers, not 1
    resumed = runner.invoke(app, ["train", "--latent", "--data", data, "--model", "s2", "--batch-size", "4", "--out",
                                  str(out), *more])  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    said = " ".join(w for w in resumed.output.split() if not w.startswith("train.py:"))  # rich's log column
    assert "changed arguments: data readers 1 rank(s) x 1 reader(s) -> 1 rank(s) x 2 reader(s)" in said, said
    part = str(tmp_path / "lat" / "l-000.tar")  # a part of the set: its dataset.json and content hash, other batches
    resumed = runner.invoke(app, ["train", "--latent", "--data", part, "--model", "s2", "--batch-size", "4", "--out",
                                  str(out), *more[:1], "--steps", "4", *more[3:]])  # fmt: skip
    said = " ".join(w for w in resumed.output.split() if not w.startswith("train.py:"))
    assert resumed.exit_code == 0 and "changed arguments: data shards 2 -> 1" in said, said


def test_unconditional_image_shards_train_an_unconditional_model(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)  # no labels: unconditional data
    write_image_shards(array_source(str(tmp_path / "a.npy")), str(tmp_path / "img" / "i-%03d.tar"))
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "img" / "i-000.tar"), "--model", "tiny", "--res", "16", "--steps", "2",
            "--batch-size", "4", "--sample-every", "2", "--out", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "ckpt-00000002" / "state.json").read_text())["model"]["config"]
    assert config["num_classes"] is None and config["in_channels"] == 3 and config["resolution"] == 16
    assert (out / "samples-00000002.png").is_file()


def test_resume_refuses_other_data(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--out", str(out)])
    assert first.exit_code == 0, first.output
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "other.npz", images=images, labels=np.arange(8) % 10)
    write_image_shards(array_source(str(tmp_path / "other.npz")), str(tmp_path / "o" / "o-%03d.tar"))
    args = ["train", "--steps", "2", "--batch-size", "4", "--out", str(out), "--resume"]
    other = runner.invoke(app, [*args, "--data", str(tmp_path / "o" / "o-000.tar")])
    assert other.exit_code == 2 and "is not the data the run" in " ".join(other.output.split())
    same = runner.invoke(app, [*args, "--sample-every", "0"])
    assert same.exit_code == 0, same.output


def test_same_seed_gives_bit_identical_runs(tmp_path: Path) -> None:
    """--seed fixes everything, the initial weights included."""
    from safetensors.torch import load_file

    for name in ("a", "b"):
        args = ["train", "--steps", "2", "--batch-size", "4", "--sample-every", "0", "--out", str(tmp_path / name)]
        assert runner.invoke(app, [*args, "--seed", "7"]).exit_code == 0
    a = load_file(str(tmp_path / "a" / "ckpt-00000002" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "ckpt-00000002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_option_reaches_train_with_its_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each option set away from its default arrives in ``diffit.train.train`` as given, and the initial weights are
    a function of --seed (a dropped option would train silently with its default)."""
    import diffit_cli.train as cli_train

    calls: list[dict] = []

    def record(**kwargs: object) -> TrainResult:
        calls.append(kwargs)
        return TrainResult(step=int(kwargs["steps"]), status="completed", checkpoint=None, skipped_steps=0)

    monkeypatch.setattr(cli_train, "train", record)
    expected = dict(
        steps=9, batch_size=8, micro_batch=4, lr=3e-4, warmup=7, betas=(0.8, 0.99), weight_decay=0.01, ema=0.99,
        grad_clip=2.0, precision="bf16", seed=5, ckpt_every=3, keep_last=2, log_every=4, sample_every=0,
        label_dropout=0.2, max_bad_steps=3, compile=True, guard_updates=False, resume=False,
        run_dir=tmp_path / "run",
    )  # fmt: skip
    options = {"--beta1": 0.8, "--beta2": 0.99, "--augment": 0.15, "--out": tmp_path / "run"}
    options |= {f"--{k.replace('_', '-')}": v for k, v in expected.items() if type(v) in (int, float, str)}
    args = [str(v) for item in options.items() for v in item] + ["--compile", "--no-guard-updates"]
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    assert {k: calls[0][k] for k in expected} == expected and calls[0]["objective"].augment_p == 0.15
    assert runner.invoke(app, ["train", *args[:-2], "--compile-blocks", "--out", str(tmp_path / "b")]).exit_code == 0
    assert calls[-1]["compile"] == "blocks"
    both = runner.invoke(app, ["train", "--compile", "--compile-blocks", "--out", str(tmp_path / "c")])
    assert both.exit_code == 2 and "--compile and --compile-blocks: give one of them" in both.output
    assert len(calls) == 2 and not (tmp_path / "c").exists()
    for i, seed in enumerate((5, 5, 6)):
        base = ["train", "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--seed", str(seed)]
        assert runner.invoke(app, [*base, "--out", str(tmp_path / str(i))]).exit_code == 0
    first, same, other = (c["model"].state_dict() for c in calls[-3:])
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_warnings_of_the_checks_are_shown_only_when_nothing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))
    with refusing(hold_warnings=True):
        warnings.warn("vae 'x' is unused", UserWarning, stacklevel=1)
        assert shown == []  # held until the checks are done
    assert shown == ["vae 'x' is unused"]
    shown.clear()
    with pytest.raises(typer.Exit) as caught, refusing(hold_warnings=True):
        warnings.warn("sample_every=500 writes no grids", UserWarning, stacklevel=1)
        raise ValueError("data: does not exist")
    assert caught.value.exit_code == 2 and shown == []  # the refusal is the invocation's one line


def test_a_model_too_large_for_memory_is_one_line_naming_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tiny(**kwargs: object) -> None:  # what building a 10^12-class label embedding raised: a traceback
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 512000000000512 bytes.")

    monkeypatch.setitem(IMAGE_PRESETS, "tiny", tiny)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--batch-size", "4", "--steps", "1", "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        "error: --model tiny: a model for the data (16x16, 1 channel(s), 10 classes, as its dataset.json says) does "
        "not fit in memory (it tried to allocate 512000000000512 bytes); choose a smaller model, or check the "
        "data's dataset.json"
    )
    assert not run.exists()
