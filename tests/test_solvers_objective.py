"""Exact objective and gradient against references, finite differences and Monte Carlo."""

import numpy as np
import pytest
from scipy import stats

from solvers import ScipyDistribution, StandardNormal, evaluate
from solvers.distributions import EmpiricalDistribution

from .conftest import T_1_512


def test_official_b2_l5_fixture_reproduces_reference(official_b2_l5):
    value = evaluate(official_b2_l5, StandardNormal(), -T_1_512, T_1_512, gradient=False)
    assert value.vnmse == pytest.approx(0.21491, abs=5e-6)
    assert value.uncovered == 0


def test_one_bit_without_shared_randomness_is_stochastic_rounding():
    t = T_1_512
    value = evaluate([[-t, t]], StandardNormal(), -t, t, gradient=False)
    m2 = StandardNormal().partial_moments(np.array([-t, t]))[2]
    assert value.vnmse == pytest.approx(t * t * (1 - 1 / 512) - (m2[1] - m2[0]), rel=1e-12)
    assert value.vnmse == pytest.approx(8.5967, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_finite_differences(official_b2_l5, seed):
    rng = np.random.default_rng(seed)
    receiver = np.sort(official_b2_l5 + rng.normal(scale=0.01, size=official_b2_l5.shape), axis=1)
    # Keep the support strictly wider than [-T, T] so every entry moves freely.
    receiver[:, 0] -= 0.05
    receiver[:, -1] += 0.05
    dist = StandardNormal()
    grad = evaluate(receiver, dist, -T_1_512, T_1_512).gradient
    step = 1e-6
    for _ in range(8):
        h, x = rng.integers(32), rng.integers(4)
        up, down = receiver.copy(), receiver.copy()
        up[h, x] += step
        down[h, x] -= step
        numeric = (
            evaluate(up, dist, -T_1_512, T_1_512, gradient=False).vnmse
            - evaluate(down, dist, -T_1_512, T_1_512, gradient=False).vnmse
        ) / (2 * step)
        assert grad[h, x] == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_scipy_normal_matches_closed_form_normal(official_b2_l5):
    closed = evaluate(official_b2_l5, StandardNormal(), -T_1_512, T_1_512)
    generic = evaluate(official_b2_l5, ScipyDistribution(stats.norm()), -T_1_512, T_1_512)
    assert generic.vnmse == pytest.approx(closed.vnmse, rel=1e-10)
    np.testing.assert_allclose(generic.gradient, closed.gradient, rtol=1e-8, atol=1e-14)


def test_monte_carlo_reproduces_objective(official_b2_l5):
    """Sample z ~ N(0,1), encode with the sender, decode with R: mean error^2 = vNMSE."""
    rng = np.random.default_rng(11)
    n = 1_000_000
    z = rng.standard_normal(n)
    inside = np.abs(z) <= T_1_512
    from quicdesign import SenderRule

    rule = SenderRule(official_b2_l5)
    h = rng.integers(0, 32, n)
    decoded = z.copy()
    messages = rule.sample(z[inside], h[inside], rng=rng)
    decoded[inside] = official_b2_l5[h[inside], messages]
    errors = (decoded - z) ** 2
    expected = evaluate(official_b2_l5, StandardNormal(), -T_1_512, T_1_512).vnmse
    tolerance = 5 * errors.std() / np.sqrt(n)
    assert abs(errors.mean() - expected) < tolerance


def test_empirical_distribution_converges_to_population(official_b2_l5):
    sample = np.random.default_rng(5).standard_normal(400_000)
    empirical = evaluate(official_b2_l5, EmpiricalDistribution(sample), -T_1_512, T_1_512)
    exact = evaluate(official_b2_l5, StandardNormal(), -T_1_512, T_1_512)
    # Relative sampling error of a mean of per-point MSE over 4e5 draws is ~0.3 %.
    assert empirical.vnmse == pytest.approx(exact.vnmse, rel=0.02)
