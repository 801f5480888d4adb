"""An independent QDQE version 5 and 4 decoder written from docs/wire-format.md alone
(layout, lane count, model quantization, stream check or digest, decoding rule, end
checks) agrees with
what the encoder coded: the document describes the bytes the code writes."""

import hashlib
import struct

import numpy as np
import pytest

from quicdesign.entropy import QuicFLEntropyEncoder
from quicdesign.rotation import RotationLayout
from quicdesign.table import load_entropy_table

ROUND = 29


def _doc_frequencies(row, total):
    """The documented model: ``f[s] = 1 + floor(p[s] (T - K))``, leftovers one each to
    the largest fractional parts, ties to the lower symbol."""
    p = np.asarray(row, dtype=np.float64)
    p = p / p.sum()
    k = p.size
    scaled = p * (total - k)
    freq = [1 + int(np.floor(v)) for v in scaled]
    fractions = [v - np.floor(v) for v in scaled]
    order = sorted(range(k), key=lambda s: (-fractions[s], s))
    for s in order[: total - sum(freq)]:
        freq[s] += 1
    return freq


def _fmix64(z):
    mask = 2**64 - 1
    z ^= z >> 33
    z = (z * 0xFF51AFD7ED558CCD) & mask
    z ^= z >> 33
    z = (z * 0xC4CEB9FE1A85EC53) & mask
    return z ^ (z >> 33)


def _doc_stream_check(stream):
    """Version 5's stream check: fmix64 of position-salted u64 values, summed."""
    n = len(stream)
    padded = stream + bytes(-n % 8)
    values = struct.unpack(f"<{len(padded) // 8}Q", padded)
    total = sum(_fmix64((v + (i + 1) * 0x9E3779B97F4A7C15) % 2**64) for i, v in enumerate(values))
    return struct.pack("<Q", _fmix64((total % 2**64) ^ n))


def _doc_decode(payload, table, dim):
    """The coded symbols of a version 5 or 4 payload, decoded as the document says, or
    the name of the documented check that refuses it."""
    version, chunks = payload[4], payload[23]
    (n_exact,) = struct.unpack_from("<I", payload, 32)
    at = 36 + 4 * chunks
    w, m = struct.unpack_from("<II", payload, at)
    digest = payload[at + 8 : at + 16]
    if version == 5:
        lanes = 16 * min(4, max(1, (m + 2**17) // 2**18))
        total, person = 2**12, None
    else:
        lanes, total, person = 8, 2**14, b"quicdesign.rans4"
    assert (
        len(payload)
        == {5: 52, 4: 84}[version]
        + 4 * chunks
        + 8 * n_exact
        + (4 * lanes if version == 5 else 0)
        + 2 * w
    )
    assert m == RotationLayout.for_dim(dim).rotated_dim - n_exact
    exact = np.frombuffer(payload, "<u4", n_exact, at + 16)
    stream = payload[len(payload) - 4 * lanes - 2 * w :]
    if version == 5:
        expected = _doc_stream_check(bytes(stream))
    else:
        expected = hashlib.blake2b(stream, digest_size=8, person=person).digest()
    if expected != digest:
        return "digest"
    states = list(struct.unpack_from(f"<{lanes}I", stream))
    words = struct.unpack_from(f"<{w}H", stream, 4 * lanes)
    if min(states) < 2**16:
        return "state range"
    models = [_doc_frequencies(row, total) for row in table.code_model]
    starts = [np.concatenate([[0], np.cumsum(f)]) for f in models]
    return exact, states, words, models, starts, lanes, total


def _doc_symbols(decoded, shared):
    exact, states, words, models, starts, lanes, total = decoded
    coded = np.setdiff1d(np.arange(shared.size), exact)
    symbols, pos = [], 0
    for i, position in enumerate(coded):
        h, lane = int(shared[position]), i % lanes
        x = states[lane]
        slot = x % total
        s = int(np.searchsorted(starts[h], slot, side="right")) - 1
        x = models[h][s] * (x // total) + slot - int(starts[h][s])
        if x < 2**16:
            if pos >= len(words):
                return "runs out"
            x = x * 2**16 + words[pos]
            pos += 1
        states[lane] = x
        symbols.append(s)
    if pos != len(words) or any(x != 2**16 for x in states):
        return "end state"
    return coded, np.array(symbols, dtype=np.uint8)


@pytest.mark.parametrize("rate", [1, 2, 4])
@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize("dim", [1, 77, 5001])
def test_documented_decoder_reads_what_the_encoder_wrote(rate, version, dim):
    table = load_entropy_table(rate)
    encoder = QuicFLEntropyEncoder(table, ROUND)
    encoder._wire_version = version
    x = np.random.default_rng(dim + rate).standard_t(2, dim)
    payload = encoder.encode(x, 4, rng=8)
    quantized = encoder._quantize(x, 4, np.random.default_rng(8))
    assert payload[4] == version
    coded, symbols = _doc_symbols(_doc_decode(payload, table, dim), quantized.shared)
    assert np.array_equal(symbols, quantized.codes[coded])


def test_documented_lane_count_reaches_32_lanes():
    # 2**18 + 2**17 coded symbols round to two groups of 16 lanes
    table = load_entropy_table(2)
    encoder = QuicFLEntropyEncoder(table, ROUND)
    dim = 2**19 - 3
    x = np.random.default_rng(1).standard_normal(dim)
    payload = encoder.encode(x, 2, rng=3)
    quantized = encoder._quantize(x, 2, np.random.default_rng(3))
    decoded = _doc_decode(payload, table, dim)
    assert decoded[5] == 32
    coded, symbols = _doc_symbols(decoded, quantized.shared)
    assert np.array_equal(symbols, quantized.codes[coded])
