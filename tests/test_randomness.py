"""Shared-randomness spec v1: golden vectors, an independent pure-Python reference, errors."""

import hashlib
import struct

import numpy as np
import pytest

from quicdesign.errors import ParameterError
from quicdesign.randomness import (
    PURPOSE_ROTATION,
    PURPOSE_SHARED_H,
    SPEC_VERSION,
    derive_key,
    raw_words,
    rotation_signs,
    shared_values,
)

# ---------------------------------------------------------------------------------------
# Pure-Python reference of the spec, written from the spec text, not from the module.
_MASK64 = (1 << 64) - 1
_PHILOX_M0, _PHILOX_M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B


def _ref_key(round_seed, client_id, purpose):
    data = struct.pack("<QQ", round_seed, client_id) + purpose.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=16, person=b"quicdesign.rng1").digest()
    return int.from_bytes(digest, "little")


def _ref_philox_block(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(10):
        if round_index:
            k0 = (k0 + _PHILOX_W0) & _MASK64
            k1 = (k1 + _PHILOX_W1) & _MASK64
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 64) ^ c1 ^ k0, p1 & _MASK64, (p0 >> 64) ^ c3 ^ k1, p0 & _MASK64
    return [c0, c1, c2, c3]


def _ref_words(round_seed, client_id, purpose, count):
    key = _ref_key(round_seed, client_id, purpose)
    key_words = (key & _MASK64, key >> 64)
    words = []
    block_index = 0
    while len(words) < count:
        # numpy increments its zero counter before each block: the first block is counter 1
        counter = (block_index + 1) & ((1 << 256) - 1)
        counter_words = [(counter >> (64 * i)) & _MASK64 for i in range(4)]
        words.extend(_ref_philox_block(counter_words, key_words))
        block_index += 1
    return words[:count]


def _ref_signs(round_seed, n):
    words = _ref_words(round_seed, 0, "rotation", -(-n // 64))
    return [-1 if (words[j // 64] >> (j % 64)) & 1 else 1 for j in range(n)]


def _ref_shared(round_seed, client_id, bits, n):
    words = _ref_words(round_seed, client_id, "shared-h", -(-n // 8))
    return [((words[j // 8] >> (8 * (j % 8))) & 0xFF) & ((1 << bits) - 1) for j in range(n)]


# ---------------------------------------------------------------------------------------
# Golden vectors, computed once and pinned; a port must reproduce them bit for bit.
GOLDEN_KEYS = {
    (0, 0, "rotation"): 0xCBFD2FF18558F6B6B20FE7E0E89B5AB2,
    (1, 0, "rotation"): 0xBB55D9B7D1E72852E75775ACB3A1A0F7,
    (0, 1, "shared-h"): 0x3E1F8CC3AA99D9326ADEE8C49A976D98,
    (123456789, 42, "shared-h"): 0x0BA2F479AFE5B73B196E6D6C3C938FED,
    (2**64 - 1, 2**64 - 1, "ünïcode"): 0x122C290B30B4D659921F02948927FCDE,
}
GOLDEN_WORDS = {
    (0, 0, "rotation"): [
        0x09C13DAB71CA83AF,
        0x28F085C1DE7BC612,
        0x3534FB861C462B65,
        0x5B991E7AFAE80A0C,
    ],
    (123456789, 42, "shared-h"): [
        0x2BBCBD34B60D080F,
        0xA2F010D284B404F7,
        0xD047DA33D8C8692C,
        0xDFAC2A5738680493,
    ],
}
GOLDEN_SIGNS_ROUND_0 = [-1, -1, -1, -1, 1, -1, 1, -1, -1, -1, 1, 1, 1, 1, 1, -1]
GOLDEN_SIGNS_ROUND_123456789 = [1, -1, -1, 1, 1, 1, 1, 1, 1, -1, 1, 1, -1, -1, -1, -1]
GOLDEN_SHARED_123456789_42 = {
    1: [1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    3: [7, 0, 5, 6, 4, 5, 4, 3, 7, 4, 4, 4, 2, 0, 0, 2],
    8: [15, 8, 13, 182, 52, 189, 188, 43, 247, 4, 180, 132, 210, 16, 240, 162],
}


def test_spec_constants():
    assert SPEC_VERSION == 1
    assert PURPOSE_ROTATION == "rotation"
    assert PURPOSE_SHARED_H == "shared-h"


@pytest.mark.parametrize("triple", sorted(GOLDEN_KEYS, key=repr))
def test_derived_keys_match_golden_and_reference(triple):
    assert derive_key(*triple) == GOLDEN_KEYS[triple]
    assert _ref_key(*triple) == GOLDEN_KEYS[triple]


@pytest.mark.parametrize("triple", sorted(GOLDEN_WORDS, key=repr))
def test_raw_words_match_golden_and_reference(triple):
    words = raw_words(*triple, 4)
    assert words.dtype == np.uint64
    assert [int(w) for w in words] == GOLDEN_WORDS[triple]
    assert _ref_words(*triple, 4) == GOLDEN_WORDS[triple]


@pytest.mark.parametrize(
    ("round_seed", "client_id", "purpose"),
    [(0, 0, "rotation"), (7, 3, "shared-h"), (2**64 - 1, 2**63, "projection")],
)
def test_numpy_stream_matches_reference_across_blocks(round_seed, client_id, purpose):
    # 11 words cross two block boundaries, so the counter increments are checked too
    assert [int(w) for w in raw_words(round_seed, client_id, purpose, 11)] == _ref_words(
        round_seed, client_id, purpose, 11
    )


def test_raw_words_prefix_is_stable():
    assert np.array_equal(raw_words(5, 6, "x", 9)[:3], raw_words(5, 6, "x", 3))
    assert raw_words(5, 6, "x", 0).shape == (0,)


def test_rotation_signs_golden():
    assert rotation_signs(0, 16, np.int8).tolist() == GOLDEN_SIGNS_ROUND_0
    assert rotation_signs(123456789, 16, np.int8).tolist() == GOLDEN_SIGNS_ROUND_123456789
    assert _ref_signs(0, 16) == GOLDEN_SIGNS_ROUND_0
    assert _ref_signs(123456789, 16) == GOLDEN_SIGNS_ROUND_123456789


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200, 1000])
def test_rotation_signs_match_reference(n):
    signs = rotation_signs(99, n)
    assert signs.dtype == np.float32
    assert signs.shape == (n,)
    assert signs.tolist() == _ref_signs(99, n)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8])
def test_rotation_signs_dtypes_agree(dtype):
    signs = rotation_signs(3, 300, dtype)
    assert signs.dtype == dtype
    assert np.array_equal(signs.astype(np.int8), rotation_signs(3, 300, np.int8))


def test_rotation_signs_are_balanced_and_round_dependent():
    signs = rotation_signs(11, 1 << 16)
    assert set(np.unique(signs).tolist()) == {-1.0, 1.0}
    # 2**16 fair coins: the mean is within 5 standard deviations of 0
    assert abs(signs.mean()) < 5 / np.sqrt(1 << 16)
    assert not np.array_equal(signs, rotation_signs(12, 1 << 16))


def test_shared_values_golden():
    for bits, expected in GOLDEN_SHARED_123456789_42.items():
        values = shared_values(123456789, 42, bits, 16)
        assert values.dtype == np.uint8
        assert values.tolist() == expected
        assert _ref_shared(123456789, 42, bits, 16) == expected


@pytest.mark.parametrize("bits", range(0, 9))
def test_shared_values_match_reference(bits):
    values = shared_values(4, 17, bits, 37)
    assert values.shape == (37,)
    assert values.tolist() == _ref_shared(4, 17, bits, 37)
    assert int(values.max(initial=0)) < max(1, 1 << bits)


def test_shared_values_differ_between_clients_and_purposes():
    a = shared_values(4, 1, 8, 64)
    assert not np.array_equal(a, shared_values(4, 2, 8, 64))
    assert not np.array_equal(a, shared_values(4, 1, 8, 64, purpose="other"))
    assert np.array_equal(a, shared_values(4, 1, 8, 64, purpose=PURPOSE_SHARED_H))


def test_streams_are_separated_by_purpose():
    assert derive_key(1, 0, "rotation") != derive_key(1, 0, "shared-h")
    # the fixed 16-byte prefix keeps (seed, client) from bleeding into the purpose
    assert derive_key(1, 0, "a") != derive_key(0, 1, "a")


@pytest.mark.parametrize(
    ("round_seed", "client_id", "purpose"),
    [
        (-1, 0, "p"),
        (2**64, 0, "p"),
        (0, 2**64, "p"),
        (True, 0, "p"),
        (0, False, "p"),
        (1.0, 0, "p"),
        ("1", 0, "p"),
        (0, 0, ""),
        (0, 0, b"rotation"),
        (0, 0, None),
    ],
)
def test_derive_key_rejects_bad_input(round_seed, client_id, purpose):
    with pytest.raises(ParameterError):
        derive_key(round_seed, client_id, purpose)


def test_numpy_integers_are_accepted_as_seeds():
    assert derive_key(np.uint64(2**64 - 1), np.int32(5), "p") == derive_key(2**64 - 1, 5, "p")


@pytest.mark.parametrize(
    "call",
    [
        lambda: raw_words(0, 0, "p", -1),
        lambda: raw_words(0, 0, "p", 2.0),
        lambda: rotation_signs(0, -1),
        lambda: rotation_signs(0, 4, np.int16),
        lambda: rotation_signs(0, 4, "not a dtype"),
        lambda: shared_values(0, 0, 9, 4),
        lambda: shared_values(0, 0, -1, 4),
        lambda: shared_values(0, 0, True, 4),
        lambda: shared_values(0, 0, 2, -3),
        lambda: shared_values(-1, 0, 0, 4),
    ],
)
def test_bad_arguments_raise_parameter_error(call):
    with pytest.raises(ParameterError):
        call()


def test_round_tag_golden_and_checked():
    from quicdesign.randomness import round_tag

    # the values in docs/randomness.md section 5
    assert round_tag(0) == 0x6B2B776A
    assert round_tag(123456789) == 0xFED374A3
    with pytest.raises(ParameterError):
        round_tag(-1)
    with pytest.raises(ParameterError):
        round_tag(2**64)
