"""The closed-form sender rule: simplex, unbiasedness, optimality structure."""

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quicdesign import SenderRule, TableError


def receivers(max_shared_bits=3, max_bits=3):
    @st.composite
    def build(draw):
        num_shared = 2 ** draw(st.integers(0, max_shared_bits))
        num_messages = 2 ** draw(st.integers(1, max_bits))
        values = draw(
            hnp.arrays(
                np.float64,
                (num_shared, num_messages),
                elements=st.floats(-8, 8, allow_nan=False, allow_subnormal=False),
            )
        )
        return np.sort(values, axis=1)

    return build()


@settings(max_examples=60, deadline=None)
@given(receivers(), st.floats(0, 1))
def test_probabilities_are_a_simplex_and_unbiased(receiver, position):
    rule = SenderRule(receiver)
    lo, hi = rule.support
    z = np.array([lo, hi, lo + position * (hi - lo)])
    probs = rule.message_probabilities(z)
    assert probs.min() >= 0
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-12)
    mean = np.einsum("nhx,hx->n", probs, receiver) / receiver.shape[0]
    np.testing.assert_allclose(mean, z, atol=1e-9 * max(1, np.abs(receiver).max()))


@settings(max_examples=40, deadline=None)
@given(receivers(), st.floats(0, 1))
def test_at_most_one_shared_value_randomizes(receiver, position):
    rule = SenderRule(receiver)
    lo, hi = rule.support
    probs = rule.message_probabilities(np.array([lo + position * (hi - lo)]))[0]
    fractional = np.sum((probs > 1e-12) & (probs < 1 - 1e-12), axis=1)
    assert np.sum(fractional > 0) <= 1


@settings(max_examples=40, deadline=None)
@given(receivers(), st.floats(0, 1))
def test_closed_form_error_matches_probabilities(receiver, position):
    rule = SenderRule(receiver)
    lo, hi = rule.support
    z = np.array([lo + position * (hi - lo)])
    probs = rule.message_probabilities(z)
    second = np.einsum("nhx,hx->n", probs, receiver**2) / receiver.shape[0]
    np.testing.assert_allclose(rule.mse(z), second - z**2, atol=1e-9 * max(1, receiver.max() ** 2))


def test_sample_frequencies_match_probabilities(official_b2_l5):
    rule = SenderRule(official_b2_l5)
    rng = np.random.default_rng(3)
    n = 200_000
    z = np.full(n, 0.731)
    h = rng.integers(0, 32, n)
    messages = rule.sample(z, h, rng=rng)
    probs = rule.message_probabilities(z[:1])[0]  # (H, K)
    for shared in (0, 7, 31):
        counts = np.bincount(messages[h == shared], minlength=4) / np.sum(h == shared)
        # Binomial standard error of a frequency over ~6000 draws is at most 0.0065.
        np.testing.assert_allclose(counts, probs[shared], atol=5 * 0.0065)


def test_rejects_unsorted_and_non_finite_rows():
    with pytest.raises(TableError, match="non-decreasing"):
        SenderRule([[1.0, 0.0]])
    with pytest.raises(TableError, match="non-finite"):
        SenderRule([[0.0, np.inf]])
    with pytest.raises(TableError, match="shape"):
        SenderRule([1.0, 2.0])


@settings(max_examples=60, deadline=None)
@given(receivers(max_shared_bits=4, max_bits=4), st.integers(0, 2**32 - 1))
def test_bucket_locator_agrees_with_binary_search(receiver, seed):
    rule = SenderRule(receiver)
    lo, hi = rule.support
    assume(hi > lo)
    rng = np.random.default_rng(seed)
    t = rule.breakpoints
    # Random points plus every breakpoint and its float neighbours: the hard cases.
    values = np.concatenate(
        [
            rng.uniform(lo, hi, 500),
            t,
            np.nextafter(t, -np.inf),
            np.nextafter(t, np.inf),
        ]
    )
    values = np.clip(values, lo, hi)
    event = rule.locate(values)
    t_event, t_next = t[event], t[event + 1]
    assert np.all(t_event <= values)
    open_piece = t_next > t_event
    assert np.all(open_piece)
    assert np.all((values < t_next) | (values == hi))


def test_minus_zero_on_a_piece_starting_at_zero_has_fraction_plus_zero():
    # -0.0 - 0.0 is -0.0, which np.clip keeps from numpy 2.1 on (2.0 gives +0.0): the
    # fraction must not depend on the numpy version (tests/test_kernels.py: nor on the path)
    rule = SenderRule(np.array([[-2.0, 0.0, 2.0]]))
    event, fraction = rule.pieces(np.array([-0.0, 0.0, 1.0]))
    assert np.array_equal(event, [1, 1, 1])
    assert fraction.tobytes() == np.array([0.0, 0.0, 0.5]).tobytes()


def test_sample_clamps_values_beyond_the_support(official_b2_l5):
    rule = SenderRule(official_b2_l5)
    lo, hi = rule.support
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(lo - 5, lo, 200), rng.uniform(hi, hi + 5, 200)])
    shared = rng.integers(0, 32, values.size)
    uniforms = rng.random(values.size)
    clamped = np.clip(values, lo, hi)
    np.testing.assert_array_equal(
        rule.sample(values, shared, uniforms=uniforms),
        rule.sample(clamped, shared, uniforms=uniforms),
    )


@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_sample_refuses_what_it_cannot_send(monkeypatch, official_b2_l5, kernels):
    """Our errors on both paths, never a read past ``shared`` (the compiled sender has
    no bounds checks), a numpy IndexError or levels of a wrapped-around ``h``."""
    from quicdesign import InputDTypeError, InputVectorError
    from quicdesign._kernels import KERNELS_ENV

    monkeypatch.setenv(KERNELS_ENV, kernels)
    rule = SenderRule(official_b2_l5)
    rng = np.random.default_rng(0)
    values = rng.standard_normal(20_000)
    shared = rng.integers(0, rule.num_shared, values.size)
    with_nan = values.copy()
    with_nan[-1] = np.nan
    bad = [
        (values, shared[:-1], {}, InputVectorError),  # one h short: read past it
        (values, shared[:10], {}, InputVectorError),
        (values.reshape(100, 200), shared.reshape(100, 200), {}, InputVectorError),
        (values, np.where(shared == 3, -1, shared), {}, InputVectorError),  # h = -1
        (values, np.full(values.size, rule.num_shared), {}, InputVectorError),
        (values, shared.astype(float), {}, InputDTypeError),
        (values.astype(complex), shared, {}, InputDTypeError),
        (with_nan, shared, {}, InputVectorError),
        (values, shared, {"uniforms": np.zeros(10)}, InputVectorError),
    ]
    for vector, h, options, error in bad:
        with pytest.raises(error):
            rule.sample(vector, h, rng=np.random.default_rng(1), **options)
    # the infinities are clamped to the ends, as any value beyond them
    ends = np.array([-np.inf, np.inf, *rule.support])
    sent = rule.sample(ends, np.zeros(4, dtype=np.int64), rng=np.random.default_rng(1))
    assert sent[:2].tolist() == sent[2:].tolist()


@pytest.mark.parametrize("bits, shared_bits", [(8, 3), (4, 8), (2, 8)])
def test_float32_values_near_bucket_edges_and_breakpoints_are_located_exactly(bits, shared_bits):
    """The bucket locator computes the bucket of float32 input in float32; its safety
    margin must send every value whose bucket index may round across a breakpoint to the
    exact search. Probe float32 values within a few ulps of every bucket edge and every
    breakpoint and compare with a float64 binary search of the same values."""
    from quicdesign import load_table

    rule = load_table(bits, shared_bits).sender
    low, per_unit, first, _ = rule._locator
    edges = low + np.arange(first.size + 1) / per_unit
    centres = np.concatenate([edges, rule.breakpoints]).astype(np.float32)
    probes = [centres]
    for direction in (np.inf, -np.inf):
        step = centres
        for _ in range(4):
            step = np.nextafter(step, np.float32(direction))
            probes.append(step)
    values = np.concatenate(probes)
    start, end = rule.support
    values = values[(values >= start) & (values <= end)]
    exact = np.clip(
        np.searchsorted(rule.breakpoints, values.astype(np.float64), side="right") - 1,
        0,
        rule._last_open,
    )
    located = rule.locate(values)
    misplaced = np.flatnonzero(located != exact)
    assert misplaced.size == 0, values[misplaced[:5]]


def _row_sampler_cases(rule, dtype, rng):
    """Rows whose products with their factors hit the hard cases: bucket edges,
    breakpoints and their float neighbours, the support's ends, beyond it, and 0."""
    low, per_unit, first, _ = rule._locator
    lo, hi = rule.support
    edges = low + np.arange(first.size + 1) / per_unit if per_unit > 0 else np.array([lo])
    centres = np.concatenate([edges, rule.breakpoints, [lo, hi, -hi, 0.0]]).astype(dtype)
    probes = [centres]
    for direction in (np.inf, -np.inf):
        step = centres
        for _ in range(3):
            step = np.nextafter(step, dtype(direction))
            probes.append(step)
    span = max(hi - lo, 1.0)
    probes.append(rng.normal(0, span / 4, 3001).astype(dtype))
    probes.append(rng.uniform(lo - span, hi + span, 500).astype(dtype))
    values = rng.permutation(np.concatenate(probes))
    width = 1 + values.size // 2  # two rows of an odd width, then a row of zeros
    rows = np.zeros(3 * width, dtype=dtype)
    rows[: values.size] = values
    return rows.reshape(3, width)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits, shared_bits", [(b, None) for b in range(1, 9)] + [(2, 8), (4, 8)])
def test_numpy_row_sampler_matches_the_reference_bit_for_bit(monkeypatch, bits, shared_bits, dtype):
    """The numpy encoder's tiled sampler gives the reference's messages (coin flips
    included), exact positions and values, over several tiles per row."""
    import quicdesign.sender as sender_module
    from quicdesign import load_table

    monkeypatch.setattr(sender_module, "_NUMPY_TILE", 256)
    table = load_table(bits, shared_bits)
    rule = table.sender
    rng = np.random.default_rng(bits)
    rows = _row_sampler_cases(rule, dtype, rng)
    # factor 1 keeps the probes exact, 0.75 scales them; the zero row has factor 0
    factors = np.array([1.0, 0.75, 0.0], dtype=dtype)
    shared = rng.integers(0, rule.num_shared, rows.size).astype(np.uint8)
    expected = rule._sample_rows_reference(
        rows, factors, table.support, shared, np.random.default_rng(7)
    )
    got = rule.sample_rows_numpy(rows, factors, table.support, shared, np.random.default_rng(7))
    assert expected[1].size > 0  # some values lie outside the support
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.dtype == theirs.dtype
        assert mine.tobytes() == theirs.tobytes()


def test_row_samplers_refuse_sizes_the_compiled_pass_would_read_past():
    """``sample_rows`` (compiled, no bounds checks) and ``sample_rows_numpy`` check the
    sizes they index by: one ``h`` per value, one factor per row, 2-D float rows."""
    from quicdesign import InputDTypeError, InputVectorError, load_table
    from quicdesign._kernels import compiled_kernels

    table = load_table(4)
    rule = table.sender
    rows = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    factors, shared = np.ones(4, np.float32), np.zeros(rows.size, np.uint8)
    bad = [
        (rows, factors, shared[:-5], InputVectorError),  # h short: read past it
        (rows, factors[:1], shared, InputVectorError),  # a factor short: read past them
        (rows.reshape(-1), factors, shared, InputVectorError),
        (rows.astype(np.int64), factors, shared, InputDTypeError),
    ]
    kernels = compiled_kernels()
    samplers = [rule.sample_rows_numpy]
    if kernels is not None:
        samplers.append(lambda *args: rule.sample_rows(kernels, *args))
    for sampler in samplers:
        for values, scale, h, error in bad:
            with pytest.raises(error):
                sampler(values, scale, table.support, h, np.random.default_rng(0))


_TINY_PIECE = np.zeros((8, 2))
_TINY_PIECE[0, 1] = 2.0**-1022  # a piece 1/8 of it wide (subnormal): |z| / width overflows


@settings(max_examples=40, deadline=None)
@given(receivers(max_shared_bits=4, max_bits=4), st.integers(0, 2**32 - 1))
@example(receiver=_TINY_PIECE, seed=0)
def test_numpy_row_sampler_matches_the_reference_on_any_receiver(receiver, seed):
    # degenerate receivers too: equal rows, empty pieces, one shared value
    rule = SenderRule(receiver)
    rng = np.random.default_rng(seed)
    rows = _row_sampler_cases(rule, np.float64, rng)
    factors = np.array([1.0, 0.5, 0.0])
    shared = rng.integers(0, rule.num_shared, rows.size).astype(np.uint8)
    lo, hi = rule.support
    # the support itself, and bounds inside it (entropy tables send a wider tail exactly)
    for bounds in [(lo, hi), (0.7 * lo + 0.3 * hi, 0.3 * lo + 0.7 * hi)]:
        expected = rule._sample_rows_reference(
            rows, factors, bounds, shared, np.random.default_rng(3)
        )
        got = rule.sample_rows_numpy(rows, factors, bounds, shared, np.random.default_rng(3))
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("rate", [1, 3])
def test_numpy_row_sampler_matches_the_reference_for_entropy_tables(monkeypatch, rate):
    # their exactly-sent tail starts inside the sender's support, away from its end buckets
    import quicdesign.sender as sender_module
    from quicdesign import load_entropy_table

    monkeypatch.setattr(sender_module, "_NUMPY_TILE", 512)
    table = load_entropy_table(rate)
    rule = table.sender
    assert table.support[1] < rule.support[1]
    rng = np.random.default_rng(rate)
    rows = _row_sampler_cases(rule, np.float32, rng)
    factors = np.array([1.0, 0.75, 0.0], dtype=np.float32)
    shared = rng.integers(0, rule.num_shared, rows.size).astype(np.uint8)
    expected = rule._sample_rows_reference(
        rows, factors, table.support, shared, np.random.default_rng(2)
    )
    got = rule.sample_rows_numpy(rows, factors, table.support, shared, np.random.default_rng(2))
    assert expected[1].size > 0
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.dtype == theirs.dtype
        assert mine.tobytes() == theirs.tobytes()
