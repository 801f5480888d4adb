"""The optional compiled kernels give bit-identical sums and byte-identical payloads to the
numpy path, and add_many is exactly a loop of add (same bits, same refusals)."""

import numpy as np
import pytest

from quicdesign import (
    InputVectorError,
    ParameterError,
    PayloadError,
    QuicFLAggregator,
    QuicFLEncoder,
    load_table,
)
from quicdesign._kernels import KERNELS_ENV, compiled_kernels
from quicdesign._wire import pack_codes
from quicdesign.codec import _row_square_sums
from quicdesign.entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder
from quicdesign.rotation import exact_order_fwht
from quicdesign.table import load_entropy_table

pytest.importorskip("numba")

ROUND = 13


@pytest.fixture(autouse=True)
def _compiled_by_default(monkeypatch):
    """These tests compare the paths themselves: the compiled kernels stay available
    when the suite runs with ``QUICDESIGN_KERNELS=numpy`` (each test sets it as needed)."""
    monkeypatch.setenv(KERNELS_ENV, "auto")


def _payloads(bits, dim, magnitude, count=11):
    table = load_table(bits)
    encoder = QuicFLEncoder(table, ROUND)
    rng = np.random.default_rng(bits * 1000 + dim)
    payloads = []
    for client in range(count):
        # heavy tails give exact coordinates; the magnitudes span the accepted range
        x = rng.standard_t(2, dim) * magnitude
        payloads.append(encoder.encode(x.astype(np.float32), client, rng=rng))
    return table, payloads


def _state(aggregator):
    return aggregator._sum.tobytes(), aggregator.total_weight, sorted(aggregator.clients)


def _aggregate(monkeypatch, kernels, table, dim, payloads, weights, batched=True):
    monkeypatch.setenv(KERNELS_ENV, kernels)
    aggregator = QuicFLAggregator(table, ROUND, dim)
    if batched:
        aggregator.add_many(payloads, weights)
    else:
        for payload, weight in zip(payloads, weights, strict=True):
            aggregator.add(payload, weight)
    return aggregator


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dim", [1, 3, 1025, 70_001])
def test_compiled_sums_are_bit_identical_to_numpy(monkeypatch, bits, dim):
    for magnitude in (1.0, 1e30, 1e-30):
        table, payloads = _payloads(bits, dim, magnitude)
        weights = np.random.default_rng(dim).uniform(0.5, 3.0, len(payloads))
        weights[0], weights[1] = 2.0**-256, 2.0**200
        loop = _aggregate(monkeypatch, "numpy", table, dim, payloads, weights, batched=False)
        numpy_batch = _aggregate(monkeypatch, "numpy", table, dim, payloads, weights)
        compiled = _aggregate(monkeypatch, "auto", table, dim, payloads, weights)
        assert compiled_kernels() is not None
        assert _state(compiled) == _state(loop) == _state(numpy_batch)
        assert compiled.result().tobytes() == loop.result().tobytes()


def _sums(monkeypatch, make, payloads, weights):
    """The states of a loop of add (numpy), add_many (numpy), add_many (compiled) and a
    loop of add (compiled), the last two only if equal (then given once)."""
    states = []
    for kernels, batched in (("numpy", False), ("numpy", True), ("auto", True), ("auto", False)):
        monkeypatch.setenv(KERNELS_ENV, kernels)
        aggregator = make()
        if batched:
            aggregator.add_many(payloads, weights)
        else:
            for payload, weight in zip(payloads, weights, strict=True):
                aggregator.add(payload, weight)
        states.append(_state(aggregator) + (aggregator.result().tobytes(),))
    assert states[3] == states[2]
    return states[:3]


@pytest.mark.parametrize("rate", [1, 2, 4])
def test_compiled_entropy_sums_are_bit_identical_to_numpy(monkeypatch, rate):
    # the rANS symbols (one per byte) summed by the same kernel as packed codes
    table = load_entropy_table(rate)
    encoder = QuicFLEntropyEncoder(table, ROUND)
    rng = np.random.default_rng(rate)
    dim = 5001
    payloads = [
        encoder.encode(rng.standard_t(2, dim).astype(np.float32), c, rng=rng) for c in range(10)
    ]
    weights = rng.uniform(0.5, 3.0, len(payloads))
    loop, batch, compiled = _sums(
        monkeypatch, lambda: QuicFLEntropyAggregator(table, ROUND, dim), payloads, weights
    )
    assert compiled == loop == batch


def test_compiled_add_many_sums_every_entropy_version_like_a_loop(monkeypatch):
    # versions 3 (constriction), 4 and 5 mixed in one kernel block: each decoder's codes
    # reach the server kernel as one byte per code
    pytest.importorskip("constriction")
    table = load_entropy_table(2)
    rng = np.random.default_rng(3)
    dim = 3001
    payloads = []
    for client, version in enumerate([3, 4, 5, 3, 5, 4, 3]):
        encoder = QuicFLEntropyEncoder(table, ROUND)
        encoder._wire_version = version
        vector = rng.standard_t(2, dim).astype(np.float32)
        payloads.append(encoder.encode(vector, client, rng=rng))
    weights = rng.uniform(0.5, 3.0, len(payloads))
    loop, batch, compiled = _sums(
        monkeypatch, lambda: QuicFLEntropyAggregator(table, ROUND, dim), payloads, weights
    )
    assert compiled == loop == batch


@pytest.mark.filterwarnings("error")  # numba warns when it casts a read-only array
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_compiled_stratified_sums_are_bit_identical_to_numpy(monkeypatch, bits):
    table = load_table(bits)
    encoder = QuicFLEncoder(table, ROUND, stratified=True)
    rng = np.random.default_rng(bits)
    dim = 3001
    payloads = [
        encoder.encode(rng.standard_t(2, dim).astype(np.float32), c, rng=rng) for c in range(9)
    ]
    # bytes and bytearrays mixed: read-only and writable codes in one kernel block
    payloads = [p if c % 3 == 1 else bytearray(p) for c, p in enumerate(payloads)]
    weights = rng.uniform(0.5, 3.0, len(payloads))
    loop, batch, compiled = _sums(
        monkeypatch,
        lambda: QuicFLAggregator(table, ROUND, dim, stratified=True),
        payloads,
        weights,
    )
    assert compiled == loop == batch


def test_switch_turns_the_compiled_path_off(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "numpy")
    assert compiled_kernels() is None
    monkeypatch.setenv(KERNELS_ENV, "auto")
    assert compiled_kernels() is not None


@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_add_many_stops_at_the_first_refusal_like_a_loop(monkeypatch, kernels):
    table, payloads = _payloads(2, 3000, 1.0, count=12)
    corrupt = payloads[:10] + [payloads[10][:-1], payloads[11]]
    expected = _aggregate(monkeypatch, "numpy", table, 3000, payloads[:10], [1.0] * 10, False)
    aggregator = QuicFLAggregator(table, ROUND, 3000)
    monkeypatch.setenv(KERNELS_ENV, kernels)
    with pytest.raises(PayloadError, match="payload 10"):
        aggregator.add_many(corrupt)
    assert _state(aggregator) == _state(expected)
    for bad in ([payloads[0], payloads[0]], [payloads[11]] * 2):
        fresh = QuicFLAggregator(table, ROUND, 3000)
        with pytest.raises(PayloadError, match="payload 1 .*already added"):
            fresh.add_many(bad)
        assert fresh.count == 1
    with pytest.raises(ParameterError, match="payload 1"):
        QuicFLAggregator(table, ROUND, 3000).add_many(payloads[:2], [1.0, True])
    with pytest.raises(ParameterError, match="2 payloads but 1 weights"):
        QuicFLAggregator(table, ROUND, 3000).add_many(payloads[:2], [1.0])


def _encode(monkeypatch, kernels, table, x, client, seed, stratified=False):
    monkeypatch.setenv(KERNELS_ENV, kernels)
    encoder = QuicFLEncoder(table, ROUND, stratified=stratified)
    return encoder.encode(x, client, rng=np.random.default_rng(seed))


def _extreme_vectors(dim, rng):
    """Heavy tails (exact coordinates), huge and tiny magnitudes, zeros and float64/16."""
    tails = rng.standard_t(2, dim)
    yield tails.astype(np.float32)
    yield (tails * 1e30).astype(np.float32)
    yield (tails * 1e-30).astype(np.float32)
    yield np.zeros(dim, np.float32)
    spikes = np.zeros(dim)
    spikes[rng.integers(0, dim, 3)] = [3e38, -1e38, 1.0]
    yield spikes.astype(np.float32)
    yield tails * 1e20
    yield tails.astype(np.float16)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dim", [1, 3, 1025, 70_001])
def test_compiled_payloads_are_byte_identical_to_numpy(monkeypatch, bits, dim):
    table = load_table(bits)
    rng = np.random.default_rng(bits * 100 + dim)
    for case, x in enumerate(_extreme_vectors(dim, rng)):
        for seed in (0, 1, 2**40 + case):
            stratified = seed == 1
            numpy_bytes = _encode(monkeypatch, "numpy", table, x, case, seed, stratified)
            compiled = _encode(monkeypatch, "auto", table, x, case, seed, stratified)
            assert compiled == numpy_bytes, (case, seed)
    assert compiled_kernels() is not None


@pytest.mark.parametrize("bits", range(1, 9))
def test_compiled_sender_matches_numpy_beyond_the_support(monkeypatch, bits):
    rule = load_table(bits).sender
    rng = np.random.default_rng(bits)
    lower, upper = rule.support
    values = rng.uniform(1.5 * lower, 1.5 * upper, 20_001)
    values[:4] = [lower, upper, np.nextafter(upper, 0), -1e30]
    values = np.concatenate([values, rule.breakpoints])  # every dirty-bucket edge case
    shared = rng.integers(0, rule.num_shared, values.size)
    uniforms = rng.random(values.size)
    for dtype in (np.float32, np.float64):
        monkeypatch.setenv(KERNELS_ENV, "numpy")
        expected = rule.sample(values.astype(dtype), shared, uniforms=uniforms)
        monkeypatch.setenv(KERNELS_ENV, "auto")
        assert np.array_equal(
            rule.sample(values.astype(dtype), shared, uniforms=uniforms), expected
        )


@pytest.mark.parametrize(("num_shared", "num_messages"), [(1, 2), (3, 64), (5, 65), (2, 300)])
def test_compiled_sender_matches_numpy_for_every_entry_width(monkeypatch, num_shared, num_messages):
    # the compiled sender packs level and flags in 1, 2 or 4 bytes by the message count
    from quicdesign.sender import SenderRule

    rng = np.random.default_rng(num_messages)
    rule = SenderRule(np.sort(rng.standard_normal((num_shared, num_messages)) * 3, axis=1))
    lower, upper = rule.support
    values = np.concatenate([rng.uniform(1.2 * lower, 1.2 * upper, 30_001), rule.breakpoints])
    shared = rng.integers(0, num_shared, values.size).astype(np.int8)
    uniforms = rng.random(values.size)
    monkeypatch.setenv(KERNELS_ENV, "numpy")
    expected = rule.sample(values, shared, uniforms=uniforms)
    monkeypatch.setenv(KERNELS_ENV, "auto")
    assert rule.sample(values, shared, uniforms=uniforms).tobytes() == expected.tobytes()
    with pytest.raises(InputVectorError, match="shared value"):
        rule.sample(values[:3], np.array([0, -1, 0], dtype=np.int8), uniforms=uniforms[:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_compiled_scaled_sender_matches_numpy_sample_and_exact_split(monkeypatch, dtype, symmetric):
    # the encoder's fused pass: scale rows, sample levels and split off the outside values
    # as codec's numpy path does (z = rows * factors, sample, then |z| > upper or z < lower)
    from quicdesign.sender import SenderRule

    rng = np.random.default_rng(7 + symmetric)
    if symmetric:
        rule = load_table(3).sender
    else:
        rule = SenderRule(np.sort(rng.standard_normal((4, 8)) * 2 + 0.7, axis=1))
    lower, upper = (float(v) for v in rule.support)
    rows = rng.uniform(1.3 * lower, 1.3 * upper, (5, 4099)).astype(dtype)
    factors = np.array([1.0, 0.5, 3.0, 1e-3, 0.0], dtype=dtype)
    edges = [lower, upper, np.nextafter(dtype(upper), dtype(0)), np.nextafter(dtype(upper), 9)]
    rows[0, :4] = edges  # numpy compares z with the bounds in z's dtype (NEP 50)
    rows[0, 4 : 4 + rule.breakpoints.size] = rule.breakpoints
    shared = rng.integers(0, rule.num_shared, rows.size).astype(np.uint8)
    z = (rows * factors[:, None]).reshape(-1)
    monkeypatch.setenv(KERNELS_ENV, "numpy")
    expected = rule.sample(z, shared, rng=np.random.default_rng(3))
    outside = np.abs(z) > upper if lower == -upper else (z < lower) | (z > upper)
    monkeypatch.setenv(KERNELS_ENV, "auto")
    codes, exact, values = rule.sample_rows(
        compiled_kernels(), rows, factors, (lower, upper), shared, np.random.default_rng(3)
    )
    assert codes.tobytes() == expected.tobytes()
    assert np.array_equal(exact, np.flatnonzero(outside)) and exact.size > 0
    assert values.dtype == dtype and values.tobytes() == z[outside].tobytes()


def test_compiled_sender_refuses_shared_values_out_of_range(monkeypatch):
    rule = load_table(2).sender
    monkeypatch.setenv(KERNELS_ENV, "auto")
    with pytest.raises(InputVectorError, match="shared value"):
        rule.sample(np.zeros(3), np.array([0, rule.num_shared, 0]), rng=np.random.default_rng(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_transform_is_bit_identical(monkeypatch, dtype):
    rng = np.random.default_rng(5)
    for log_n in range(0, 16):
        x = rng.standard_t(1.5, (3, 1 << log_n)) * 10.0 ** rng.integers(-30, 30, (3, 1 << log_n))
        monkeypatch.setenv(KERNELS_ENV, "numpy")
        expected = exact_order_fwht(x.astype(dtype))
        monkeypatch.setenv(KERNELS_ENV, "auto")
        assert exact_order_fwht(x.astype(dtype)).tobytes() == expected.tobytes(), log_n


@pytest.mark.parametrize("bits", range(1, 17))
def test_compiled_packing_is_byte_identical(monkeypatch, bits):
    rng = np.random.default_rng(bits)
    for count in [*range(0, 18), 1000, 4097]:
        codes = rng.integers(0, 1 << bits, count).astype(np.uint16 if bits > 8 else np.uint8)
        codes[: min(count, 2)] = (1 << bits) - 1  # all-ones codes reach every bit
        monkeypatch.setenv(KERNELS_ENV, "numpy")
        expected = pack_codes(codes, bits)
        monkeypatch.setenv(KERNELS_ENV, "auto")
        assert pack_codes(codes, bits) == expected
        assert pack_codes(codes.astype(np.int64), bits) == expected


def _tied_rule(rng, num_shared, num_messages):
    # levels on a coarse grid: tied levels give empty pieces (repeated breakpoints)
    from quicdesign.sender import SenderRule

    receiver = np.round(rng.standard_normal((num_shared, num_messages)) * 2) / 2
    return SenderRule(np.sort(receiver, axis=1))


@pytest.mark.parametrize("table_bytes", [1, 1 << 16, 1 << 22])
@pytest.mark.parametrize("rule", ["bits=1", "bits=4", "bits=8", "tied", "one shared value"])
def test_compiled_sender_states_match_the_numpy_levels_and_fractions(
    monkeypatch, rule, table_bytes
):
    # the state table at any size (64 buckets: most entries dirty, several steps each),
    # against the numpy sampler's deterministic levels, randomizing positions and
    # SenderRule._fraction bit for bit: values on, between and beyond the breakpoints
    import quicdesign.sender

    monkeypatch.setattr(quicdesign.sender, "_MAX_STATE_TABLE_BYTES", table_bytes)
    rng = np.random.default_rng(len(rule) + table_bytes)
    if rule.startswith("bits"):
        sender = load_table(int(rule[5:])).sender
        sender._state_cache = None
    else:
        sender = _tied_rule(rng, 1 if rule.startswith("one") else 5, 9)
    t = sender.breakpoints
    lower, upper = sender.support
    values = np.concatenate(
        [
            rng.uniform(1.3 * lower - 0.1, 1.3 * upper + 0.1, 40_001),
            t,
            np.nextafter(t, -np.inf),
            np.nextafter(t, np.inf),
            [-np.inf, np.inf, -3e38, 3e38],
        ]
    )
    shared = rng.integers(0, sender.num_shared, values.size).astype(np.uint8)
    for dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):  # the numpy buckets of +-3e38 (clipped)
            cast, messages, randomizing, event = sender._levels(values.astype(dtype), shared)
        fractions = sender._fraction(cast[randomizing].astype(np.float64), event)
        states = sender._sample_compiled(compiled_kernels(), values.astype(dtype), shared)
        assert states[0].tobytes() == messages.tobytes()
        assert np.array_equal(states[1], randomizing)
        assert states[2].tobytes() == fractions.tobytes()
    assert sender._state_tables()[2].size >= 64 * sender.num_shared


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_sender_gives_minus_zero_on_a_piece_from_zero_fraction_plus_zero(dtype):
    # as SenderRule._fraction on every numpy (tests/test_sender.py); a sign bit here made
    # the fractions differ from numpy 2.0's in the test above
    from quicdesign.sender import SenderRule

    rule = SenderRule(np.array([[-2.0, 0.0, 2.0]]))
    values = np.array([-0.0, 0.0, 1.0], dtype=dtype)
    _, randomizing, fractions = rule._sample_compiled(
        compiled_kernels(), values, np.zeros(3, np.uint8)
    )
    assert np.array_equal(randomizing, [0, 1, 2])
    assert fractions.tobytes() == np.array([0.0, 0.0, 0.5]).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sign_flip_and_transform_match_the_separate_kernels(dtype):
    # the encoder's fused transform: same peaks (NaN included), same transform bits and
    # same sums of squares as the sign flip + peaks pass, the butterflies and the
    # row sums one after the other, padding included; widths up to 2**17 run the top
    # levels in place and the rest in blocks
    kernels = compiled_kernels()
    rng = np.random.default_rng(11)
    info = np.finfo(dtype)
    unsigned = np.uint32 if dtype == np.float32 else np.uint64
    for log_width in range(2, 18):
        width = 1 << log_width
        for rows in (1, 3) if log_width < 15 else (2,):
            for size in sorted({rows * width, rows * width - 1, (rows - 1) * width + 1}):
                values = rng.standard_t(1.5, size) * 10.0 ** rng.integers(-5, 5, size)
                values = values.astype(dtype)
                picks = rng.integers(0, size, 5)
                values[picks] = [info.max, -info.max, info.tiny / 4, -0.0, 0.0][: picks.size]
                if log_width in (5, 14, 15):
                    values[picks[0]] = np.inf if rows == 1 else np.nan
                signs = np.where(rng.random(rows * width) < 0.5, -1, 1).astype(dtype)
                chunks, scratch = np.empty((rows, width), dtype), np.empty((rows, width), dtype)
                factor = dtype(1.0 / np.sqrt(width))
                expected_peaks = kernels.signed_chunk_peaks(values, signs, chunks)
                expected = (chunks, scratch)[kernels.butterfly_passes(chunks, scratch, factor)]
                expected = expected.copy()
                with np.errstate(invalid="ignore", over="ignore"):
                    expected_sums = kernels.row_square_sums(expected)
                for kind in (dtype, np.int8):  # the encoder's int8 signs widen exactly
                    fused = np.full_like(chunks, 7)
                    sums = np.full(rows, 7.0)
                    with np.errstate(invalid="ignore", over="ignore"):
                        peak_bits = kernels.signed_butterflies(
                            values, values.view(unsigned), signs.astype(kind), fused, factor, sums
                        )
                    peaks = peak_bits.view(dtype).astype(np.float64)
                    assert np.array_equal(peaks, expected_peaks, equal_nan=True), (width, size)
                    assert fused.tobytes() == expected.tobytes(), (width, size)
                    assert np.array_equal(sums, expected_sums, equal_nan=True), (width, size)
                    if np.all(np.isfinite(expected_sums)):
                        assert sums.tobytes() == expected_sums.tobytes(), (width, size)
                narrow_peaks = kernels.signed_chunk_peaks(values, signs.astype(np.int8), chunks)
                assert np.array_equal(narrow_peaks, expected_peaks, equal_nan=True)


def _one_pairwise_tree(values):
    """numpy's pairwise summation written out: 8 running sums per block of at most 128
    values, halves rounded down to a multiple of 8 above that (numpy >= 2.3 sums a whole
    contiguous array so; older numpy sums 8192-value buffers one after the other)."""
    size = values.size
    if size < 8:
        total = 0.0
        for value in values:
            total += value
        return np.float64(total)
    if size <= 128:
        whole = size - size % 8
        partial = values[:8].copy()
        for start in range(8, whole, 8):
            partial += values[start : start + 8]
        total = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + (
            (partial[4] + partial[5]) + (partial[6] + partial[7])
        )
        for value in values[whole:]:
            total += value
        return total
    half = size // 2
    half -= half % 8
    return _one_pairwise_tree(values[:half]) + _one_pairwise_tree(values[half:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_row_square_sums_match_numpys_pairwise_sum(dtype):
    kernels = compiled_kernels()
    rng = np.random.default_rng(17)
    shapes = [
        (1, 0),
        (1, 1),
        (2, 7),
        (3, 8),
        (1, 129),
        (4, 136),
        (5, 1025),
        (3, 128),  # one vectorized block of 128 per row
        (2, 256),
        (2, 512),
        (3, 2048),
        (8, 131072),
        (1, 300_001),
        (2, 16_404),  # halves of 8202 and 4101: split at multiples of 8 above 8192 too
        (1, 70_003),
    ]
    for shape in shapes:
        # extreme magnitudes, and values of one scale (where the order of the additions
        # shows in the last bits: a tree split elsewhere gives other sums)
        magnitude = 10.0 ** rng.uniform(-30, 30, shape)
        extreme = (rng.standard_normal(shape) * magnitude).astype(dtype)
        if extreme.size:
            extreme.flat[0] = np.finfo(np.float32).max  # its square is exact in float64
        for rows in (extreme, rng.standard_normal(shape).astype(dtype)):
            expected = np.array(
                [_one_pairwise_tree(np.square(row, dtype=np.float64)) for row in rows]
            )
            assert kernels.row_square_sums(rows).tobytes() == expected.tobytes(), shape
            # the numpy encoder's row-at-a-time sums too
            assert _row_square_sums(rows).tobytes() == expected.tobytes(), shape
        if extreme.size > 2:
            # inf and NaN propagate to their rows' sums as in numpy (the encoder refuses
            # them earlier, from the rotation's chunk peaks)
            extreme.flat[1], extreme.flat[-1] = np.inf, np.nan
            with np.errstate(invalid="ignore", over="ignore"):
                # one tree, as above: numpy < 2.3's np.add.reduce of a long row differs
                expected = np.array(
                    [_one_pairwise_tree(np.square(row, dtype=np.float64)) for row in extreme]
                )
            got = kernels.row_square_sums(extreme)
            assert np.array_equal(got, expected, equal_nan=True), shape


@pytest.mark.parametrize("name", ["e8", "d4"])
def test_nearest_lattice_point_kernel_is_identical(name):
    """The compiled nearest point equals the numpy one, near-ties and odd sums included."""
    from quicdesign.lattice import lattice_spec, nearest_lattice_point

    spec = lattice_spec(name)
    rng = np.random.default_rng(21)
    x = rng.normal(scale=3.0, size=(spec.block, 20_000))
    x[:, :5000] = np.round(x[:, :5000] * 4) / 4  # exact halves and quarters: ties
    reference = nearest_lattice_point(x, spec, kernels=None)
    compiled = nearest_lattice_point(x, spec)
    assert reference[0].tobytes() == compiled[0].tobytes()
    assert reference[1].tobytes() == compiled[1].tobytes()


def _synthetic_contribution(
    rng, receiver, chunk_size, code_width, codes, raw_shared, mask, positions, values, key
):
    """A GatheredContribution of random chunk scales over the given codes (packed as a
    payload holds them), h bytes or Philox key, and exact positions and values."""
    from quicdesign.stages import GatheredContribution

    packed = np.frombuffer(pack_codes(codes, code_width), np.uint8) if code_width < 8 else codes
    return GatheredContribution(
        receiver,
        rng.uniform(0.1, 10.0, codes.size // chunk_size),
        chunk_size,
        code_width,
        packed,
        code_width,
        raw_shared,
        mask,
        positions.astype(np.uint32),
        values,
        key,
    )


def _assert_server_kernel_sums_like_numpy(accumulator, gathered):
    """The compiled server kernel adds ``gathered`` to ``accumulator`` bit for bit as
    numpy's sum of their materialized contributions, in client order."""
    expected = accumulator.copy()
    for contribution in gathered:
        expected += contribution.materialize()
    compiled_kernels().accumulate_gathered(accumulator, gathered)
    assert accumulator.tobytes() == expected.tobytes(), len(gathered)


@pytest.mark.parametrize("code_width", range(1, 9))
@pytest.mark.parametrize(
    ("chunk_size", "chunks", "shared_bits"), [(4, 3, 2), (2048, 2, 3), (64, 2, 8), (8192, 2, 5)]
)
@pytest.mark.parametrize("streamed", [False, True])
def test_server_kernel_sums_gathered_contributions_like_numpy(
    code_width, chunk_size, chunks, shared_bits, streamed
):
    # synthetic contributions: tiny chunks (no whole bytes of codes), tiles with runs of
    # exact coordinates, and (8 + 8 bits) a 2**16-entry receiver: indices wider than 16 bits;
    # streamed: h given as a Philox key (drawn tile by tile when chunks hold whole words,
    # generated at once for 4-coordinate chunks); 1 to 9 clients: every pass of the sum
    from quicdesign.randomness import key_stream_bytes

    rng = np.random.default_rng(code_width * 100 + shared_bits + chunk_size)
    size = chunk_size * chunks
    receiver = rng.standard_normal(1 << (shared_bits + code_width))
    for clients in (1, 6, 9):
        accumulator = rng.standard_normal(size)
        gathered = []
        for client in range(clients):
            codes = rng.integers(0, 1 << code_width, size, dtype=np.uint8)
            raw_shared = rng.integers(0, 256, size, dtype=np.uint8)
            key = int(rng.integers(0, 2**63)) << 64 | client
            positions = np.flatnonzero(rng.random(size) < (0.3 if client % 2 else 0.01))
            g = _synthetic_contribution(
                rng,
                receiver,
                chunk_size,
                code_width,
                codes,
                None if streamed else raw_shared,
                (1 << shared_bits) - 1,
                positions,
                rng.standard_normal(positions.size) * 10.0 ** rng.integers(-300, 300),
                key if streamed else None,
            )
            if streamed:
                assert g.shared_bytes().tobytes() == key_stream_bytes(key, size).tobytes()
            gathered.append(g)
        _assert_server_kernel_sums_like_numpy(accumulator, gathered)


def test_server_kernel_refuses_byte_arrays_of_unequal_lengths():
    # the kernel reads as many bytes from every client as from the first
    from quicdesign._kernels._numba import _addresses

    same = [np.zeros(16, np.uint8), np.ones(16, np.uint8)]
    assert list(_addresses(same)) == [a.ctypes.data for a in same]
    for bad in ([same[0], np.zeros(15, np.uint8)], [same[0], np.zeros(16, np.uint16)]):
        with pytest.raises(ParameterError, match="equally long"):
            _addresses(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [1, 7, 1025, 70_001])
def test_compiled_sign_flip_and_chunk_peaks_match_numpy(monkeypatch, dtype, dim):
    # scaled_rotate's first passes fused (the padding, every row's peak, NaN propagated)
    from quicdesign.rotation import RotationLayout, scaled_rotate

    layout = RotationLayout.for_dim(dim)
    rng = np.random.default_rng(dim)
    signs = np.where(rng.random(layout.rotated_dim) < 0.5, -1.0, 1.0).astype(dtype)
    reach = 30 if dtype == np.float32 else 290  # magnitudes across the dtype's range
    x = (rng.standard_t(2, dim) * 10.0 ** rng.integers(-reach, reach, dim)).astype(dtype)
    for vector in (x, np.zeros(dim, dtype)):
        monkeypatch.setenv(KERNELS_ENV, "numpy")
        rotated, exponents = scaled_rotate(vector, signs, layout)
        monkeypatch.setenv(KERNELS_ENV, "auto")
        compiled, compiled_exponents = scaled_rotate(vector, signs, layout)
        assert compiled.tobytes() == rotated.tobytes()
        assert np.array_equal(compiled_exponents, exponents)
    chunks = np.empty((layout.num_chunks, layout.chunk_size), dtype)
    x[-1] = np.nan
    peaks = compiled_kernels().signed_chunk_peaks(x, signs, chunks)
    assert np.isnan(peaks[(dim - 1) // layout.chunk_size])
    assert np.array_equal(chunks.reshape(-1)[dim:], np.zeros(layout.rotated_dim - dim))


def test_position_kernels_drop_and_refill_like_a_boolean_mask():
    # the entropy decoder's exact-position bookkeeping: ends, adjacent runs, none, all
    kernels = compiled_kernels()
    rng = np.random.default_rng(11)
    values = rng.integers(1, 256, 40).astype(np.uint8)
    cases = [[], [0], [39], [0, 1, 2, 39], [5, 6, 7, 20, 38, 39], list(range(40))]
    cases += [np.sort(rng.choice(40, k, replace=False)) for k in (3, 17)]
    for case in cases:
        positions = np.asarray(case, dtype=np.intp)
        keep = np.ones(values.size, dtype=bool)
        keep[positions] = False
        dropped = kernels.drop_positions(values, positions)
        assert dropped.tobytes() == values[keep].tobytes(), case
        expected = np.zeros_like(values)
        expected[keep] = values[keep]
        assert kernels.insert_zeros(dropped, positions, values.size).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("kernels", "batched"), [("numpy", False), ("numpy", True), ("auto", True)]
)
def test_threads_sharing_an_aggregator_cannot_add_a_client_twice(monkeypatch, kernels, batched):
    # two threads validate the same client before either commits (a barrier holds them
    # there): the client is checked again when committed, so exactly one of them is added
    import threading

    monkeypatch.setenv(KERNELS_ENV, kernels)
    table, payloads = _payloads(2, 3000, 1.0, count=1)
    expected = _aggregate(monkeypatch, "numpy", table, 3000, payloads, [1.0], batched=False)
    monkeypatch.setenv(KERNELS_ENV, kernels)
    aggregator = QuicFLAggregator(table, ROUND, 3000)
    validated = aggregator._contribution
    both_validated = threading.Barrier(2, timeout=30)

    def contribution(payload, weight):
        result = validated(payload, weight)
        both_validated.wait()
        return result

    aggregator._contribution = contribution
    refusals = []

    def add():
        try:
            if batched:
                aggregator.add_many(payloads)
            else:
                aggregator.add(payloads[0])
        except PayloadError as exc:
            refusals.append(str(exc))

    threads = [threading.Thread(target=add) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(refusals) == 1 and "already added" in refusals[0]
    assert _state(aggregator) == _state(expected)


@pytest.mark.parametrize("code_width", [1, 2])
def test_server_tile_index_big_endian_fallback_matches_the_spread_codes(monkeypatch, code_width):
    # the 1- and 2-bit multiply spread is for little-endian hosts only; the fallback loops
    # (taken on big-endian hosts) run here as Python and must build the same indices
    from quicdesign._kernels import _numba

    rng = np.random.default_rng(code_width)
    count, start = 4096, 4096
    codes = rng.integers(0, 1 << code_width, 3 * count, dtype=np.uint8)
    packed = np.frombuffer(pack_codes(codes, code_width), np.uint8)
    values = rng.integers(0, 256, count, dtype=np.uint8)
    args = (values, 0x1F, 1 << code_width, packed, code_width, start, count)
    compiled = np.zeros(count, np.uint16)
    _numba._tile_index(compiled, *args)
    results = []
    for little in (True, False):
        monkeypatch.setattr(_numba, "_LITTLE_ENDIAN", little)
        out = np.zeros(count, np.uint16)
        _numba._tile_index.py_func(out, *args)
        results.append(out)
    expected = (values & 0x1F).astype(np.uint16) * (1 << code_width) + codes[start : start + count]
    for out in (compiled, *results):
        assert np.array_equal(out, expected)


@pytest.mark.parametrize("code_width", [1, 3, 8])
def test_server_kernel_with_every_coordinate_exact(code_width):
    # a whole tile of exact values fills every extra slot after the client's table

    rng = np.random.default_rng(code_width)
    chunk_size, chunks = 8192, 2
    size = chunk_size * chunks
    receiver = rng.standard_normal(1 << (code_width + 2))
    accumulator = rng.standard_normal(size)
    gathered = []
    for client in range(5):
        everything = client % 2 == 0
        positions = np.arange(size) if everything else np.arange(1, size, 2)
        codes = rng.integers(0, 1 << code_width, size, dtype=np.uint8)
        g = _synthetic_contribution(
            rng,
            receiver,
            chunk_size,
            code_width,
            codes,
            None,
            3,
            positions,
            rng.standard_normal(positions.size),
            int(rng.integers(0, 2**63)) << 64 | client,
        )
        gathered.append(g)
    _assert_server_kernel_sums_like_numpy(accumulator, gathered)


@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_payload_buffers_changed_after_validation_do_not_change_the_sum(monkeypatch, kernels):
    # the compiled server reads codes by address: a writable payload (bytearray, uint8
    # array) is copied when read, so zeroing or emptying it between its validation and
    # the block's sum changes nothing
    table, payloads = _payloads(3, 3000, 1.0, count=10)
    expected = _aggregate(monkeypatch, "numpy", table, 3000, payloads, [1.0] * 10, False)
    monkeypatch.setenv(KERNELS_ENV, kernels)
    aggregator = QuicFLAggregator(table, ROUND, 3000)
    validated = aggregator._contribution

    def contribution(payload, weight):
        result = validated(payload, weight)
        if isinstance(payload, bytearray):
            del payload[:]  # resized: its old memory may be freed
        else:
            payload[:] = 0
        return result

    aggregator._contribution = contribution
    writable = [
        bytearray(p) if c % 2 else np.frombuffer(p, np.uint8).copy() for c, p in enumerate(payloads)
    ]
    aggregator.add_many(writable)
    assert _state(aggregator) == _state(expected)


def test_server_kernel_refuses_contributions_it_would_read_past():
    # the kernel reads by address without bounds checks: too few code or shared bytes,
    # scales for another length or an exact position outside the sum are refused first
    from quicdesign.stages import GatheredContribution

    size, chunk_size = 8192, 4096

    def gathered(codes=size // 4, shared=size, chunks=2, last=size - 1, key=None, values=2):
        return GatheredContribution(
            np.ones(1 << 4),
            np.ones(chunks),
            chunk_size,
            2,
            np.zeros(codes, np.uint8),
            2,
            None if key is not None else np.zeros(shared, np.uint8),
            3,
            np.array([0, last], np.uint32),
            np.ones(values),
            key,
        )

    accumulator = np.zeros(size)
    compiled_kernels().accumulate_gathered(accumulator, [gathered(), gathered(key=5)])
    assert accumulator[0] == accumulator[-1] == 2.0
    for bad in (
        gathered(codes=size // 4 - 1),
        gathered(shared=size - 1),
        gathered(chunks=1),
        gathered(last=size),
        gathered(values=1),
    ):
        with pytest.raises(ParameterError, match="outside|too few|do not cover"):
            compiled_kernels().accumulate_gathered(np.zeros(size), [bad, bad])


@pytest.mark.parametrize("kernels", ["numpy", "auto"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dim", [1, 3, 1000, 5000])
def test_encoder_refuses_non_finite_values_found_by_the_rotation(monkeypatch, kernels, dtype, dim):
    """The encoder leaves NaN/inf to the rotation's chunk peaks (no pass of its own):
    each is still refused, naming the first bad index, on both paths."""
    monkeypatch.setenv(KERNELS_ENV, kernels)
    encoder = QuicFLEncoder(load_table(2), ROUND)
    rng = np.random.default_rng(dim)
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    finfo = np.finfo(dtype)
    exponent_bits = (1 << (finfo.bits - 1)) - (1 << finfo.nmant)  # inf's bits
    # a signaling NaN (quiet bit clear) and a negative one: no RuntimeWarning (pytest
    # makes ours errors) from casting or multiplying them before the refusal
    signaling, negative = exponent_bits | 1, (1 << (finfo.bits - 1)) | exponent_bits | 1
    nans = np.array([signaling, negative], dtype=unsigned).view(dtype)
    for bad in (np.nan, np.inf, -np.inf, *nans):
        for first in {0, dim // 2, dim - 1}:
            x = rng.standard_normal(dim).astype(dtype)
            x.view(unsigned)[first] = np.asarray(bad, dtype=dtype).view(unsigned)
            x[first + 1 :: 7] = np.nan  # later bad values do not change the message
            with pytest.raises(InputVectorError, match=f"non-finite value .* at index {first}$"):
                encoder.encode(x, 0, rng=1)
    # finite extremes still encode (the peaks' check refuses only NaN and inf)
    x = np.full(dim, np.finfo(dtype).tiny, dtype=dtype)
    x[::256] = min(float(np.finfo(dtype).max), 1e30)
    assert len(encoder.encode(x, 0, rng=1)) > 0
