import inspect
import math
from functools import partial

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from test_diffusion_samplers import SIGMA_MAX, SIGMA_MIN, mixture, numpy_mixture_denoiser, ode_reference

from diffit.diffusion import (
    ClassifierFreeGuidance,
    karras_sigmas,
    loglinear_sigmas,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_ipndm,
    sample_unipc,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def karras_problem():
    gm = mixture()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    return gm, x, ode_reference(gm, x)


def rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out - ref).pow(2).mean().sqrt().item()


@pytest.mark.parametrize(
    ("sampler", "order", "schedule"),
    [
        (sample_dpmpp_3m, 3, karras_sigmas),
        (sample_dpmpp_3m, 3, loglinear_sigmas),
        (partial(sample_unipc, order=2), 3, karras_sigmas),  # UniP-2 + UniC: order 3 at one NFE per step
        (sample_unipc, 4, karras_sigmas),  # UniP-3 + UniC: order 4
    ],
)
def test_multistep_samplers_converge_with_their_order(karras_problem, sampler, order: int, schedule) -> None:
    gm, x, ref = karras_problem
    e32, e64 = (rms(sampler(gm, x, schedule(n, SIGMA_MIN, SIGMA_MAX, dtype=F64)), ref) for n in (32, 64))
    measured = math.log2(e32 / e64)  # error ~ C h^order
    assert abs(measured - order) < 0.4, f"measured order {measured:.2f}"


def test_ipndm_is_adams_bashforth_4_on_equal_steps() -> None:
    # iPNDM's coefficients are those of equal steps: on a uniform sigma grid down to 0 it is 4th order, and with
    # order=2 or 3 (also its warm-up steps' coefficients) 2nd or 3rd.
    gm = mixture()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 2.0

    def rhs(sigma: float, flat: np.ndarray) -> np.ndarray:
        xs = flat.reshape(x.shape)
        return ((xs - numpy_mixture_denoiser(gm, xs, sigma)) / sigma).reshape(-1) if sigma > 0 else 0 * flat

    sol = solve_ivp(rhs, (2.0, 0.0), x.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    ref = torch.from_numpy(sol.y[:, -1].reshape(x.shape))
    for order in (2, 3, 4):
        e = [rms(sample_ipndm(gm, x, torch.linspace(2.0, 0.0, n + 1, dtype=F64), order=order), ref) for n in (40, 80)]
        assert abs(math.log2(e[0] / e[1]) - order) < 0.4, (order, e)


def test_dpmpp_3m_step_integrates_the_quadratic_through_its_last_three_predictions() -> None:
    """In lambda = -log sigma the ODE is dx/dlambda = D - x, so x(l_t) = e^(l_s - l_t) x_s + int e^(l - l_t) D dl
    over [l_s, l_t]; DPM-Solver++(3M)'s 3rd-order step puts in D the quadratic through the last three data
    predictions (integrated here by 20-point Gauss-Legendre, independently of the phi functions)."""
    gm, states = mixture(), []
    sigmas = torch.tensor([5.0, 2.0, 0.9, 0.4, 0.0], dtype=F64)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=F64) * 5.0
    sample_dpmpp_3m(gm, x, sigmas, callback=states.append)
    lam = (-sigmas[:4].log()).tolist()
    nodes, weights = np.polynomial.legendre.leggauss(20)
    a, b = lam[2], lam[3]  # step 2: from sigma 0.9 to 0.4, the first of order 3
    points = (b - a) / 2 * nodes + (a + b) / 2
    expected = math.exp(a - b) * states[1]["x"]
    for j in range(3):  # the Lagrange basis polynomial of lam[j] among lam[0..2]
        basis = np.prod([(points - lam[m]) / (lam[j] - lam[m]) for m in range(3) if m != j], axis=0)
        expected = expected + float(((b - a) / 2 * weights * np.exp(points - b) * basis).sum()) * states[j]["denoised"]
    assert states[2]["order"] == 3
    torch.testing.assert_close(states[2]["x"], expected, rtol=1e-10, atol=1e-10)


def test_warm_start_equivalences() -> None:
    gm = mixture()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * SIGMA_MAX
    two = karras_sigmas(2, SIGMA_MIN, SIGMA_MAX, dtype=F64)  # warm-up step (DDIM = Euler) then D: no history yet
    torch.testing.assert_close(sample_dpmpp_3m(gm, x, two), sample_euler(gm, x, two), rtol=1e-12, atol=1e-12)
    sigmas = karras_sigmas(7, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    torch.testing.assert_close(sample_ipndm(gm, x, sigmas, order=1), sample_euler(gm, x, sigmas), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("sampler", "orders"),
    [
        (sample_dpmpp_3m, [1, 2, 3, 3, 3, 1]),
        (sample_unipc, [2, 3, 4, 4, 4, 1]),
        (sample_ipndm, [1, 2, 3, 4, 4, 4]),
        (sample_dpmpp_2m, [1, 2, 2, 2, 2, 1]),
    ],
)
def test_one_nfe_per_step_and_orders_are_reported(sampler, orders: list[int]) -> None:
    gm, sigmas = mixture(), karras_sigmas(6, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    x = torch.randn(4, 2, dtype=F64) * SIGMA_MAX
    states: list[dict] = []
    sampler(gm, x, sigmas, callback=states.append)
    assert [s["nfe"] for s in states] == list(range(1, 7))
    assert [s["order"] for s in states] == orders
    # Guidance counts both passes wherever it is active.
    cfg = ClassifierFreeGuidance(gm, num_classes=3, scale=2.0)
    states.clear()
    sampler(partial(cfg, y=torch.tensor([0, 1, 2, 0])), x, sigmas, callback=states.append)
    assert states[-1]["nfe"] == 12


def test_bad_options_raise_naming_them() -> None:
    gm, sigmas = mixture(), karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, dtype=F64)
    x = torch.randn(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_unipc(gm, x, sigmas, order=4)
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4"):
        sample_ipndm(gm, x, sigmas, order=0)


def test_a_float_order_is_refused_also_without_the_type_checks() -> None:
    x, sigmas = torch.zeros(2, 2), karras_sigmas(3, 0.01, 10.0)
    with pytest.raises(ValueError, match=r"^order must be 1, 2 or 3, got 2.0$"):  # a slice index TypeError before
        inspect.unwrap(sample_unipc)(lambda x, s: x, x, sigmas, order=2.0)
    with pytest.raises(ValueError, match=r"^order must be 1, 2, 3 or 4, got True$"):
        inspect.unwrap(sample_ipndm)(lambda x, s: x, x, sigmas, order=True)
    assert torch.equal(inspect.unwrap(sample_unipc)(lambda x, s: x, x, sigmas, order=np.int64(2)), x)
