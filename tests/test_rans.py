"""The interleaved rANS coder (QDQE v4 and v5 bodies): numpy reference and compiled
kernels give identical words and symbols, streams decode exactly or are refused, models
are checked."""

import itertools

import numpy as np
import pytest

from quicdesign import PayloadError, TableError, _rans, load_entropy_table
from quicdesign._kernels import KERNELS_ENV

numba_kernels = pytest.importorskip("quicdesign._kernels._numba")


def _model_and_symbols(num_models, num_symbols, count, seed, skew=1.0):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(num_symbols, skew), num_models)
    probabilities[:, rng.integers(0, num_symbols)] = 0.0  # zero-probability symbols stay codable
    probabilities[0] /= probabilities[0].sum()
    model = _rans.RansModel(probabilities)
    model_of = rng.integers(0, num_models, count).astype(np.uint8)
    cdf = np.cumsum(probabilities, axis=1)
    symbols = (cdf[model_of] < rng.random(count)[:, None]).sum(axis=1)
    return model, np.minimum(symbols, num_symbols - 1).astype(np.uint8), model_of


CASES = [
    (1, 2, 1.0),
    (5, 8, 0.3),
    (64, 16, 1.0),
    (3, 64, 0.05),
    (2, 256, 0.5),
]


@pytest.mark.parametrize(("num_models", "num_symbols", "skew"), CASES)
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001, 20_003])
def test_compiled_coder_is_identical_to_the_numpy_reference(num_models, num_symbols, skew, count):
    model, symbols, model_of = _model_and_symbols(num_models, num_symbols, count, count, skew)
    states, words = _rans.encode(model, symbols, model_of, kernels=None)
    compiled_states, compiled_words = _rans.encode(model, symbols, model_of)
    assert states.dtype == compiled_states.dtype == np.uint32
    assert states.tobytes() == compiled_states.tobytes()
    assert words.tobytes() == compiled_words.tobytes()
    for kernels in (None, "auto"):
        decoded = _rans.decode(model, states, words, model_of, kernels=kernels)
        assert decoded.tobytes() == symbols.tobytes()


@pytest.mark.parametrize("kernels", [None, "auto"])
def test_rarest_symbols_and_extreme_models_round_trip(kernels):
    # every symbol the least likely one: the most words per symbol the coder emits
    probabilities = np.array([[1.0 - 1e-12] + [1e-12 / 255] * 255, [1.0] + [0.0] * 255])
    model = _rans.RansModel(probabilities)
    count = 5000
    model_of = np.arange(count) % 2
    symbols = np.where(np.arange(count) % 3 == 0, 255, 1 + np.arange(count) % 200)
    states, words = _rans.encode(model, symbols, model_of, kernels=kernels)
    assert words.size <= count
    decoded = _rans.decode(model, states, words, model_of, kernels=kernels)
    np.testing.assert_array_equal(decoded, symbols)
    # and the likeliest symbol costs almost nothing
    states, words = _rans.encode(model, np.zeros(count), model_of, kernels=kernels)
    assert words.size <= 2


def test_bits_follow_the_quantized_model():
    model, symbols, model_of = _model_and_symbols(64, 16, 200_000, 5)
    states, words = _rans.encode(model, symbols, model_of)
    probability = model.freq[model_of, symbols] / 2.0**_rans.PROB_BITS
    information = -np.sum(np.log2(probability))
    coded = 16 * words.size + 32 * _rans.LANES
    # the flush costs at most 32 bits per lane; states of 2**16..2**32 against 2**14 slots
    # lose well under 0.2 % to integer division (0.06 % here)
    assert information - 16 * _rans.LANES <= coded <= 1.002 * information + 32 * _rans.LANES


def _check_damaged_streams_refused(model, symbols, model_of, kernels, lanes):
    """Truncated, extended, wrong-count, low-state, bit-flipped and state-flipped streams
    are refused (a flipped word may decode only to other symbols, which the payload's
    check then refuses)."""
    states, words = _rans.encode(model, symbols, model_of, lanes=lanes)
    assert words.size > 5 * lanes

    def refused(edited_states, edited_words, match=None):
        with pytest.raises(PayloadError, match=match):
            _rans.decode(model, edited_states, edited_words, model_of, kernels=kernels, lanes=lanes)

    refused(states, words[:-1], "ends before")
    refused(states, words[: -lanes - 3], "ends before")  # more than a row short
    refused(states, words[:-2])
    refused(states, words[:0])
    refused(states, words[1:])
    refused(states, np.append(words, np.uint16(0)), "left after")
    refused(states[:-1], words, f"{lanes} coder states")
    low = states.copy()
    low[lanes - 1] = _rans.STATE_LOW - 1
    refused(low, words, "below")
    for position in (0, 1, words.size // 2, words.size - 1):
        for bit in (0, 7, 15):
            edited = words.copy()
            edited[position] ^= np.uint16(1 << bit)
            try:
                decoded = _rans.decode(
                    model, states, edited, model_of, kernels=kernels, lanes=lanes
                )
            except PayloadError:
                continue
            assert decoded.tobytes() != symbols.tobytes()
    for lane in range(lanes) if lanes <= 16 else (0, 15, lanes - 1):
        edited = states.copy()
        edited[lane] ^= np.uint32(1 << 20)
        refused(edited, words)
    return states, words


@pytest.mark.parametrize("kernels", [None, "auto"])
def test_damaged_streams_are_refused(kernels):
    model, symbols, model_of = _model_and_symbols(8, 16, 3001, 9)
    _check_damaged_streams_refused(model, symbols, model_of, kernels, _rans.LANES)


@pytest.mark.parametrize("kernels", [None, "auto"])
def test_a_stream_must_end_in_the_start_state(kernels):
    model = _rans.RansModel([[0.5, 0.5]])
    states = np.full(_rans.LANES, _rans.STATE_LOW, dtype=np.uint32)
    empty = np.zeros(0, dtype=np.uint8)
    assert _rans.decode(model, states, empty, empty, kernels=kernels).size == 0
    states[5] += 1
    with pytest.raises(PayloadError, match="start state"):
        _rans.decode(model, states, empty, empty, kernels=kernels)


def test_decoder_refuses_foreign_lengths_consistently():
    model, symbols, model_of = _model_and_symbols(4, 8, 999, 3)
    states, words = _rans.encode(model, symbols, model_of)
    for count in (998, 1000):
        other = np.resize(model_of, count)
        results = []
        for kernels in (None, "auto"):
            with pytest.raises(PayloadError) as info:
                _rans.decode(model, states, words, other, kernels=kernels)
            results.append(str(info.value))
        assert results[0] == results[1]


@pytest.mark.parametrize(
    "probabilities",
    [
        [[0.5, np.nan]],
        [[0.5, -0.1, 0.6]],
        [[0.0, 0.0]],
        [[np.inf, 1.0]],
        np.ones((1, 9000)),
    ],
)
def test_bad_code_models_are_refused(probabilities):
    with pytest.raises(TableError):
        _rans.RansModel(probabilities)


def test_bad_frequency_tables_are_refused():
    model = _rans.RansModel([[0.25, 0.25, 0.5]])
    freq, cum = model.freq.copy(), model.cum.copy()
    _rans.check_frequencies(freq, cum)
    bad_sum = freq.copy()
    bad_sum[0, 0] += 1
    with pytest.raises(TableError, match="sum"):
        _rans.check_frequencies(bad_sum, cum)
    zero = freq.copy()
    zero[0, 0], zero[0, 1] = 0, zero[0, 1] + zero[0, 0]
    zero_cum = np.concatenate(([[0]], np.cumsum(zero, axis=1)), axis=1)
    with pytest.raises(TableError, match=">= 1"):
        _rans.check_frequencies(zero, zero_cum)
    shifted = cum.copy()
    shifted[0, 1] += 1
    with pytest.raises(TableError, match="running sum"):
        _rans.check_frequencies(freq, shifted)
    with pytest.raises(TableError, match="shapes"):
        _rans.check_frequencies(freq, cum[:, :-1])


def test_encoder_refuses_symbols_outside_the_model():
    model = _rans.RansModel([[0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(ValueError, match="symbol"):
        _rans.encode(model, np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="model index"):
        _rans.encode(model, np.array([0, 1]), np.array([0, 2]))
    with pytest.raises(ValueError, match="model index"):
        _rans.decode(model, np.full(8, 1 << 16), np.zeros(0), np.array([-1]))


def test_quantized_frequencies_are_close_to_the_model_and_sum_exactly():
    table = load_entropy_table(4)
    freq = _rans.quantize_frequencies(table.code_model)
    total = 1 << _rans.PROB_BITS
    assert np.all(freq.sum(axis=1) == total) and np.all(freq >= 1)
    # 1 + floor(p (T - K)) plus at most one leftover slot
    ideal = 1 + table.code_model * (total - table.num_messages)
    assert np.all(np.abs(freq - ideal) <= 1.0)


def test_format_constants_agree_with_the_compiled_kernels():
    assert numba_kernels._LANES == _rans.LANES
    assert numba_kernels._PROB_BITS == _rans.PROB_BITS
    assert numba_kernels._STATE_LOW == _rans.STATE_LOW


@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize("dim", [1, 4099, 2**19 + 3])
def test_entropy_payloads_are_byte_identical_between_paths(monkeypatch, version, dim):
    """Payloads and sums of both paths, for both rANS versions; v5 and v4 payloads of the
    same messages aggregate to the same bits."""
    from quicdesign.entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder

    table = load_entropy_table(3)
    x = np.random.default_rng(8).standard_t(3, dim) * 1e20
    payloads = {}
    for kernels in ("numpy", "auto"):
        monkeypatch.setenv(KERNELS_ENV, kernels)
        for written in (version, 9 - version):
            encoder = QuicFLEntropyEncoder(table, 21)
            encoder._wire_version = written
            payloads[kernels, written] = encoder.encode(x, 4, rng=1)
            aggregator = QuicFLEntropyAggregator(table, 21, x.size)
            aggregator.add(payloads[kernels, written])
            payloads[kernels, written, "sum"] = aggregator._sum.tobytes()
    assert payloads["numpy", version] == payloads["auto", version]
    assert payloads["numpy", version, "sum"] == payloads["auto", version, "sum"]
    assert payloads["numpy", version, "sum"] == payloads["numpy", 9 - version, "sum"]
    assert payloads["numpy", version][4] == version
    assert payloads["numpy", 4] != payloads["numpy", 5]


@pytest.mark.parametrize("kernels", [None, "auto"])
@pytest.mark.parametrize("count", [1, 9, 1001])
def test_stream_decoder_in_parts_equals_one_decode(kernels, count):
    """Parts of any length (lanes not aligned) decode the same symbols; the end checks
    are those of decode."""
    model, symbols, model_of = _model_and_symbols(5, 8, count, count + 1, 0.3)
    states, words = _rans.encode(model, symbols, model_of)
    cuts = sorted({0, count, *np.random.default_rng(count).integers(0, count, 4).tolist()})
    decoder = _rans.StreamDecoder(model, states, words, kernels=kernels)
    parts = [decoder.take(model_of[a:b]) for a, b in itertools.pairwise(cuts)]
    decoder.finish()
    assert np.concatenate(parts).tobytes() == symbols.tobytes()
    # one symbol short: words or states are left over
    short = _rans.StreamDecoder(model, states, words, kernels=kernels)
    short.take(model_of[:-1])
    with pytest.raises(PayloadError):
        short.finish()
    # truncated words: refused when a part runs out
    if words.size:
        cut = _rans.StreamDecoder(model, states, words[:-1], kernels=kernels)
        with pytest.raises(PayloadError):
            cut.take(model_of)
            cut.finish()


@pytest.mark.parametrize("kernels", [None, "auto"])
def test_narrow_rows_leave_their_tail_empty(kernels):
    """Rows of width 2 in a 6-symbol model spend no slots on the tail, round trip, and
    refuse to encode a symbol past their width."""
    probabilities = np.array([[0.1, 0.2, 0.3, 0.2, 0.1, 0.1], [0.7, 0.3, 0, 0, 0, 0]])
    model = _rans.RansModel(probabilities, widths=[6, 2])
    assert model.freq[1, 2:].sum() == 0 and model.freq[1, :2].sum() == 1 << _rans.PROB_BITS
    np.testing.assert_array_equal(model.freq[0], _rans.RansModel(probabilities[:1]).freq[0])
    rng = np.random.default_rng(3)
    model_of = rng.integers(0, 2, 999)
    symbols = np.where(model_of == 1, rng.integers(0, 2, 999), rng.integers(0, 6, 999))
    states, words = _rans.encode(model, symbols, model_of, kernels=kernels)
    decoded = _rans.decode(model, states, words, model_of, kernels=kernels)
    np.testing.assert_array_equal(decoded, symbols)
    with pytest.raises(ValueError, match="width"):
        _rans.encode(model, [3], [1], kernels=kernels)
    with pytest.raises(TableError):
        _rans.RansModel(probabilities, widths=[6, 0])


# ------------------------------------------------------------------ the wide format (v5)

WIDE = _rans.WIDE_PROB_BITS


def _wide_case(num_models, num_symbols, count, seed, skew=1.0):
    model, symbols, model_of = _model_and_symbols(num_models, num_symbols, count, seed, skew)
    probabilities = model.freq / float(model.freq.sum(axis=1)[0])
    return _rans.RansModel(probabilities, prob_bits=WIDE), symbols, model_of


@pytest.mark.parametrize(("num_models", "num_symbols", "skew"), CASES)
@pytest.mark.parametrize("lanes", [16, 32, 48, 64])
@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 63, 64, 65, 1001, 20_003])
def test_wide_coder_is_identical_to_the_numpy_reference(
    num_models, num_symbols, skew, lanes, count
):
    model, symbols, model_of = _wide_case(num_models, num_symbols, count, count + lanes, skew)
    states, words = _rans.encode(model, symbols, model_of, kernels=None, lanes=lanes)
    compiled_states, compiled_words = _rans.encode(model, symbols, model_of, lanes=lanes)
    assert states.shape == (lanes,) and compiled_states.dtype == np.uint32
    assert states.tobytes() == compiled_states.tobytes()
    assert words.tobytes() == compiled_words.tobytes()
    for kernels in (None, "auto"):
        decoded = _rans.decode(model, states, words, model_of, kernels=kernels, lanes=lanes)
        assert decoded.tobytes() == symbols.tobytes()


def test_wide_entries_hold_each_slots_symbol_frequency_and_offset():
    model, _, _ = _wide_case(5, 64, 10, 1, 0.05)
    entries = model.wide_entries.reshape(5, 1 << WIDE).astype(np.int64)
    symbol = entries & 0xFF
    np.testing.assert_array_equal(symbol, model.slot_symbol)
    rows = np.arange(5)[:, None]
    np.testing.assert_array_equal((entries >> 8) & 0xFFF, model.freq[rows, symbol])
    offset = np.arange(1 << WIDE) - model.cum[rows, symbol]
    np.testing.assert_array_equal(entries >> 20, offset)
    assert np.all(offset < model.freq[rows, symbol])
    with pytest.raises(TableError, match="wide entries"):
        _rans.RansModel([[0.5, 0.5]]).wide_entries  # noqa: B018 - a 14-bit model


@pytest.mark.parametrize("kernels", [None, "auto"])
@pytest.mark.parametrize("lanes", [16, 64])
def test_damaged_wide_streams_are_refused(kernels, lanes):
    model, symbols, model_of = _wide_case(8, 16, 3001, 9)
    states, words = _check_damaged_streams_refused(model, symbols, model_of, kernels, lanes)
    # a stream of one lane count is not one of another
    other = 32 if lanes == 16 else 16
    with pytest.raises(PayloadError, match=f"{other} coder states"):
        _rans.decode(model, states, words, model_of, kernels=kernels, lanes=other)


def test_wide_decoders_refuse_alike():
    """Hostile streams give the same error on both paths (the kernel's statuses map to
    the reference's messages), including rows of garbage that run far past the end."""
    model, symbols, model_of = _wide_case(4, 8, 999, 3)
    states, words = _rans.encode(model, symbols, model_of, lanes=16)
    rng = np.random.default_rng(0)
    streams = [
        (states, words, np.resize(model_of, 998)),
        (states, words, np.resize(model_of, 1000)),
        (rng.integers(1 << 16, 1 << 32, 16, dtype=np.uint32), words, model_of),
        (states, rng.integers(0, 1 << 16, words.size, dtype=np.uint16), model_of),
        (np.full(16, 1 << 16, np.uint32), np.zeros(0, np.uint16), np.zeros(5000, np.uint8)),
    ]
    for edited_states, edited_words, edited_models in streams:
        results = []
        for kernels in (None, "auto"):
            with pytest.raises(PayloadError) as info:
                _rans.decode(
                    model, edited_states, edited_words, edited_models, kernels=kernels, lanes=16
                )
            results.append(str(info.value))
        assert results[0] == results[1]


def test_wide_lanes_follow_the_symbol_count_and_formats_are_checked():
    counts = [0, 1, 2**18, 3 * 2**17 - 1, 3 * 2**17, 2**19, 3 * 2**18, 2**20 - 5, 2**31]
    assert [_rans.wide_lanes(c) for c in counts] == [16, 16, 16, 16, 32, 32, 48, 64, 64]
    wide, _, _ = _wide_case(2, 4, 10, 0)
    narrow, symbols, model_of = _model_and_symbols(2, 4, 10, 0)
    for model, lanes in ((wide, 8), (wide, 24), (wide, 80), (narrow, 16), (narrow, 64)):
        with pytest.raises(ValueError, match="no rANS format"):
            _rans.encode(model, symbols, model_of, lanes=lanes)
        with pytest.raises(ValueError, match="no rANS format"):
            _rans.decode(model, np.full(lanes, 1 << 16), np.zeros(0), model_of, lanes=lanes)
    with pytest.raises(TableError, match="quantized"):
        _rans.RansModel([[0.5, 0.5]], prob_bits=13)


@pytest.mark.parametrize("kernels", [None, "auto"])
def test_wide_models_outside_the_kernel_decode_with_numpy(kernels):
    """Narrow rows and single-symbol models have no wide entries: both paths decode them
    with the reference, the same symbols."""
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.3, 0, 0]])
    model = _rans.RansModel(probabilities, widths=[4, 2], prob_bits=WIDE)
    rng = np.random.default_rng(4)
    model_of = rng.integers(0, 2, 777)
    symbols = np.where(model_of == 1, rng.integers(0, 2, 777), rng.integers(0, 4, 777))
    states, words = _rans.encode(model, symbols, model_of, kernels=kernels, lanes=16)
    np.testing.assert_array_equal(
        _rans.decode(model, states, words, model_of, kernels=kernels, lanes=16), symbols
    )
    single = _rans.RansModel([[1.0]], prob_bits=WIDE)
    zeros = np.zeros(100, dtype=np.uint8)
    states, words = _rans.encode(single, zeros, zeros, kernels=kernels, lanes=32)
    assert words.size == 0
    assert _rans.decode(single, states, words, zeros, kernels=kernels, lanes=32).sum() == 0


def test_wide_format_constants_agree_with_the_compiled_kernels():
    from quicdesign._kernels import _rans_wide

    assert _rans_wide._WIDE_LANES == _rans.WIDE_LANES
    assert _rans_wide._WIDE_PROB_BITS == _rans.WIDE_PROB_BITS
    assert _rans_wide._STATE_LOW == _rans.STATE_LOW
    assert _rans_wide._GROUP == _rans._WIDE_GROUP


@pytest.mark.parametrize("lanes", [16, 64])
@pytest.mark.parametrize(
    "skip",
    [
        [],
        [0],
        [0, 1, 2, 3],
        [5, 6, 40, 100, 101, 102, 2000],
        list(range(0, 3000, 7)),
        [2999],
        [2990, 2995, 2996, 2997, 2998, 2999],
        list(range(3000)),
    ],
    ids=["none", "first", "leading-run", "scattered", "dense", "last", "trailing", "all"],
)
def test_wide_decoder_skips_positions_like_drop_and_refill(lanes, skip):
    """The compiled decoder leaves skipped positions 0 and decodes the others in order:
    the reference decode of the kept positions, refilled with zeros."""
    model, _, model_of = _wide_case(8, 16, 3000, 2, 0.3)
    skipped = np.array(skip, dtype=np.intp)
    keep = np.ones(model_of.size, dtype=bool)
    keep[skipped] = False
    rng = np.random.default_rng(lanes)
    symbols = rng.integers(0, 16, keep.sum()).astype(np.uint8)
    states, words = _rans.encode(model, symbols, model_of[keep], lanes=lanes)
    expected = np.zeros(model_of.size, dtype=np.uint8)
    expected[keep] = _rans.decode(model, states, words, model_of[keep], kernels=None, lanes=lanes)
    decoded = _rans.decode_wide_skipping(
        numba_kernels, model, states, words, model_of.astype(np.uint8), skipped, lanes
    )
    assert decoded.tobytes() == expected.tobytes()
    assert np.array_equal(expected[keep], symbols)
    # raw shared bytes: the kernel masks the model indices itself (8 models: mask 7)
    raw = model_of.astype(np.uint8) | np.uint8(0xF8)
    masked = _rans.decode_wide_skipping(
        numba_kernels, model, states, words, raw, skipped, lanes, model_mask=7
    )
    assert masked.tobytes() == expected.tobytes()
    if words.size:
        with pytest.raises(PayloadError, match="ends before"):
            _rans.decode_wide_skipping(
                numba_kernels, model, states, words[:-1], model_of.astype(np.uint8), skipped, lanes
            )


def _wide_decoder_results(model, lanes, seed):
    """Symbols, or the refusal, of the compiled wide decoder on clean, skipping, masked,
    truncated, garbage and too-long streams (every path of its loop)."""
    _, _, model_of = _wide_case(8, 16, 5000, seed, 0.3)
    rng = np.random.default_rng(seed)
    skipped = np.sort(rng.choice(model_of.size, 300, replace=False)).astype(np.intp)
    keep = np.ones(model_of.size, dtype=bool)
    keep[skipped] = False
    symbols = rng.integers(0, 16, int(keep.sum())).astype(np.uint8)
    states, words = _rans.encode(model, symbols, model_of[keep], lanes=lanes)
    raw = model_of.astype(np.uint8) | np.uint8(0xF8)
    streams = [
        (states, words, skipped),
        (states, words[:-1], skipped),
        (states, np.append(words, np.uint16(3)), skipped),
        (rng.integers(1 << 16, 1 << 32, lanes, dtype=np.uint32), words, skipped),
        (states, rng.integers(0, 1 << 16, words.size, dtype=np.uint16), skipped),
        (states, words, skipped[1:]),
    ]
    results = []
    for edited_states, edited_words, edited_skipped in streams:
        try:
            decoded = _rans.decode_wide_skipping(
                numba_kernels, model, edited_states, edited_words, raw, edited_skipped, lanes, 7
            )
        except PayloadError as exc:
            results.append(str(exc))
        else:
            results.append(decoded.tobytes())
    return results


@pytest.mark.parametrize("lanes", [16, 64])
def test_wide_decoder_falls_back_lane_by_lane_when_the_vector_kernel_fails(monkeypatch, lanes):
    """If the LLVM IR kernel cannot be built (another llvmlite, numba or backend), the
    decoder warns and decodes lane by lane with identical symbols and refusals."""
    from numba.core.errors import LoweringError

    from quicdesign._kernels import _rans_wide

    model, _, _ = _wide_case(8, 16, 10, 4, 0.3)
    expected = _wide_decoder_results(model, lanes, lanes)
    assert sum(isinstance(r, bytes) for r in expected) >= 1
    assert sum(isinstance(r, str) for r in expected) >= 3

    def broken(*arguments):
        raise LoweringError("forced: no vector kernel here")

    monkeypatch.setattr(_rans_wide, "_vector_wide_decode", broken)
    monkeypatch.setattr(_rans_wide, "_fallback", None)
    with pytest.warns(RuntimeWarning, match="decoding lane by lane"):
        assert _wide_decoder_results(model, lanes, lanes) == expected
    assert _rans_wide._fallback is not None  # built once, then used without a warning
    assert _wide_decoder_results(model, lanes, lanes) == expected


def test_a_vector_kernel_that_llvmlite_refuses_falls_back(monkeypatch):
    """A real build failure, not a stand-in: the vector GEP built the way llvmlite
    without ``source_etype`` would (its builder refuses an untyped pointer: "GEP lacks
    type"), in a fresh uncached kernel; the decoder falls back with the same results."""
    import numba

    from quicdesign._kernels import _rans_wide

    model, _, _ = _wide_case(8, 16, 10, 4, 0.3)
    expected = _wide_decoder_results(model, 16, 5)

    def gep_without_element_type(builder, base, index):
        return builder.gep(base, [index], inbounds=True)

    fresh = numba.njit(nogil=True)(_rans_wide._DECODE_LOOP)
    monkeypatch.setattr(_rans_wide, "_vector_element_pointers", gep_without_element_type)
    monkeypatch.setattr(_rans_wide, "_vector_wide_decode", fresh)
    monkeypatch.setattr(_rans_wide, "_fallback", None)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert _wide_decoder_results(model, 16, 5) == expected


def test_wide_decoder_output_array_is_checked():
    model, symbols, model_of = _wide_case(4, 8, 100, 2)
    states, words = _rans.encode(model, symbols, model_of, lanes=16)
    out = np.full(100, 77, dtype=np.uint8)
    decoded = _rans.decode_wide_skipping(
        numba_kernels, model, states, words, model_of, _rans._NOTHING_SKIPPED, 16, out=out
    )
    assert decoded is out and out.tobytes() == symbols.tobytes()
    for bad in (np.empty(99, np.uint8), np.empty(100, np.int16), np.empty(200, np.uint8)[::2]):
        with pytest.raises(ValueError, match="out must be"):
            _rans.decode_wide_skipping(
                numba_kernels, model, states, words, model_of, _rans._NOTHING_SKIPPED, 16, out=bad
            )


@pytest.mark.parametrize("count", [0, 15, 16, 17, 1000])
def test_slot_lookups_read_the_table_like_numpy(count):
    """The bench's lookup limit reads the entries the decoder's gather would."""
    model, _, model_of = _wide_case(8, 16, count, 6)
    entries = model.wide_entries
    slots = np.random.default_rng(count).integers(0, 1 << WIDE, count)
    index = ((model_of.astype(np.uint32) << WIDE) | slots).astype(np.uint32)
    out = np.full(count, 7, dtype=np.uint32)
    assert numba_kernels.rans_slot_lookups(entries, index, out) is out
    np.testing.assert_array_equal(out, entries[index])


def test_slot_lookups_refuse_what_they_would_read_past():
    entries = np.arange(64, dtype=np.uint32)
    out = np.empty(3, dtype=np.uint32)
    from quicdesign import ParameterError

    bad_cases = [
        (entries, np.array([0, 64, 1], np.uint32), out),  # past the table
        (entries, np.array([0, 1], np.uint32), out),  # output of another size
        (entries, np.array([0, 1, 2], np.int64), out),  # not uint32
        (entries[::2], np.array([0, 1, 2], np.uint32), out),  # not contiguous
        (entries[:0], np.zeros(3, np.uint32), out),  # an empty table: index 0 is past it
        (entries, [0, 1, 2], out),  # not an array
    ]
    for table, index, result in bad_cases:
        with pytest.raises(ParameterError):
            numba_kernels.rans_slot_lookups(table, index, result)
