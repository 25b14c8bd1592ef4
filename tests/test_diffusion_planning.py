import inspect

import pytest

from diffit.diffusion import MIN_STEPS, SAMPLERS, final_for, plan_sampling, steps_for_nfe


def test_every_sampler_has_a_minimum_and_plans_fit_their_budget() -> None:
    assert set(MIN_STEPS) == set(SAMPLERS)
    for sampler in SAMPLERS:
        for cfg in (1.0, 3.0):
            for budget in range(1, 41):
                try:
                    plan = plan_sampling(budget, guidance_scale=cfg, sampler=sampler)
                except ValueError as err:
                    assert "too small" in str(err)
                    continue
                assert plan.nfe <= budget and plan.steps >= MIN_STEPS[sampler]
                per_step = 2 if sampler in ("heun", "edm-stochastic") else 1
                assert plan.nfe + per_step * plan.evaluations_per_call > budget  # one more step would not fit


def test_known_budgets() -> None:
    heun = plan_sampling(35, sampler="heun", schedule="karras")
    assert (heun.steps, heun.nfe, heun.final) == (18, 35, "sigma_min")
    default = plan_sampling(10)
    assert default.nfe == 10 and default.steps == 10 and default.sampler in SAMPLERS
    guided = plan_sampling(10, guidance_scale=4.0)
    assert guided.steps == 5 and guided.nfe == 10 and guided.evaluations_per_call == 2
    assert plan_sampling(10, sampler="ipndm").final == "zero" and plan_sampling(10, sampler="heun").final == "sigma_min"
    assert plan_sampling(3).sampler == "dpmpp-2m"
    assert plan_sampling(2).sampler == "euler"  # below every higher-order method's minimum


def test_each_budget_gets_the_measured_sampler_and_schedule() -> None:
    """LOW_NFE_CHOICE: Euler/Karras for 1-2 calls, DPM++(2M)/Karras for 3, UniPC/VP-time (ending at zero) from 4."""
    plans = [plan_sampling(nfe) for nfe in (1, 2, 3, 4, 10, 100)]
    assert [(p.sampler, p.schedule, p.final, p.steps, p.nfe) for p in plans] == [
        ("euler", "karras", "sigma_min", 1, 1),
        ("euler", "karras", "sigma_min", 2, 2),
        ("dpmpp-2m", "karras", "sigma_min", 3, 3),
        ("unipc", "vp-time", "zero", 4, 4),
        ("unipc", "vp-time", "zero", 10, 10),
        ("unipc", "vp-time", "zero", 100, 100),
    ]
    guided = plan_sampling(7, guidance_scale=2.0)  # 3 guided calls: the 3-call choice, an odd budget rounded down
    assert (guided.sampler, guided.schedule, guided.steps, guided.nfe) == ("dpmpp-2m", "karras", 3, 6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: steps_for_nfe("dpmpp-3m", 3), "nfe 3 is too small for dpmpp-3m: it needs at least 4 evaluations"),
        (lambda: steps_for_nfe("heun", 2), "nfe 2 is too small for heun: it needs at least 3"),
        (lambda: steps_for_nfe("ipndm", 6, guidance_scale=2.0), "needs at least 8 evaluations \\(guided"),
        (lambda: steps_for_nfe("rk4", 10), "sampler must be one of"),
        (lambda: final_for("rk4"), "sampler must be one of"),  # a schedule for an unknown sampler ended anyhow
        (lambda: plan_sampling(0), "nfe must be an integer in \\[1, 100000\\]"),
        (lambda: inspect.unwrap(plan_sampling)(10.5), "nfe must be an integer"),  # 10.0 steps before
        (lambda: plan_sampling(1, guidance_scale=2.0), "one guided evaluation costs 2"),
        (lambda: plan_sampling(10, schedule="cosine"), "schedule must be one of"),
    ],
)
def test_bad_budgets_and_names_raise_one_line_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
