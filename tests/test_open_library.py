"""The open library: a model and an objective diffit has never seen train, resume, checkpoint and sample through
the library and the CLI; configs cannot drift; one seed derivation; runtime checks for users."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffit.checkpoint import load_model
from diffit.data import array_source, encode_latents, write_image_shards
from diffit.diffusion import sample_euler, sample_heun
from diffit.distributed import DistInfo
from diffit.generate import generate
from diffit.nn import capture_config
from diffit.nn.blocks import ResBlock
from diffit.objectives import EDMObjective
from diffit.runs import IMAGE_PRESETS, LATENT_PRESETS, build_backbone, training_data
from diffit.train import step_generator, train
from diffit_cli.main import app

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from custom_objective import RectifiedFlow  # noqa: E402
from tmsa_in_your_model import MyDenoiser  # noqa: E402

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
runner = CliRunner()


def small_net() -> MyDenoiser:
    torch.manual_seed(0)
    return MyDenoiser(dim=16, depth=1, heads=2)


def run(out: Path, steps: int, *, resume: bool = False, objective: object = None, **kw: object) -> object:
    data = training_data(None)
    return train(
        model=kw.pop("model", None) or small_net(), objective=objective or EDMObjective(), run_dir=out, dist=CPU,
        data=data.batches(batch_size=8, seed=1), steps=steps, batch_size=8, lr=1e-3, ckpt_every=2, seed=1,
        resume=resume, **kw,
    )  # fmt: skip


def test_custom_model_trains_resumes_bit_identically_checkpoints_and_samples(tmp_path: Path) -> None:
    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(straight.checkpoint / name)), load_file(str(resumed.checkpoint / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = json.loads((resumed.checkpoint / "state.json").read_text())
    assert state["model"]["class"] == "MyDenoiser" and state["model"]["config"]["dim"] == 16
    assert state["objective"]["class"] == "EDMObjective" and state["train"]["batch_size"] == 8

    loaded = load_model(tmp_path / "b", build=MyDenoiser)
    assert isinstance(loaded.model, MyDenoiser) and isinstance(loaded.objective, EDMObjective)
    sigmas = loaded.objective.sampling_sigmas(2)
    images = generate(loaded.model, objective=loaded.objective, sampler=sample_heun, sigmas=sigmas, seeds=[0, 1],
                      labels=torch.tensor([3, 4]))  # fmt: skip
    assert images.shape == (2, 16, 16, 1) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="diffit cannot rebuild by itself: pass build="):
        load_model(tmp_path / "b")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # dynamo's import
def test_compile_blocks_warns_once_when_the_model_bypasses_its_compiled_blocks(tmp_path: Path) -> None:
    # MyDenoiser runs its TMSABlocks through block.forward_grid(h, t): nothing goes through the compiled __call__.
    events: list[dict] = []
    result = run(tmp_path / "a", 2, compile="blocks", callback=events.append)
    assert result.status == "completed"
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "compile: 'blocks' compiled 1 blocks, but 1 of them (TMSABlock) were not called as modules in the first "
        "step, so they run eager: a method such as block.forward_grid(h, t) bypasses the compiled __call__; call "
        "each block as block(...), or compile the whole model (compile=True, --compile)"
    ]


def test_custom_model_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # --model-factory imports from the working directory, as uvicorn does
    out = tmp_path / "run"
    factory = "examples.tmsa_in_your_model:MyDenoiser"
    res = runner.invoke(app, ["train", "--model-factory", factory, "--steps", "2", "--batch-size", "4",
                              "--sample-every", "0", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    missing = runner.invoke(app, ["sample", "--ckpt", str(out), "--n", "2", "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "--model-factory" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "x.png").exists()
    ok = runner.invoke(app, ["sample", "--ckpt", str(out), "--model-factory", factory, "--n", "3", "--steps", "2",
                             "--out", str(tmp_path / "x.png")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "x.json").read_text())["objective"]["class"] == "EDMObjective"
    bad = runner.invoke(app, ["sample", "--ckpt", str(out), "--model-factory", "nopkg.nets:make", "--n", "2"])
    assert bad.exit_code == 2 and "--model-factory" in bad.output and "cannot import" in bad.output


def test_custom_objective_trains_and_samples(tmp_path: Path) -> None:
    result = run(tmp_path / "flow", 3, objective=RectifiedFlow(logit_std=0.8))
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["objective"] == {"class": "RectifiedFlow", "config": {"logit_mean": 0.0, "logit_std": 0.8,
                                                                       "t_max": 0.995}}  # fmt: skip
    with pytest.raises(ValueError, match="pass objective="):
        load_model(tmp_path / "flow", build=MyDenoiser)
    loaded = load_model(tmp_path / "flow", build=MyDenoiser, objective=RectifiedFlow(logit_std=0.8))
    flow = loaded.objective
    images = generate(loaded.model, objective=flow, sampler=sample_euler, sigmas=flow.sampling_sigmas(3),
                      seeds=[0, 1], labels=torch.tensor([0, 1]))  # fmt: skip
    assert images.shape == (2, 16, 16, 1)
    # The flow's denoiser inverts its forward process: a model predicting the true v returns x0 exactly.
    x0, eps, sigma = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0.5, 3.0])

    def oracle(x_t: torch.Tensor, label: torch.Tensor, y: object = None) -> torch.Tensor:
        return eps - x0

    torch.testing.assert_close(flow.denoiser(oracle)(x0 + sigma[:, None, None, None] * eps, sigma), x0)


@pytest.mark.parametrize("name", [*IMAGE_PRESETS, *LATENT_PRESETS])
def test_every_preset_rebuilds_from_its_config(name: str) -> None:
    factory = {**IMAGE_PRESETS, **LATENT_PRESETS}[name]
    with torch.device("meta"):
        model = factory()
        rebuilt = type(model)(**json.loads(json.dumps(model.config)))
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny", "s2"])  # both classes; every preset is checked on meta above
def test_rebuilt_preset_computes_the_same_function(name: str) -> None:
    factory = {**IMAGE_PRESETS, **LATENT_PRESETS}[name]
    model = factory(**({"input_size": 8} if name == "s2" else {})).eval()
    rebuilt = type(model)(**json.loads(json.dumps(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    head = model.head_conv if hasattr(model, "head_conv") else model.final_layer.linear
    torch.nn.init.normal_(head.weight, std=0.02)  # zero-initialised heads would make any two models agree
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, model.in_channels, model.resolution, model.resolution)
    t, y = torch.tensor([0.3]), torch.tensor([1]) if model.num_classes else None
    assert torch.equal(model(x, t, y), rebuilt(x, t, y))


def test_capture_config_records_the_actual_arguments() -> None:
    class Net(torch.nn.Module):
        @capture_config
        def __init__(self, width: int, *, depth: int = 2, sizes: tuple = (1, 2), **extra: float) -> None:
            super().__init__()

    class Wider(Net):
        @capture_config
        def __init__(self, *, factor: int = 3) -> None:
            super().__init__(8 * factor)

    assert Net(4, scale=0.5).config == {"width": 4, "depth": 2, "sizes": [1, 2], "scale": 0.5}
    assert Wider().config == {"factor": 3}  # the subclass's own arguments rebuild it
    with pytest.raises(TypeError, match=r"Wider\(\): .*unexpected keyword argument 'factr'"):
        Wider(factr=3)


def test_step_seeds_do_not_collide() -> None:
    """Seed 0 at step 1,000,003 and seed 1 at step 0 drew the same numbers under the old arithmetic."""
    a, b = step_generator(0, 1_000_003), step_generator(1, 0)
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    assert torch.equal(torch.randn(8, generator=step_generator(5, 7)), torch.randn(8, generator=step_generator(5, 7)))


def test_unlabelled_latents_train_an_unconditional_model(tmp_path: Path, tiny_vae: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)  # no labels
    write_image_shards(array_source(str(tmp_path / "a.npy")), str(tmp_path / "img" / "i-%03d.tar"))
    encode_latents(str(tmp_path / "img" / "i-000.tar"), str(tmp_path / "lat" / "l-%03d.tar"), vae=tiny_vae,
                   resolution=8)  # fmt: skip
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--latent", "--data", str(tmp_path / "lat" / "l-000.tar"), "--model", "s2",
                              "--steps", "2", "--batch-size", "4", "--num-workers", "0", "--sample-every", "0",
                              "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    state = json.loads((out / "ckpt-00000002" / "state.json").read_text())
    assert state["model"]["config"]["num_classes"] is None and state["objective"]["class"] == "ADMObjective"


def test_runtime_checks_are_offered_to_users() -> None:
    code = (
        "import torch\nfrom diffit.nn import TMSABlock\nfrom diffit.diffusion import karras_sigmas\n"
        "karras_sigmas(5, 1, 80)\n"  # ints where floats are annotated pass, as without the checks
        "b = TMSABlock(dim=8, time_dim=4, num_heads=2, window=2)\n"
        "b(torch.randn(2, 4, 8), torch.randn(3, 4))\n"  # batch 2 tokens, batch 3 time tokens
    )
    env = {**os.environ, "DIFFIT_TYPECHECK": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "TypeCheckError" in proc.stderr and "line 5" in proc.stderr


def test_runs_saved_before_an_argument_existed_still_resume(tmp_path: Path) -> None:
    """A checkpoint whose config predates a constructor argument resumes when the model uses that argument's
    default (time_conditioning, label_init_std and gelu were added after 0.2.0), and is refused otherwise."""
    from diffit.nn import diffit_tiny

    def tiny(**kw: object) -> torch.nn.Module:  # ImageDiffiT's defaults where diffit_tiny has its own
        torch.manual_seed(0)
        defaults = {"label_init_std": 1.0, "gelu": "tanh"}
        return diffit_tiny(channels=(8, 8, 8), num_heads=1, time_dim=16, **(defaults | kw))

    run(tmp_path, 2, model=tiny())
    state = tmp_path / "ckpt-00000002" / "state.json"
    record = json.loads(state.read_text())
    for key in ("time_conditioning", "label_init_std", "gelu"):
        del record["model"]["config"][key]
    state.write_text(json.dumps(record))
    assert run(tmp_path, 3, model=tiny(), resume=True).step == 3
    with pytest.raises(ValueError, match="is for model ImageDiffiT"):
        run(tmp_path, 4, model=tiny(time_conditioning="adaln"), resume=True)
    with pytest.raises(ValueError, match="is for model ImageDiffiT"):  # the current preset is another model
        run(tmp_path, 4, model=tiny(label_init_std=0.5, gelu="none"), resume=True)


def test_training_data_gives_each_rank_its_slice_of_the_global_batch() -> None:
    """``TrainingData.batches`` passes rank and world size on: RAM-held data's two ranks hold the two halves of
    the one-process global batch; a stream's two ranks read half a batch each, of different samples."""
    held = training_data(None)
    whole = next(held.batches(batch_size=8, seed=0)(0))
    halves = [next(held.batches(batch_size=8, seed=0, rank=r, world_size=2)(0)) for r in (0, 1)]
    for k in (0, 1):  # images, labels
        assert torch.equal(torch.cat([h[k] for h in halves]), whole[k])
    stream = training_data(None, memory_limit=0)
    parts = [next(stream.batches(batch_size=8, seed=0, rank=r, world_size=2)(0)) for r in (0, 1)]
    assert stream.kind == "stream" and [len(p[0]) for p in parts] == [4, 4]
    assert not torch.equal(parts[0][0], parts[1][0])


def test_build_backbone_switches_gradient_checkpointing_on() -> None:
    """With ``grad_checkpointing`` a ResBlock's forward starts again in the backward pass (a pre-hook counts it:
    torch stops a recomputation once it holds what the backward needs, before any forward hook)."""
    data = training_data(None)
    calls = []
    for on in (False, True):
        torch.manual_seed(0)
        net = build_backbone(data, model="tiny", grad_checkpointing=on).train()
        block = next(m for m in net.modules() if isinstance(m, ResBlock))
        count = [0]
        block.register_forward_pre_hook(lambda *args, count=count: count.__setitem__(0, count[0] + 1))
        net(
            torch.randn(2, 1, data.resolution, data.resolution), torch.zeros(2), torch.tensor([1, 2])
        ).square().sum().backward()
        calls.append(count[0])
    assert calls == [1, 2]


def test_one_class_data_gives_a_conditional_model_and_unlabelled_data_an_unconditional_one(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", images=np.zeros((4, 16, 16), np.uint8), labels=np.zeros(4, np.int64))
    np.save(tmp_path / "none.npy", np.zeros((4, 16, 16), np.uint8))
    found = []
    for name, src in (("one", "one.npz"), ("none", "none.npy")):
        write_image_shards(array_source(str(tmp_path / src)), str(tmp_path / name / "s-%03d.tar"))
        data = training_data(str(tmp_path / name / "s-000.tar"))
        found.append((data.num_classes, build_backbone(data, model="tiny").num_classes))
    assert found == [(1, 1), (None, None)]
