"""Entropy-coded designs: exact rate, code model, runtime round trips, hostile streams."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import solvers
from quicdesign import ParameterError, PayloadError, _rans, load_table
from quicdesign.entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder
from quicdesign.reference import EDEN_VNMSE, values
from quicdesign.table import load_entropy_table
from solvers.rate import design_entropy_coded, rate_point

from ._fuzz import MUTATIONS, assert_rejected_or_harmless, mutate
from ._wire_layout import QUICFL

EDEN = values(EDEN_VNMSE)
ROUND = 99


@pytest.mark.parametrize("rate", [1, 2, 3, 4])
def test_shipped_entropy_tables_meet_the_targets(rate):
    table = load_entropy_table(rate)
    assert table.code_model is not None
    assert solvers.verify(table, grid_points=2001).ok
    bound = EDEN[rate] if rate == 1 else 0.75 * EDEN[rate]
    assert table.vnmse <= bound
    assert table.manifest["coding"]["expected_bits"] <= rate
    assert table.manifest["design"]["certificate"]["ok"]


def test_code_model_and_rate_match_monte_carlo():
    result = design_entropy_coded(delta=1.0, shared_bits=2, certify=False)
    table = result.table
    rng = np.random.default_rng(0)
    n = 400_000
    z = rng.standard_normal(n)
    z = z[(z >= table.lower) & (z <= table.upper)]
    h = rng.integers(0, table.num_shared, z.size)
    x = table.sender.sample(z, h, rng=rng)
    for shared in range(table.num_shared):
        freq = np.bincount(x[h == shared], minlength=table.num_messages) / np.sum(h == shared)
        # Multinomial standard error of each frequency is below 0.0016 for ~1e5 draws.
        np.testing.assert_allclose(freq, table.code_model[shared], atol=5 * 0.0016)
    empirical = -np.mean(np.log2(table.code_model[h, x]))
    assert empirical == pytest.approx(result.entropy_bits, abs=0.01)


def test_rate_decreases_and_distortion_increases_with_the_step():
    points = [rate_point(solvers.rate.dithered_receiver(s, 3, 5.0)) for s in (0.3, 0.6, 1.2)]
    rates = [p.expected_bits for p in points]
    errors = [p.vnmse for p in points]
    assert rates == sorted(rates, reverse=True) and errors == sorted(errors)
    for step, point in zip((0.3, 0.6, 1.2), points, strict=True):
        assert point.vnmse == pytest.approx(step**2 / 12, rel=0.02)


def test_lambda_sweep_traces_a_monotone_curve():
    curve = solvers.rate.rate_distortion_curve([0.002, 0.02, 0.2], shared_bits=2)
    bits = [r.expected_bits for r in curve]
    assert bits == sorted(bits, reverse=True)
    assert [r.vnmse for r in curve] == sorted(r.vnmse for r in curve)


def test_entropy_design_rejects_bad_requests():
    with pytest.raises(ParameterError, match="exactly one"):
        design_entropy_coded(target_bits=2, delta=1.0)
    with pytest.raises(ParameterError, match="target_bits"):
        design_entropy_coded(target_bits=40)
    with pytest.raises(ParameterError, match="code_model"):
        QuicFLEntropyEncoder(load_table(2), ROUND)


@pytest.fixture(scope="module")
def table2():
    return load_entropy_table(2)


def test_runtime_round_trip_bits_and_vnmse(table2):
    d, trials = 2**16, 6
    rng = np.random.default_rng(1)
    encoder = QuicFLEntropyEncoder(table2, ROUND)
    errors, bits = [], []
    for client in range(trials):
        x = rng.standard_normal(d)
        aggregator = QuicFLEntropyAggregator(table2, ROUND, d)
        payload = encoder.encode(x, client, rng=rng)
        aggregator.add(payload)
        errors.append(np.sum((aggregator.result() - x) ** 2) / np.sum(x**2))
        # the fixed part (48-byte header, 4 bytes per chunk norm) is not coding cost
        bits.append(8 * (len(payload) - 48 - 4 * 8) / d)
    standard_error = np.std(errors, ddof=1) / np.sqrt(trials)
    assert abs(np.mean(errors) - table2.vnmse) < 4 * standard_error
    expected = table2.manifest["coding"]["expected_bits"]
    # v5 quantizes the model to 2**12 slots: that costs its divergence from the code model
    p = table2.code_model
    q = _rans.RansModel(p, prob_bits=_rans.WIDE_PROB_BITS).freq / 2.0**_rans.WIDE_PROB_BITS
    divergence = np.mean(np.sum(p * np.log2(np.where(p > 0, p / q, 1.0)), axis=1))
    assert 0.001 < divergence < 0.003
    # exact coordinates, the 16 lane states and integer division cost a few more bytes
    assert expected + divergence <= np.mean(bits) < expected + divergence + 0.008


def test_unbiased_and_merge_consistent(table2):
    d, n = 500, 400
    x = np.random.default_rng(2).lognormal(size=d)
    encoder = QuicFLEntropyEncoder(table2, ROUND)
    rng = np.random.default_rng(3)
    payloads = [encoder.encode(x, c, rng=rng) for c in range(n)]
    whole, left, right = (QuicFLEntropyAggregator(table2, ROUND, d) for _ in range(3))
    singles = []
    for client, payload in enumerate(payloads):
        whole.add(payload)
        (left if client % 2 else right).add(payload)
        single = QuicFLEntropyAggregator(table2, ROUND, d)
        single.add(payload)
        singles.append(single.result())
    singles = np.array(singles)
    standard_error = singles.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(whole.result() - x) < 5 * standard_error)
    left.merge(right)
    np.testing.assert_allclose(left.result(), whole.result(), rtol=1e-12)
    np.testing.assert_allclose(whole.result(), singles.mean(axis=0), rtol=1e-9)


@pytest.fixture(scope="module")
def valid(table2):
    x = np.random.default_rng(4).standard_t(2, size=3000)
    encoder = QuicFLEntropyEncoder(table2, ROUND)
    rng = np.random.default_rng(5)
    return [encoder.encode(x, c, rng=rng) for c in range(2)]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_fuzzed_coded_payloads_never_corrupt_the_aggregator(table2, valid, edits):
    aggregator = QuicFLEntropyAggregator(table2, ROUND, 3000)
    aggregator.add(valid[0])
    assert_rejected_or_harmless(aggregator, mutate(valid[1], edits))


def test_fixed_rate_payload_is_refused_by_entropy_aggregator(table2):
    from quicdesign import QuicFLEncoder

    fixed = QuicFLEncoder(load_table(2), ROUND).encode(np.ones(100), 0)
    with pytest.raises(PayloadError, match="magic"):
        QuicFLEntropyAggregator(table2, ROUND, 100).add(fixed)


def test_rate_point_missing_field_is_an_attribute_error():
    point = rate_point(solvers.rate.dithered_receiver(0.6, 3, 5.0))
    assert point.vnmse == point["vnmse"]
    assert not hasattr(point, "no_such_field")
    with pytest.raises(AttributeError, match="no_such_field"):
        point.no_such_field  # noqa: B018


def _redigested(payload, chunks, edit):
    """Apply ``edit`` to the v4 or v5 stream (states, words) and recompute count and
    digest, so only the rANS decoder's own checks stand between the stream and the
    aggregator."""
    import struct

    from quicdesign.entropy import _stream_digest

    version = payload[4]
    words_at = QUICFL["norms"] + 4 * chunks
    words, symbols = struct.unpack_from("<II", payload, words_at)
    lanes = _rans.wide_lanes(symbols) if version == 5 else _rans.LANES
    stream_at = len(payload) - 2 * words - 4 * lanes
    states = np.frombuffer(payload, "<u4", lanes, stream_at).copy()
    stream = np.frombuffer(payload, "<u2", words, stream_at + 4 * lanes).copy()
    states, stream = edit(states, stream)
    head = bytearray(payload[:stream_at])
    struct.pack_into("<I", head, words_at, stream.size)
    head[words_at + 8 : words_at + 16] = _stream_digest(states, stream, version)
    return bytes(head) + states.astype("<u4").tobytes() + stream.astype("<u2").tobytes()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s, w: (s, w[:-1]), "ends before"),
        (lambda s, w: (s, np.append(w, np.uint16(7))), "left after"),
        (lambda s, w: (np.where(np.arange(s.size) == 2, s ^ (1 << 30), s), w), "stream"),
        (lambda s, w: (np.where(np.arange(s.size) == 0, 1 << 15, s), w), "below"),
        (lambda s, w: (s[:-1], w), "truncated"),
    ],
)
@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize("dim", [3000, 2**18 + 70_000])
def test_rans_stream_checks_hold_without_the_digest(table2, edit, message, version, dim):
    """Both rANS versions, the wide one with 16 lanes and with 32 (2**18 symbols and more)."""
    from quicdesign.rotation import RotationLayout

    x = np.random.default_rng(6).standard_normal(dim)
    encoder = QuicFLEntropyEncoder(table2, ROUND)
    encoder._wire_version = version
    payload = encoder.encode(x, 3, rng=1)
    assert payload[4] == version
    edited = _redigested(payload, RotationLayout.for_dim(dim).num_chunks, edit)
    assert (
        _redigested(payload, RotationLayout.for_dim(dim).num_chunks, lambda s, w: (s, w)) == payload
    )
    aggregator = QuicFLEntropyAggregator(table2, ROUND, dim)
    with pytest.raises(PayloadError, match=message):
        aggregator.add(edited)
    assert aggregator.count == 0
    aggregator.add(payload)
    assert aggregator.count == 1


def _documented_stream_check(stream: bytes) -> bytes:
    """docs/wire-format.md's version 5 check in plain Python integers."""
    mask = (1 << 64) - 1

    def fmix64(z):
        for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            z ^= z >> 33
            z = (z * multiplier) & mask
        return z ^ (z >> 33)

    padded = stream + bytes(-len(stream) % 8)
    total = 0
    for i in range(len(padded) // 8):
        value = int.from_bytes(padded[8 * i : 8 * i + 8], "little")
        total += fmix64((value + (i + 1) * 0x9E3779B97F4A7C15) & mask)
    return fmix64((total & mask) ^ len(stream)).to_bytes(8, "little")


@pytest.mark.parametrize("version", [5, 4])
def test_stream_digest_is_the_documented_one(table2, version):
    """docs/wire-format.md: the digest field covers the payload's last 4 * lanes + 2 * w
    bytes (states || words): version 5 with the multiply-xorshift stream check, version
    4 with blake2b(8 bytes, person quicdesign.rans4)."""
    import hashlib
    import struct

    from quicdesign.rotation import RotationLayout

    dim = 2**20 - 3  # 2**20 rotated positions, a few exact: 64 lanes in version 5
    encoder = QuicFLEntropyEncoder(table2, ROUND)
    encoder._wire_version = version
    payload = encoder.encode(np.random.default_rng(4).standard_normal(dim), 2, rng=3)
    words_at = QUICFL["norms"] + 4 * RotationLayout.for_dim(dim).num_chunks
    words, symbols = struct.unpack_from("<II", payload, words_at)
    lanes = {5: 64, 4: 8}[version]
    assert _rans.wide_lanes(symbols) == 64
    stream = payload[len(payload) - 4 * lanes - 2 * words :]
    if version == 5:
        digest = _documented_stream_check(stream)
    else:
        digest = hashlib.blake2b(stream, digest_size=8, person=b"quicdesign.rans4").digest()
    assert payload[words_at + 8 : words_at + 16] == digest


@pytest.mark.parametrize("words", [0, 1, 2, 3, 4, 5, 7, 4099])
@pytest.mark.parametrize("kernels", ["auto", None])
def test_stream_check_matches_its_definition_and_sees_any_one_value(words, kernels):
    """Compiled and numpy checks equal the documented one for every tail length (0-3
    words past whole 8-byte values); any change inside one 8-byte value, and a dropped
    or added zero word, changes it."""
    rng = np.random.default_rng(words)
    states = rng.integers(1 << 16, 1 << 32, 16, dtype=np.uint32)
    stream = rng.integers(0, 1 << 16, words, dtype=np.uint16)
    data = states.astype("<u4").tobytes() + stream.astype("<u2").tobytes()
    check = _rans.stream_check(states, stream, kernels=kernels)
    assert check == _documented_stream_check(data)
    for _ in range(20):
        edited = bytearray(data)
        at = int(rng.integers(len(data) // 8)) * 8
        edited[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        if edited != data:
            edited_states = np.frombuffer(bytes(edited[:64]), "<u4")
            edited_words = np.frombuffer(bytes(edited[64:]), "<u2")
            assert _rans.stream_check(edited_states, edited_words, kernels=kernels) != check
    zero_added = np.append(stream, np.uint16(0))
    assert _rans.stream_check(states, zero_added, kernels=kernels) != check
    if words and stream[-1] == 0:
        assert _rans.stream_check(states, stream[:-1], kernels=kernels) != check
