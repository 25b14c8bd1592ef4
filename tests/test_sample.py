"""Generation and `diffit sample`: seed invariance, output formats, protocol record, release loading, errors."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_two_ranks, tiny_image_diffit
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffit.checkpoint import save_weights
from diffit.diffusion import sample_dpmpp_2m, sample_edm_stochastic
from diffit.generate import (
    Guidance,
    class_labels,
    default_sigmas,
    generate,
    guided_denoiser,
    make_grid,
    random_labels,
    sample,
    sampling_sigmas,
    save_images,
    to_uint8,
)
from diffit.nn import ImageDiffiT, LatentDiffiT
from diffit.objectives import EDMObjective
from diffit_cli.main import app

runner = CliRunner()


def tiny_image_model(num_classes: int | None = 3) -> ImageDiffiT:
    model = tiny_image_diffit(num_classes)
    with torch.no_grad():  # a non-zero output head, so that samples depend on the weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(path, tiny_image_model(), extra_metadata={"diffit.weights": "ema"})
    return path


@pytest.mark.parametrize("sampler", [sample_edm_stochastic, sample_dpmpp_2m])
def test_each_image_depends_on_its_seed_only(sampler: object) -> None:
    model, seeds = tiny_image_model(), [5, 11, 42]
    labels = random_labels(seeds, 3)
    sigmas = default_sigmas(model, 4)
    kwargs = {"S_churn": 10.0} if sampler is sample_edm_stochastic else {}
    guidance = Guidance(scale=2.0)
    together = sample(
        model, sampler=sampler, sigmas=sigmas, seeds=seeds, labels=labels, guidance=guidance, sampler_kwargs=kwargs
    )
    for i, s in enumerate(seeds):
        alone = sample(
            model,
            sampler=sampler,
            sigmas=sigmas,
            seeds=[s],
            labels=labels[i : i + 1],
            guidance=guidance,
            sampler_kwargs=kwargs,
        )
        # Equal up to float rounding (batched kernels may sum in another order).
        torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=1e-4)
    assert random_labels([5], 3)[0] == labels[0]


@pytest.mark.parametrize(
    ("seeds", "labels", "match"),
    [
        ([], None, "seeds must be a non-empty sequence of integers, got \\[\\]"),
        ([0, -1], None, "seeds must be integers in \\[0, 2\\*\\*64\\), got -1"),  # torch: -1 is 2**64 - 1
        ([0, 2**64], None, "got 18446744073709551616"),
        ([True], None, "got True"),
        ([0, 1], torch.tensor([0, 1, 2]), "labels must hold one class id per seed \\(2\\), got 3"),
        ([0, 1], torch.tensor([0]), "labels must hold one class id per seed \\(2\\), got 1"),
    ],
)
def test_generate_refuses_seeds_that_collide_and_labels_that_do_not_fit(
    seeds: object, labels: torch.Tensor | None, match: str
) -> None:
    model = tiny_image_model()
    with pytest.raises(ValueError, match=match):
        generate(model, sampler=sample_dpmpp_2m, sigmas=default_sigmas(model, 2), seeds=seeds, labels=labels)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [  # each was a torch or Python traceback (or, for float labels, an embedding's 'indices' error)
        ({"sampler": "heun"}, r"^sampler must be a sampler function such as diffit.diffusion.sample_heun"),
        ({"sigmas": [10.0, 0.0]}, r"^sigmas must be a 1-D tensor, got list$"),  # "'list' has no attribute 'to'"
        ({"sigmas": torch.tensor([0.0, 10.0])}, r"^sigmas must end with 0"),
        ({"labels": torch.tensor([0.0, 1.0])}, r"^labels must be a 1-D int64 tensor .*, got torch.float32 \(2,\)$"),
        ({"labels": torch.tensor([[0], [1]])}, r"^labels must be a 1-D int64 tensor .*, got torch.int64 \(2, 1\)$"),
        ({"labels": [0, 1]}, r"^labels must be a 1-D int64 tensor of class ids, one per seed, got list$"),
        ({"labels": torch.tensor([0, 5])}, r"^labels must be class ids in \[0, 2\], got \[0, 5\]$"),
        ({"batch_size": 1.5}, r"^batch_size must be an integer >= 1, got 1.5$"),
        ({"model": object()}, r"^model object is a object, not a torch.nn.Module"),  # AttributeError: parameters
    ],
)
def test_generate_names_a_bad_argument_before_any_work_also_without_the_type_checks(kwargs: dict, match: str) -> None:
    model = tiny_image_model()
    args = dict(sampler=sample_dpmpp_2m, sigmas=default_sigmas(model, 2), seeds=[0, 1], labels=torch.tensor([0, 1]))
    call = {**args, **kwargs}
    with pytest.raises(ValueError, match=match):
        inspect.unwrap(generate)(call.pop("model", model), **call)
    if "batch_size" not in kwargs and "model" not in kwargs:  # sample() is checked the same way
        with pytest.raises(ValueError, match=match):
            inspect.unwrap(sample)(model, **call)
    assert torch.equal(generate(model, **{**args, "labels": args["labels"].int()}), generate(model, **args))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": "2"}, r"^scale \(guidance\) must be a finite number >= 0, got '2'$"),  # math's TypeError before
        ({"scale": 2, "channels": 1.5}, r"^channels \(guided\) must be an integer >= 1, got 1.5$"),  # accepted
        ({"scale": 2, "interval": (1,)}, r"^interval \(guidance\) must be a pair of sigmas \(lo, hi\), got \(1,\)$"),
    ],
)
def test_guidance_settings_of_the_wrong_type_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        inspect.unwrap(Guidance.__init__)(Guidance.__new__(Guidance), **kwargs)


def test_guided_denoiser_applies_the_scale_and_channels_it_is_given() -> None:
    """D = D_u + s (D_c - D_u) on the first ``channels`` channels and D_c on the rest, for scales below 1 too
    (s = 0 is the unconditional model, the null class)."""
    torch.manual_seed(0)
    model = ImageDiffiT(resolution=8, in_channels=2, channels=(8, 16), blocks_per_stage=(1, 1), window=4,
                        num_heads=2, time_dim=16, num_classes=3).eval()  # fmt: skip
    with torch.no_grad():
        model.head_conv.weight.normal_(0, 0.1)
    x, sigma, labels = torch.randn(2, 2, 8, 8), torch.tensor([0.7, 2.0]), torch.tensor([0, 2])
    base = EDMObjective().denoiser(model)
    cond, uncond = base(x, sigma, y=labels), base(x, sigma, y=torch.full_like(labels, 3))
    for scale, channels in ((3.0, 1), (0.5, None), (0.0, None)):
        guided = guided_denoiser(model, labels, Guidance(scale=scale, channels=channels), EDMObjective())(x, sigma)
        k = channels or 2
        torch.testing.assert_close(guided[:, :k], uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k]))
        torch.testing.assert_close(guided[:, k:], cond[:, k:])


def test_make_grid_tiles_images_row_by_row_in_nrow_columns_between_black_padding() -> None:
    images = torch.arange(1, 7, dtype=torch.uint8).view(6, 1, 1, 1) * torch.ones(1, 2, 2, 1, dtype=torch.uint8)
    grid = make_grid(images, nrow=2, pad=1)  # 3 rows of 2
    assert grid.shape == (3 * 3 + 1, 2 * 3 + 1, 1) and grid.sum() == 4 * sum(range(1, 7))  # padding stays 0
    for i in range(6):
        r, c = divmod(i, 2)
        assert (grid[1 + 3 * r : 3 + 3 * r, 1 + 3 * c : 3 + 3 * c] == i + 1).all()
    assert make_grid(images, pad=0).shape == (2 * 2, 3 * 2, 1)  # no nrow: ceil(sqrt(6)) = 3 columns


def test_grids_and_class_lists_refuse_what_they_would_silently_change() -> None:
    images = torch.zeros(4, 2, 2, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^nrow must be an integer >= 1, got 0$"):  # a square grid before
        make_grid(images, nrow=0)
    with pytest.raises(ValueError, match=r"^images must be uint8 \(b, h, w, c\), got torch.float32"):  # all black
        inspect.unwrap(make_grid)(images.float(), nrow=2)
    with pytest.raises(ValueError, match=r"^classes must be integer ids, got \[1.5\]$"):  # truncated to 1 before
        inspect.unwrap(class_labels)([0, 1], 3, [1.5])
    with pytest.raises(ValueError, match=r"^images must be \(B, C, H, W\), got shape \(1, 8, 8\)$"):  # permute()
        inspect.unwrap(to_uint8)(torch.zeros(1, 8, 8))


def test_seeds_of_other_types_are_refused_also_without_the_type_checks() -> None:
    code = (
        "import numpy as np\nfrom diffit.diffusion import per_sample_noise\n"
        "assert per_sample_noise([np.int64(3)], (2,))().shape == (1, 2)\n"
        "for seeds in ('01', [0.9], [0, None]):\n"
        "    try:\n        per_sample_noise(seeds, (2,))\n    except ValueError as e:\n        print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DIFFIT_TYPECHECK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.splitlines() == [
        "seeds must be a non-empty sequence of integers, got '01'",
        "seeds must be integers in [0, 2**64), got 0.9",
        "seeds must be integers in [0, 2**64), got None",
    ], out.stderr


def test_generate_refuses_images_that_are_not_finite_instead_of_painting_them_black() -> None:
    model = tiny_image_model(None)
    with torch.no_grad():
        model.head_conv.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"^model: the images of 3 seed\(s\) hold NaN or inf \(first: seed 7\)"):
        generate(model, sampler=sample_dpmpp_2m, sigmas=default_sigmas(model, 2), seeds=[7, 8, 9], batch_size=2)


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.rand(2, 4, 4, 1), {}, "images must be non-empty uint8"),  # a float image became a black PNG
        (torch.zeros(0, 4, 4, 1, dtype=torch.uint8), {}, "images must be non-empty uint8"),
        (torch.zeros(2, 4, 4, 1, dtype=torch.uint8), {"labels": torch.tensor([1])}, "labels must hold one class id"),
        (torch.zeros(2, 4, 4, 1, dtype=torch.uint8), {"protocol": {"loss": float("nan")}}, "protocol: cannot be"),
        (torch.zeros(2, 4, 4, 1, dtype=torch.uint8), {"protocol": {"x": object()}}, "protocol: cannot be"),
    ],
)
def test_save_images_refuses_what_it_cannot_write_whole_and_writes_nothing(
    tmp_path: Path, images: torch.Tensor, kwargs: dict, match: str
) -> None:
    for out in ("grid.png", "set.npz", "folder"):
        with pytest.raises(ValueError, match=match):  # unwrapped: as users run it, without the type checks
            inspect.unwrap(save_images)(images, tmp_path / out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_uint8_and_grid_layout() -> None:
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]
    grid = make_grid(torch.full((3, 2, 2, 1), 7, dtype=torch.uint8), nrow=2, pad=1)
    assert grid.shape == (7, 7, 1) and grid[1, 1, 0] == 7 and grid[0, 0, 0] == 0


def test_guidance_rejects_what_does_not_apply() -> None:
    with pytest.raises(ValueError, match="labels must be class ids in \\[0, 2\\]"):
        sample(
            tiny_image_model(),
            sampler=sample_dpmpp_2m,
            sigmas=default_sigmas(tiny_image_model(), 2),
            seeds=[0],
            labels=torch.tensor([3]),
        )
    with pytest.raises(ValueError, match="unconditional"):
        sample(
            tiny_image_model(None),
            sampler=sample_dpmpp_2m,
            sigmas=default_sigmas(tiny_image_model(), 2),
            seeds=[0],
            labels=None,
            guidance=Guidance(scale=2.0),
        )


def test_guidance_settings_scale_1_leaves_unused_are_named_in_a_warning_and_cost_nothing() -> None:
    model, sigmas, labels = tiny_image_model(), default_sigmas(tiny_image_model(), 3), torch.tensor([0, 2])
    nfe: list[int] = []

    def run(guidance: Guidance) -> torch.Tensor:
        return sample(model, sampler=sample_dpmpp_2m, sigmas=sigmas, seeds=[1, 2], labels=labels, guidance=guidance,
                      callback=lambda s: nfe.append(s["nfe"]))  # fmt: skip

    plain = run(Guidance())
    unused = "^guidance settings unused at scale 1 \\(no guidance\\): channels=1, interval=\\(0.3, 5.0\\), "
    with pytest.warns(UserWarning, match=unused + "schedule='power-cosine'$"):
        ignored = run(Guidance(channels=1, interval=(0.3, 5.0), schedule="power-cosine"))
    assert torch.equal(ignored, plain) and nfe[-1] == nfe[2] == 3  # power-cosine at 1 ran both passes before
    with pytest.warns(UserWarning, match="channels=1$"):  # an unconditional model: the same words
        guided_denoiser(tiny_image_model(None), None, Guidance(channels=1))


@pytest.mark.parametrize("interval", [(100.0, 200.0), (1e-4, 1e-3), (5.0, 6.0)])  # above, below, between levels
def test_a_guidance_interval_that_holds_no_sampled_noise_level_is_refused(interval: tuple[float, float]) -> None:
    model = tiny_image_model()
    sigmas = default_sigmas(model, 3)  # 80, 2.5, 0.002, 0: [5, 6] falls between two of them
    guided = Guidance(scale=2.0, interval=interval)
    match = f"^interval \\(guidance\\) \\[{interval[0]:g}, {interval[1]:g}\\] holds none of the 3 noise levels sampled"
    for call in (generate, sample):  # unwrapped: as users run them, without the type checks
        with pytest.raises(ValueError, match=match):
            inspect.unwrap(call)(model, sampler=sample_dpmpp_2m, sigmas=sigmas, seeds=[0], labels=torch.tensor([1]),
                                 guidance=guided)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        sampling_sigmas(model, 3, sampler="dpmpp_2m", guidance=guided)
    for fine in (Guidance(scale=2.0, interval=(0.002, 0.002)), Guidance(interval=interval)):  # one level; no guidance
        assert torch.equal(sampling_sigmas(model, 3, sampler="dpmpp_2m", guidance=fine)[0], sigmas)


def test_cli_png_npz_dir_and_protocol(tmp_path: Path, ckpt: Path) -> None:
    args = ["sample", "--ckpt", str(ckpt), "--steps", "3", "--seeds", "0-5", "--batch-size", "4", "--class", "0-2"]
    npz = tmp_path / "s.npz"
    res = runner.invoke(app, [*args, "--out", str(npz)])
    assert res.exit_code == 0, res.output
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 1, 2, 0, 1, 2]
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["sampler"] == "heun" and record["steps"] == 3 and record["nfe_per_image"] == 5
    assert record["weights"] == "ema" and record["count"] == 6 and len(record["checkpoint"]["sha256"]) == 64
    # The same seeds in other batches and formats give the same pixels.
    res = runner.invoke(
        app, [*args[:-4], "--seeds", "3-5", "--batch-size", "1", "--class", "0-2", "--out", str(tmp_path / "pngs")]
    )
    assert res.exit_code == 0, res.output
    from PIL import Image

    third = np.asarray(Image.open(tmp_path / "pngs" / "000000.png"))
    assert np.abs(third.astype(int) - data["arr_0"][3, ..., 0]).max() <= 1  # float rounding at most
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "g.png")]).exit_code == 0
    assert (tmp_path / "g.png").is_file() and (tmp_path / "g.json").is_file()


def test_cli_raw_samples_the_raw_weights_of_a_training_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "ckpt-00000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    ema, raw = tiny_image_model(), tiny_image_model()
    with torch.no_grad():
        for p in raw.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_weights(ckpt / "ema.safetensors", ema, extra_metadata={"diffit.weights": "ema"})
    save_weights(ckpt / "model.safetensors", raw, extra_metadata={"diffit.weights": "raw"})
    pixels = {}
    for flag, weights, name in (([], "ema", "ema.safetensors"), (["--raw"], "raw", "model.safetensors")):
        out = tmp_path / f"{weights}.npz"
        args = ["sample", "--ckpt", str(tmp_path / "run"), "--steps", "2", "--n", "2", *flag, "--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["weights"] == weights and record["checkpoint"]["path"] == str(ckpt / name)
        pixels[weights] = np.load(out)["arr_0"]
    assert not np.array_equal(pixels["ema"], pixels["raw"])


def test_cli_guided_sampling_counts_both_passes(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "g.npz"
    res = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(ckpt),
            "--steps",
            "3",
            "--n",
            "2",
            "--cfg",
            "2",
            "--guidance-interval",
            "0.1,5",
            "--sampler",
            "euler",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    sigmas = default_sigmas(tiny_image_model(), 3)[:-1]
    inside = sum(1 for s in sigmas.tolist() if 0.1 <= s <= 5)
    assert json.loads(out.with_suffix(".json").read_text())["nfe_per_image"] == 3 + inside


def test_cli_names_guidance_settings_that_do_nothing_once_on_one_line(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(ckpt), "--steps", "2", "--n", "3", "--batch-size", "1", "--out", str(out)]
    res = runner.invoke(app, [*args, "--cfg-channels", "1", "--guidance-interval", "0.3,5"])
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: guidance settings unused at scale 1 (no guidance): channels=1, interval=(0.3, 5.0)"]
    assert json.loads(out.with_suffix(".json").read_text())["nfe_per_image"] == 3  # 2 Heun steps, unguided


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "/nonexistent/ckpt.safetensors"], "checkpoint not found"),
        (["--class", "7"], "--class must be ids in [0, 2]"),
        (["--out", "/nonexistent/dir/s.png"], "does not exist"),
        (["--steps", "0"], "--steps must be an integer in [1, 100000]"),
        (["--seeds", "5-3"], "--seeds is empty"),
        (["--seeds", "a-b"], "--seeds must be"),
        (["--sampler", "rk45"], "--sampler must be one of"),
        (["--cfg", "-1"], "--cfg (guidance) must be a finite number >= 0"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, ckpt: Path, extra: list[str], message: str) -> None:
    base = ["sample", "--ckpt", str(ckpt), "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.png")]
    res = runner.invoke(app, [*base, *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("out", ["x.png", "x.npz", "images"])
def test_cli_a_batch_out_of_memory_is_one_line_naming_batch_size_and_writes_nothing(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    def forward(self: object, *args: object, **kwargs: object) -> None:  # what the CPU allocator raises
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(ImageDiffiT, "forward", forward)
    base = ["sample", "--ckpt", str(ckpt), "--n", "6", "--batch-size", "4", "--steps", "2", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / out)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (  # one line: no traceback, no progress bar left at step 0
        "error: --batch-size: sampling a batch of 4 image(s) ran out of memory on cpu (it tried to allocate "
        "68719476736 bytes); lower the batch size (the images do not depend on it)"
    )
    res = runner.invoke(app, [*base, "--schedule", "optimized", "--out", str(tmp_path / out)])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith(
        "error: --schedule: fitting the optimized schedule to the model (32 starts in one batch) ran out of memory"
    )
    assert list(tmp_path.iterdir()) == []  # no images, no protocol, no temporary file


def test_cli_other_runtime_errors_while_sampling_are_not_taken_for_memory(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forward(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)")

    monkeypatch.setattr(ImageDiffiT, "forward", forward)
    res = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "2", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError) and "mat1 and mat2" in str(res.exception)
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_a_file_that_is_no_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bogus))
    res = runner.invoke(app, ["sample", "--ckpt", str(bogus), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "not a DiffiT release checkpoint" in res.output


def test_cli_samples_a_release_layout_latent_checkpoint(tmp_path: Path, tiny_vae: str) -> None:
    """A bare state dict with the authors' key layout, decoded by a tiny random AutoencoderKL, offline."""
    torch.manual_seed(0)
    latent = LatentDiffiT(
        input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3
    )
    release = tmp_path / "diffit_256.safetensors"
    save_file({k: v.contiguous() for k, v in latent.state_dict().items()}, str(release))
    out = tmp_path / "latent.npz"
    res = runner.invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(release),
            "--vae",
            tiny_vae,
            "--steps",
            "4",
            "--n",
            "2",
            "--cfg",
            "4.4",
            "--cfg-schedule",
            "power-cosine",
            "--cfg-channels",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    images = np.load(out)["arr_0"]
    assert images.shape == (2, 8, 8, 3)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sampler"] == "ddpm" and record["checkpoint"]["kind"] == "release"
    assert record["guidance"] == {"scale": 4.4, "schedule": "power-cosine", "channels": 3, "interval": None}


def test_two_ranks_split_seeds_and_gather_in_order(tmp_path: Path, ckpt: Path) -> None:
    """Seeds are split over 2 gloo processes and gathered in seed order: the same pixels as one process."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, torch\n"
        "from diffit.checkpoint import load_weights\n"
        "from diffit.diffusion import sample_heun\n"
        "from diffit.distributed import init_distributed, shutdown\n"
        "from diffit.generate import default_sigmas, generate\n"
        "dist = init_distributed('cpu')\n"
        f"model, _ = load_weights({str(ckpt)!r})\n"
        "images = generate(model, sampler=sample_heun, sigmas=default_sigmas(model, 3), seeds=[7, 8, 9, 10, 11],\n"
        "                  labels=torch.tensor([0, 1, 2, 0, 1]), batch_size=2, dist=dist)\n"
        f"torch.save(images, {str(tmp_path)!r} + f'/rank{{dist.rank}}.pt')\n"
        "shutdown(dist)\n"
    )
    run_two_ranks(script)
    from diffit.checkpoint import load_weights
    from diffit.diffusion import sample_heun
    from diffit.generate import generate

    model, _ = load_weights(ckpt)
    single = generate(model, sampler=sample_heun, sigmas=default_sigmas(model, 3), seeds=[7, 8, 9, 10, 11],
                      labels=torch.tensor([0, 1, 2, 0, 1]), batch_size=5)  # fmt: skip
    for r in range(2):
        gathered = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert gathered.shape == single.shape == (5, 8, 8, 1)
        assert (gathered.int() - single.int()).abs().max() <= 1  # float rounding of other batch shapes at most


def test_generate_gives_each_batch_the_labels_of_its_own_seeds() -> None:
    """Labels follow their seeds into every batch: batch b of size k is conditioned on labels[b k : b k + k]."""
    model, seen = tiny_image_model(), []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[2].tolist()))
    labels = torch.tensor([2, 0, 1, 1, 2])
    try:
        generate(model, sampler=sample_dpmpp_2m, sigmas=default_sigmas(model, 1), seeds=[3, 4, 5, 6, 7],
                 labels=labels, batch_size=2)  # fmt: skip
    finally:
        hook.remove()
    assert seen == [[2, 0], [1, 1], [2]]  # one step of dpmpp_2m: one evaluation per batch


def test_a_labelled_png_grid_has_10_columns_and_is_upscaled_to_128_pixels_an_image(tmp_path: Path) -> None:
    from PIL import Image

    images = torch.randint(0, 256, (20, 8, 8, 1), dtype=torch.uint8)
    save_images(images, tmp_path / "labelled.png", labels=torch.arange(20) % 10)
    save_images(images, tmp_path / "plain.png")
    # 8-pixel images upscaled 16 times, 2 pixels of padding: 10 columns x 2 rows with labels, else ceil(sqrt(20)).
    assert Image.open(tmp_path / "labelled.png").size == ((10 * 10 + 2) * 16, (2 * 10 + 2) * 16)
    assert Image.open(tmp_path / "plain.png").size == ((5 * 10 + 2) * 16, (4 * 10 + 2) * 16)
    grid = np.asarray(Image.open(tmp_path / "labelled.png"))
    assert np.array_equal(
        grid[(12 + 0) * 16 : (12 + 8) * 16 : 16, (2 + 30) * 16 : (2 + 38) * 16 : 16], images[13, ..., 0]
    )


def test_guided_channels_may_be_all_the_models_channels_and_no_more() -> None:
    model, labels = tiny_image_model(), torch.tensor([0])
    assert callable(guided_denoiser(model, labels, Guidance(scale=2.0, channels=model.in_channels)))
    with pytest.raises(ValueError, match=rf"^channels \(guided\) must be in \[1, {model.in_channels}\] for this model"):
        guided_denoiser(model, labels, Guidance(scale=2.0, channels=model.in_channels + 1))


def test_the_progress_bar_counts_the_steps_of_every_batch_of_this_rank() -> None:
    from types import SimpleNamespace

    from diffit_cli.sample import _progress

    # 5 images in batches of 2: 3 batches (the last one short) of 4 steps each.
    bar, callback, state = _progress(5, 2, 4, SimpleNamespace(is_main=False))
    (task,) = bar.tasks
    assert task.total == 3 * 4 and task.completed == 0
    callback({"nfe": 3, "batch": 1, "i": 1, "images_done": 2, "batch_size": 2, "order": 2})
    assert task.completed == 1 * 4 + 2 and state["nfe"] == 3 and state["orders"] == []  # orders: batch 0's
    callback({"nfe": 8, "batch": 2, "i": 3, "images_done": 4, "batch_size": 1})
    assert task.completed == task.total and task.fields["nfe"] == 8


def test_cli_sampling_options_reach_generate_with_their_values(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}

    def fake_generate(model: object, **kwargs: object) -> torch.Tensor:
        seen.update(kwargs)
        return torch.zeros(len(kwargs["seeds"]), 8, 8, 1, dtype=torch.uint8)

    monkeypatch.setattr("diffit_cli.sample.generate", fake_generate)
    res = runner.invoke(
        app,
        ["sample", "--ckpt", str(ckpt), "--steps", "3", "--seeds", "4-6", "--batch-size", "2", "--class", "2,1",
         "--precision", "bf16", "--sampler", "euler", "--cfg", "1.5", "--cfg-schedule", "power-cosine",
         "--cfg-channels", "1", "--guidance-interval", "0.1,50", "--out", str(tmp_path / "s.npz")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["seeds"] == [4, 5, 6] and seen["labels"].tolist() == [2, 1, 2] and seen["batch_size"] == 2
    assert seen["precision"] == "bf16" and seen["sampler"].__name__ == "sample_euler" and len(seen["sigmas"]) == 4
    assert seen["guidance"] == Guidance(scale=1.5, schedule="power-cosine", channels=1, interval=(0.1, 50.0))


def test_seed_and_class_ranges_parse_inclusively_up_to_their_limit() -> None:
    import typer

    from diffit_cli.common import parse_int_ranges

    assert parse_int_ranges("0-3, 7,10-11", name="--seeds") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_int_ranges("5-9", name="--seeds", limit=5) == [5, 6, 7, 8, 9]  # exactly the limit
    for text, limit in (("5-10", 5), ("1-2-3", 10), ("-1", 10), ("3,", 10)):
        with pytest.raises(typer.Exit):
            parse_int_ranges(text, name="--seeds", limit=limit)
