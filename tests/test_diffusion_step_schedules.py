import itertools
import math

import pytest
import torch
from test_diffusion_samplers import SIGMA_MAX, SIGMA_MIN, mixture, ode_reference

from diffit.diffusion import (
    SCHEDULES,
    karras_sigmas,
    loglinear_sigmas,
    optimized_sigmas,
    sample_ipndm,
    schedule_sigmas,
    vp_time_sigmas,
)
from diffit.diffusion.step_schedules import VP_BETA_D, VP_BETA_MIN

F64 = torch.float64


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 7])
def test_schedules_span_the_range_and_end_with_zero(name: str, n: int) -> None:
    s = schedule_sigmas(name, n, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    assert len(s) == n + 1 and s[-1] == 0 and s[0] == pytest.approx(SIGMA_MAX)
    assert bool((s[:-1] > s[1:]).all())
    if n > 1:
        assert s[-2] == pytest.approx(SIGMA_MIN)
    # final="zero": the (n + 1)-point schedule without its sigma_min point, still n steps ending at 0.
    z = schedule_sigmas(name, n, SIGMA_MIN, SIGMA_MAX, final="zero", dtype=F64)
    longer = schedule_sigmas(name, n + 1, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    assert torch.equal(z, torch.cat([longer[:-2], longer[-1:]]))
    assert len(z) == n + 1 and z[-1] == 0 and z[-2] > SIGMA_MIN


def test_closed_forms() -> None:
    torch.testing.assert_close(
        schedule_sigmas("karras", 9, SIGMA_MIN, SIGMA_MAX), karras_sigmas(9, SIGMA_MIN, SIGMA_MAX)
    )
    log = loglinear_sigmas(9, SIGMA_MIN, SIGMA_MAX, dtype=F64)[:-1].log()
    torch.testing.assert_close(log.diff(), torch.full((8,), (math.log(SIGMA_MIN / SIGMA_MAX)) / 8, dtype=F64))
    # power 1: equal steps in the VP time t, sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
    s = vp_time_sigmas(9, SIGMA_MIN, SIGMA_MAX, power=1.0, dtype=F64)[:-1]
    t = ((VP_BETA_MIN**2 + 2 * VP_BETA_D * torch.log1p(s**2)).sqrt() - VP_BETA_MIN) / VP_BETA_D
    torch.testing.assert_close(t.diff(), t.diff().mean().expand(8), rtol=1e-9, atol=1e-12)


def test_vp_time_defaults_to_the_time_quadratic_spacing() -> None:
    """The planner's "vp-time" is Lu et al.'s time-quadratic schedule: equal steps in sqrt(t) (power 2)."""
    s = schedule_sigmas("vp-time", 9, SIGMA_MIN, SIGMA_MAX, dtype=F64)[:-1]
    t = ((VP_BETA_MIN**2 + 2 * VP_BETA_D * torch.log1p(s**2)).sqrt() - VP_BETA_MIN) / VP_BETA_D
    root = t.sqrt()
    torch.testing.assert_close(root.diff(), root.diff().mean().expand(8), rtol=1e-9, atol=1e-12)


def test_bad_schedule_arguments_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="schedule must be one of karras, log-snr, vp-time, got 'cosine'"):
        schedule_sigmas("cosine", 5, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="final must be"):
        schedule_sigmas("karras", 5, SIGMA_MIN, SIGMA_MAX, final="last")
    with pytest.raises(ValueError, match="n \\(number of steps\\) must be an integer in \\[1, 100000\\], got 0"):
        loglinear_sigmas(0, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        vp_time_sigmas(5, 1.0, 0.5)
    with pytest.raises(ValueError, match="power"):
        vp_time_sigmas(5, SIGMA_MIN, SIGMA_MAX, power=0.0)
    for schedule in (loglinear_sigmas, vp_time_sigmas):  # inf gave NaN sigmas before
        with pytest.raises(ValueError, match="sigma_max < inf"):
            schedule(5, SIGMA_MIN, float("inf"))
    with pytest.raises(ValueError, match="power must be a finite number"):
        vp_time_sigmas(5, SIGMA_MIN, SIGMA_MAX, power=float("nan"))
    with pytest.raises(ValueError, match="fine_steps"):
        optimized_sigmas(mixture(), torch.randn(4, 2, dtype=F64), 10, SIGMA_MIN, SIGMA_MAX, fine_steps=8)


def test_optimized_schedule_is_a_fine_grid_path_that_beats_karras() -> None:
    gm = mixture()
    fit = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=F64) * SIGMA_MAX
    fine = karras_sigmas(12, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    # With as many steps as fine points there is one path: the fine grid itself.
    torch.testing.assert_close(optimized_sigmas(gm, fit, 12, SIGMA_MIN, SIGMA_MAX, fine_steps=12), fine)
    s = optimized_sigmas(gm, fit, 8, SIGMA_MIN, SIGMA_MAX, fine_steps=60)
    grid = karras_sigmas(60, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    assert len(s) == 9 and s[0] == SIGMA_MAX and s[-1] == 0 and bool((s[:-1] > s[1:]).all())
    assert all(bool((grid - v).abs().min() < 1e-12) for v in s[:-1])
    # On other starting points, iPNDM on the fitted schedule beats iPNDM on Karras at the same 8 NFE.
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(6), dtype=F64) * SIGMA_MAX
    ref = ode_reference(gm, x)
    fitted = (sample_ipndm(gm, x, s) - ref).norm(dim=1).mean()
    karras = (sample_ipndm(gm, x, karras_sigmas(8, SIGMA_MIN, SIGMA_MAX, dtype=F64)) - ref).norm(dim=1).mean()
    assert fitted < 0.7 * karras, (fitted, karras)


def test_optimized_schedule_is_the_cheapest_path_of_n_steps_by_brute_force() -> None:
    """GITS on a 10-point grid: the path that optimized_sigmas picks is the one of least summed local error
    among all C(9, n - 1), recomputed here: Euler from teacher node i to node j against the Heun teacher at j, and
    for the final step to 0 the denoised D_i against the teacher's end point (x_i instead chose other paths)."""
    gm, fine_steps = mixture(), 10
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(7), dtype=F64) * SIGMA_MAX
    fine = karras_sigmas(fine_steps, SIGMA_MIN, SIGMA_MAX, dtype=F64).tolist()

    def slope(y: torch.Tensor, sigma: float) -> torch.Tensor:
        return (y - gm(y, torch.full((len(y),), sigma, dtype=F64))) / sigma

    xs, ds = [x], []
    for sigma, sigma_next in itertools.pairwise(fine):
        ds.append(slope(xs[-1], sigma))
        euler = xs[-1] + (sigma_next - sigma) * ds[-1]
        xs.append(euler if sigma_next == 0 else xs[-1] + (sigma_next - sigma) * (ds[-1] + slope(euler, sigma_next)) / 2)

    def step_error(i: int, j: int) -> float:
        pred = xs[i] - fine[i] * ds[i] if j == fine_steps else xs[i] + (fine[j] - fine[i]) * ds[i]
        return (pred - xs[j]).norm(dim=1).mean().item()

    errors = {(i, j): step_error(i, j) for i, j in itertools.combinations(range(fine_steps + 1), 2)}

    for n in (1, 2, 3, 4, fine_steps):  # the final step's error picked the path at n = 2
        paths = [(0, *mid, fine_steps) for mid in itertools.combinations(range(1, fine_steps), n - 1)]
        best = min(paths, key=lambda path: sum(errors[step] for step in itertools.pairwise(path)))
        got = optimized_sigmas(gm, x, n, SIGMA_MIN, SIGMA_MAX, fine_steps=fine_steps)
        torch.testing.assert_close(got, torch.tensor([fine[j] for j in best], dtype=F64), rtol=1e-12, atol=0)
