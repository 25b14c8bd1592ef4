"""From an evaluation budget to a sampler, a schedule and a step count (``diffit sample --nfe N``).

The choice per budget is the one ``benchmarks/bench_samplers.py`` (exact-ODE error on held-out Gaussian
mixtures) and ``benchmarks/bench_quality.py --sweep`` (FID of the bundled digits model) measured best; see
``LOW_NFE_CHOICE``. Classifier-free guidance costs two evaluations per denoiser call, so it halves the steps.
"""

from dataclasses import asdict, dataclass
from typing import Any

from diffit.diffusion.schedules import MAX_STEPS
from diffit.diffusion.step_schedules import SCHEDULE_NAMES
from diffit.util import is_integer

# Evaluations one step costs, per sampler: Heun-type samplers evaluate twice per step, except on the
# last one (to sigma = 0), so n steps cost 2n - 1; all others evaluate once per step.
TWO_STAGE = ("heun", "edm-stochastic")


# The fewest steps at which a sampler takes at least one step at its nominal order (warm-up and final
# steps are lower order): below this it would silently be a lower-order method.
MIN_STEPS = {
    "euler": 1,
    "ddim": 1,
    "euler-maruyama": 1,
    "ddpm": 1,
    "heun": 2,
    "edm-stochastic": 2,
    "dpmpp-2m": 3,
    "dpmpp-3m": 4,
    "unipc": 4,
    "ipndm": 4,
}

# Samplers whose final step extrapolates from their history (an Adams-Bashforth or corrected Euler step
# to 0) rather than returning D(x, sigma_min): their schedules skip sigma_min (``schedule_sigmas(final=)``).
FINAL_TO_ZERO = ("ipndm", "unipc")

# Measured best (sampler, schedule) for a budget of n denoiser calls, as ranges [lo, hi). From 4 calls on:
# UniPC on the VP-time schedule had the lowest FID of the bundled digits model at 5, 10, 15 and 35 NFE
# (benchmarks/results/quality_sweep.md) and 0.56x the best peer's exact-ODE error at 10 NFE on the held-out
# mixtures; iPNDM, lower still on the mixtures (0.24x-0.40x), had a worse FID at 5-8 NFE. Below 4 calls,
# DPM++(2M) needs 3 steps for one 2nd-order step, and Euler is all that fits 1-2.
LOW_NFE_CHOICE: tuple[tuple[int, int, str, str], ...] = (
    (1, 3, "euler", "karras"),
    (3, 4, "dpmpp-2m", "karras"),
    (4, MAX_STEPS + 1, "unipc", "vp-time"),
)


@dataclass(frozen=True)
class SamplingPlan:
    """What to run for a budget: sampler and schedule names (keys of SAMPLERS / SCHEDULES), how the schedule
    ends (``final`` of ``schedule_sigmas``), the number of steps, the evaluations per image it will cost,
    the evaluations per denoiser call (2 with guidance) and the budget asked for."""

    sampler: str
    schedule: str
    final: str
    steps: int
    nfe: int
    evaluations_per_call: int
    budget: int

    def describe(self) -> str:
        """One line for logs and records: ``sampler/schedule/N steps``."""
        return f"{self.sampler}/{self.schedule}/{self.steps} steps"

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (what ``diffit sample`` writes into its record)."""
        return asdict(self)


def _check_count(name: str, value: object) -> None:
    """ValueError unless ``value`` (a step count or an evaluation budget) is an integer in [1, MAX_STEPS]: not a
    bool, not a float such as 10.5 (which planned 10.0 steps)."""
    if not is_integer(value) or not 1 <= value <= MAX_STEPS:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer in [1, {MAX_STEPS}], got {value}")


def check_sampler_name(sampler: str) -> None:
    """ValueError unless ``sampler`` names one of diffit's samplers (a key of ``SAMPLERS``)."""
    if sampler not in MIN_STEPS:
        raise ValueError(f"sampler must be one of {', '.join(MIN_STEPS)}, got {sampler!r}")


def final_for(sampler: str) -> str:
    """How a schedule for ``sampler`` should end: "zero" for the samplers in FINAL_TO_ZERO, else "sigma_min"."""
    check_sampler_name(sampler)
    return "zero" if sampler in FINAL_TO_ZERO else "sigma_min"


def steps_for_nfe(sampler: str, nfe: int, *, guidance_scale: float = 1.0) -> int:
    """The most steps of ``sampler`` that fit in ``nfe`` network evaluations per image (guided calls cost 2).

    Raises a ValueError naming ``nfe`` when the budget is below what the sampler needs to reach its order
    (``MIN_STEPS``), and naming ``sampler`` when it is unknown.
    """
    check_sampler_name(sampler)
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    per_call = 1 if guidance_scale == 1.0 else 2
    calls = nfe // per_call
    steps = (calls + 1) // 2 if sampler in TWO_STAGE else calls
    if steps < MIN_STEPS[sampler]:
        need = MIN_STEPS[sampler] * (2 if sampler in TWO_STAGE else 1) - (1 if sampler in TWO_STAGE else 0)
        guided = " (guided: 2 per call)" if per_call == 2 else ""
        raise ValueError(
            f"nfe {nfe} is too small for {sampler}: it needs at least {need * per_call} evaluations{guided}"
        )
    return steps


def plan_sampling(
    nfe: int, *, guidance_scale: float = 1.0, sampler: str | None = None, schedule: str | None = None
) -> SamplingPlan:
    """The sampler, schedule and step count to use for a budget of ``nfe`` evaluations per image.

    ``sampler`` / ``schedule`` pin one of the two; the other comes from ``LOW_NFE_CHOICE``. Guidance with a
    scale other than 1 runs two passes per call, so the budget buys half the steps.
    """
    _check_count("nfe", nfe)
    if schedule is not None and schedule not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {schedule!r}")
    per_call = 1 if guidance_scale == 1.0 else 2
    calls = nfe // per_call
    if calls < 1:
        raise ValueError(f"nfe {nfe} is too small: one guided evaluation costs 2")
    chosen_sampler, chosen_schedule = next((s, sch) for lo, hi, s, sch in LOW_NFE_CHOICE if lo <= calls < hi)
    sampler = sampler or chosen_sampler
    schedule = schedule or chosen_schedule
    steps = steps_for_nfe(sampler, nfe, guidance_scale=guidance_scale)
    cost = (2 * steps - 1 if sampler in TWO_STAGE else steps) * per_call
    return SamplingPlan(sampler, schedule, final_for(sampler), steps, cost, per_call, nfe)


def resolve_sampling(
    *,
    sampler: str | None,
    schedule: str | None,
    steps: int | None = None,
    nfe: int | None = None,
    guidance_scale: float = 1.0,
) -> tuple[str | None, int | None, str | None, SamplingPlan | None]:
    """A run's sampler, schedule and step count (or budget ``nfe``, its alternative), checked (ValueError naming
    the argument); with a budget, the plan that fills it (:func:`plan_sampling`). Returns (sampler, steps,
    schedule, plan); None where nothing was asked (the objective's defaults apply) and plan None without nfe."""
    if steps is not None:
        _check_count("steps", steps)
    if nfe is not None and steps is not None:
        raise ValueError("nfe and steps are alternatives: give one")
    if sampler is not None:
        check_sampler_name(sampler)
    if schedule is not None and schedule not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {schedule!r}")
    if nfe is None:
        return sampler, steps, schedule, None
    plan = plan_sampling(nfe, guidance_scale=guidance_scale, sampler=sampler, schedule=schedule)
    return plan.sampler, plan.steps, plan.schedule, plan
