"""`diffit sample --nfe / --schedule`: the planned sampler is recorded, budgets are honoured, bad input exits 2."""

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_image_diffit
from test_sample import ckpt, runner  # noqa: F401 (the module-scoped checkpoint fixture)

import diffit.generate as generate_module
from diffit.diffusion import per_sample_noise, plan_sampling
from diffit.generate import Guidance, fitted_sigmas, guided_denoiser, random_labels, sigma_range
from diffit.objectives import default_objective
from diffit_cli.main import app


def test_cli_nfe_picks_the_planned_sampler_and_records_it(tmp_path: Path, ckpt: Path) -> None:  # noqa: F811
    out = tmp_path / "s.npz"
    res = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--nfe", "6", "--n", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    plan = plan_sampling(6)
    assert record["plan"] == plan.to_dict() and record["sampler"] == plan.sampler
    assert record["schedule"] == plan.schedule and record["steps"] == plan.steps
    assert record["nfe_per_image"] == 6 and len(record["step_orders"]) == plan.steps
    assert record["sigmas"][-1] == 0 and len(record["sigmas"]) == plan.steps + 1
    # Guidance counts double: the same budget buys half the steps.
    res = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--nfe", "8", "--cfg", "2", "--n", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 4 and record["nfe_per_image"] == 8


def test_cli_schedule_and_pinned_sampler(tmp_path: Path, ckpt: Path) -> None:  # noqa: F811
    out = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(ckpt), "--n", "2", "--out", str(out)]
    res = runner.invoke(app, [*args, "--nfe", "7", "--sampler", "heun", "--schedule", "log-snr"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["sampler"], record["schedule"], record["steps"], record["nfe_per_image"]) == (
        "heun",
        "log-snr",
        4,
        7,
    )
    assert record["step_orders"] == [2, 2, 2, 1]  # the final Heun step is Euler, and the record says so
    res = runner.invoke(app, [*args, "--steps", "5", "--sampler", "ipndm", "--schedule", "vp-time"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["final"] == "zero" and record["step_orders"] == [1, 2, 3, 4, 4] and record["plan"] is None


def test_cli_fitted_schedule_records_its_cost(tmp_path: Path, ckpt: Path, monkeypatch) -> None:  # noqa: F811
    # 2 starting points and 8 candidate sigmas instead of 32 and 100: a fast test.
    monkeypatch.setattr(generate_module, "FIT_SEEDS", range(2))
    monkeypatch.setattr(generate_module, "FIT_FINE_STEPS", 8)
    out = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(ckpt), "--n", "2", "--out", str(out), "--nfe", "5", "--schedule", "optimized"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["schedule"] == "optimized" and record["schedule_fit_nfe"] == 15 * 2
    assert record["nfe_per_image"] == 5 and len(record["sigmas"]) == 6 and record["sigmas"][-1] == 0
    res = runner.invoke(app, [*args, "--cfg", "2"])  # guided: the fit evaluates both denoisers
    assert res.exit_code == 0, res.output
    assert json.loads(out.with_suffix(".json").read_text())["schedule_fit_nfe"] == 15 * 2 * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nfe", "3", "--sampler", "dpmpp-3m"], "--nfe 3 is too small for dpmpp-3m"),
        (["--nfe", "0"], "--nfe must be an integer in [1, 100000]"),
        (["--nfe", "5", "--steps", "5"], "--nfe and --steps are alternatives"),
        (["--schedule", "cosine"], "--schedule must be one of karras, log-snr, vp-time, optimized"),
        (["--nfe", "6", "--sampler", "ipndm", "--cfg", "2"], "needs at least 8 evaluations (guided"),
    ],
)
def test_cli_bad_budget_or_schedule_exits_2(tmp_path: Path, ckpt: Path, extra: list[str], message: str) -> None:  # noqa: F811
    res = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "2", "--out", str(tmp_path / "x.png"), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_fitted_sigmas_fit_the_models_guided_denoiser_from_each_seeds_noise_at_sigma_max(monkeypatch) -> None:
    """The "optimized" schedule is ``optimized_sigmas`` on the model's own guided denoiser, started from every
    seed's noise scaled to sigma_max with that seed's random class (what reaches it is recorded: on a tiny
    model, a start of the wrong scale can pick the same sigmas)."""
    model, seeds, guidance = tiny_image_diffit().eval(), [7, 8, 9], Guidance(scale=2.0)
    objective = default_objective(model)
    lo, hi = sigma_range(objective)
    seen = {}

    def spy(denoiser, x, n, sigma_min, sigma_max, *, fine_steps):  # type: ignore[no-untyped-def]
        seen.update(denoiser=denoiser, x=x, args=(n, sigma_min, sigma_max, fine_steps))
        return torch.linspace(sigma_max, 0, n + 1, dtype=torch.float64)

    monkeypatch.setattr(generate_module, "optimized_sigmas", spy)
    with torch.no_grad():
        got = fitted_sigmas(model, 4, guidance=guidance, seeds=seeds, fine_steps=6)
        assert torch.equal(seen["x"], per_sample_noise(seeds, (1, 8, 8))() * hi) and seen["args"] == (4, lo, hi, 6)
        y, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 2.0)
        want = guided_denoiser(model, random_labels(seeds, model.num_classes), guidance, objective)(y, sigma)
        assert torch.equal(seen["denoiser"](y, sigma), want)
    assert got.dtype == torch.float32 and got[0] == hi and len(got) == 5
