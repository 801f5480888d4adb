"""Hostile QDQE version 5 payloads: every single-bit flip, all-exact and one-coded
payloads, refusals inside add_many; the numpy and compiled servers agree on each."""

import struct

import numpy as np
import pytest

from quicdesign import PayloadError
from quicdesign._kernels import KERNELS_ENV, compiled_kernels
from quicdesign._wire import PayloadWriter
from quicdesign.entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder
from quicdesign.rotation import RotationLayout
from quicdesign.table import load_entropy_table

from ._wire_layout import QUICFL

ROUND = 31
PATHS = ["numpy"] + (["auto"] if compiled_kernels() is not None else [])


def _state(aggregator):
    return aggregator._sum.tobytes(), aggregator.total_weight, sorted(aggregator.clients)


def _outcome(monkeypatch, kernels, table, dim, base, payload):
    """The aggregator's state after adding ``payload`` to one holding ``base``, or the
    refusal's message (the state then checked unchanged)."""
    monkeypatch.setenv(KERNELS_ENV, kernels)
    aggregator = QuicFLEntropyAggregator(table, ROUND, dim)
    aggregator.add(base)
    before = _state(aggregator)
    try:
        aggregator.add(payload)
    except PayloadError as exc:
        assert _state(aggregator) == before
        return str(exc)
    return _state(aggregator)


def test_every_single_bit_flip_is_refused_alike_or_harmless(monkeypatch):
    table = load_entropy_table(2)
    dim = 40
    encoder = QuicFLEntropyEncoder(table, ROUND)
    x = np.random.default_rng(2).standard_t(1.5, dim)
    base, payload = (encoder.encode(x * (c + 1), c, rng=c) for c in range(2))
    chunks = RotationLayout.for_dim(dim).num_chunks
    (n_exact,) = struct.unpack_from("<I", payload, QUICFL["num_exact"])
    body = QUICFL["norms"] + 4 * chunks
    exact_values = range(body + 16 + 4 * n_exact, body + 16 + 8 * n_exact)
    accepted = 0
    for bit in range(8 * len(payload)):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        outcomes = [_outcome(monkeypatch, k, table, dim, base, bytes(flipped)) for k in PATHS]
        assert all(o == outcomes[0] for o in outcomes), bit
        if not isinstance(outcomes[0], str):
            accepted += 1
            # only fields the format does not protect may change and still be read:
            # the client id, a chunk norm, an exact value
            byte = bit // 8
            client = range(QUICFL["client"], QUICFL["client"] + 4)
            norms = range(QUICFL["norms"], body)
            assert byte in client or byte in norms or byte in exact_values, byte
    assert accepted > 0  # the harmless fields really were flipped


def _crafted(table, dim, client, exact_count):
    """A valid version 5 payload whose first ``exact_count`` rotated positions (all if
    None) are sent exactly: the coded symbol count down to 1 and 0."""
    encoder = QuicFLEntropyEncoder(table, ROUND)
    x = np.random.default_rng(client).standard_normal(dim)
    sides = encoder._apply(x, client, np.random.default_rng(client))
    quantized = sides[-1]
    size = quantized.layout.rotated_dim
    count = size if exact_count is None else exact_count
    quantized.exact_indices = np.arange(count, dtype=np.int64)
    quantized.exact_values = np.linspace(-3.0, 3.0, count).astype(np.float32)
    quantized.codes = quantized.codes.copy()
    quantized.codes[:count] = 0
    writer = PayloadWriter()
    encoder._write_header(writer, quantized, encoder._magic)
    writer.write_array(quantized.norms.astype("<f4"))
    encoder._pipeline.write(writer, sides)
    return writer.to_bytes()


@pytest.mark.parametrize("coded", [0, 1, 2, 17])
def test_all_exact_and_nearly_all_exact_payloads_decode_alike(monkeypatch, coded):
    table = load_entropy_table(4)
    dim = 1000
    size = RotationLayout.for_dim(dim).rotated_dim
    payloads = [_crafted(table, dim, c, size - coded) for c in range(3)]
    assert all(p[4] == 5 for p in payloads)
    (m,) = struct.unpack_from("<I", payloads[0], QUICFL["norms"] + 4 + 4)
    assert m == coded
    states = []
    for kernels in PATHS:
        monkeypatch.setenv(KERNELS_ENV, kernels)
        one_by_one = QuicFLEntropyAggregator(table, ROUND, dim)
        for payload in payloads:
            one_by_one.add(payload)
        together = QuicFLEntropyAggregator(table, ROUND, dim)
        together.add_many(payloads)
        states += [_state(one_by_one), _state(together)]
    assert all(s == states[0] for s in states)


def test_refusal_inside_add_many_keeps_the_earlier_payloads_only(monkeypatch):
    table = load_entropy_table(2)
    dim = 3000
    encoder = QuicFLEntropyEncoder(table, ROUND)
    rng = np.random.default_rng(9)
    payloads = [encoder.encode(rng.standard_t(2, dim), c, rng=rng) for c in range(12)]
    words_at = QUICFL["norms"] + 4 * RotationLayout.for_dim(dim).num_chunks
    edits = {
        "truncated": payloads[5][:-1],
        "extended": payloads[5] + b"\0\0",
        "stream word": payloads[5][:-2] + bytes([payloads[5][-2] ^ 1, payloads[5][-1]]),
        "digest": payloads[5][: words_at + 8]
        + bytes([payloads[5][words_at + 8] ^ 0x80])
        + payloads[5][words_at + 9 :],
    }
    for kernels in PATHS:
        monkeypatch.setenv(KERNELS_ENV, kernels)
        expected = QuicFLEntropyAggregator(table, ROUND, dim)
        for payload in payloads[:5]:
            expected.add(payload)
        for name, bad in edits.items():
            aggregator = QuicFLEntropyAggregator(table, ROUND, dim)
            with pytest.raises(PayloadError, match="payload 5 "):
                aggregator.add_many(payloads[:5] + [bad] + payloads[6:])
            assert _state(aggregator) == _state(expected), (kernels, name)


@pytest.mark.parametrize(
    ("dim", "coded", "lanes"),
    [(2**19, 3 * 2**17 - 1, 16), (2**19, 3 * 2**17, 32), (2**20, 7 * 2**17, 64)],
)
def test_lane_count_at_its_rounding_bounds(monkeypatch, dim, coded, lanes):
    # the documented lane count of m coded symbols, read by both servers alike
    from .test_entropy_doc_decoder import _doc_decode

    table = load_entropy_table(1)
    payloads = [_crafted(table, dim, c, dim - coded) for c in range(2)]
    assert _doc_decode(payloads[0], table, dim)[5] == lanes
    states = []
    for kernels in PATHS:
        monkeypatch.setenv(KERNELS_ENV, kernels)
        aggregator = QuicFLEntropyAggregator(table, ROUND, dim)
        aggregator.add_many(payloads)
        states.append(_state(aggregator))
    assert all(s == states[0] for s in states)
