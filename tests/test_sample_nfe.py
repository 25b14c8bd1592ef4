"""`diffit sample --nfe / --schedule`: the planned sampler is recorded, budgets are honoured, bad input exits 2."""

import json
from pathlib import Path

import pytest
from test_sample import ckpt, runner  # noqa: F401 (the module-scoped checkpoint fixture)

import diffit.generate as generate_module
from diffit.diffusion import plan_sampling
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
