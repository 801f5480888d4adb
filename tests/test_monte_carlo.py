"""Monte Carlo checks of shipped tables: vNMSE and conditional unbiasedness."""

import numpy as np
import pytest

from quicdesign import load_table


def encode_decode(table, z, rng):
    """Sender rule then receiver; values beyond the support are sent exactly."""
    inside = (z >= table.lower) & (z <= table.upper)
    h = rng.integers(0, table.num_shared, z.size)
    decoded = z.copy()
    messages = table.sender.sample(z[inside], h[inside], rng=rng)
    decoded[inside] = table.receiver[h[inside], messages]
    return decoded


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_monte_carlo_vnmse_matches_table(bits):
    table = load_table(bits)
    rng = np.random.default_rng(100 + bits)
    n = 1_000_000
    z = rng.standard_normal(n)
    errors = (encode_decode(table, z, rng) - z) ** 2
    tolerance = 5 * errors.std() / np.sqrt(n)
    assert abs(errors.mean() - table.vnmse) < tolerance


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_mean_error_at_fixed_values_is_zero(bits):
    table = load_table(bits)
    rng = np.random.default_rng(bits)
    n = 200_000
    for value in (-3.0, -1.234, -0.1, 0.0, 0.5, 2.0, table.upper):
        error = encode_decode(table, np.full(n, value), rng) - value
        # Five standard errors; the sample standard deviation is the variance estimate.
        assert abs(error.mean()) < 5 * error.std() / np.sqrt(n) + 1e-12, value
