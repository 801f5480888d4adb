"""Bit packing and the validated payload reader/writer."""

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicdesign._wire import (
    MAX_CODE_BITS,
    PayloadReader,
    PayloadWriter,
    pack_codes,
    packed_size,
    unpack_codes,
)
from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError, PayloadError

ALL_BITS = range(1, MAX_CODE_BITS + 1)


def _reference_pack(codes, bits):
    """Pack with one big Python integer: code j sits at bit j*bits, LSB first."""
    value = 0
    for j, code in enumerate(codes):
        value |= int(code) << (j * bits)
    return value.to_bytes((bits * len(codes) + 7) // 8, "little")


@st.composite
def _codes_and_bits(draw):
    bits = draw(st.integers(1, MAX_CODE_BITS))
    codes = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200))
    return bits, codes


@settings(max_examples=300, deadline=None)
@given(_codes_and_bits())
def test_pack_matches_reference_and_round_trips(case):
    bits, codes = case
    dtype = np.uint8 if bits <= 8 else np.uint16
    array = np.array(codes, dtype=dtype)
    packed = pack_codes(array, bits)
    assert packed == _reference_pack(codes, bits)
    assert len(packed) == packed_size(bits, len(codes))
    unpacked = unpack_codes(packed, bits, len(codes))
    assert unpacked.dtype == dtype
    assert unpacked.tolist() == codes


@pytest.mark.parametrize("bits", ALL_BITS)
def test_large_round_trip_every_width(bits):
    rng = np.random.default_rng(bits)
    count = (1 << 16) + 5  # not a multiple of 8: exercises the partial last group
    codes = rng.integers(0, 1 << bits, count).astype(np.uint8 if bits <= 8 else np.uint16)
    packed = pack_codes(codes, bits)
    assert len(packed) == (bits * count + 7) // 8
    head = codes[: -(-64 * 8 // bits)].tolist()  # enough codes to fill 64 whole bytes
    assert packed[:64] == _reference_pack(head, bits)[:64]
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16, np.int64])
def test_any_integer_dtype_packs_the_same(dtype):
    codes = np.array([0, 5, 7, 1, 2, 3, 6, 4, 7], dtype=dtype)
    assert pack_codes(codes, 3) == _reference_pack(codes.tolist(), 3)


def test_pack_flattens_in_c_order():
    codes = np.array([[1, 2], [3, 0]], dtype=np.uint8)
    assert pack_codes(codes, 2) == pack_codes(np.array([1, 2, 3, 0], dtype=np.uint8), 2)
    assert pack_codes(codes.T, 2) == pack_codes(np.array([1, 3, 2, 0], dtype=np.uint8), 2)


def test_packed_size():
    assert packed_size(1, 0) == 0
    assert packed_size(1, 9) == 2
    assert packed_size(3, 8) == 3
    assert packed_size(16, 5) == 10
    for bad in [(0, 1), (17, 1), (1, -1), (1.0, 1), (True, 4)]:
        with pytest.raises(ParameterError):
            packed_size(*bad)


@pytest.mark.parametrize(
    ("codes", "bits", "error"),
    [
        (np.array([0, 4], dtype=np.uint8), 2, InputVectorError),
        (np.array([256], dtype=np.uint16), 8, InputVectorError),
        (np.array([-1, 0], dtype=np.int8), 4, InputVectorError),
        (np.array([1 << 16], dtype=np.uint32), 16, InputVectorError),
        (np.array([0.0, 1.0]), 1, InputDTypeError),
        (np.array([True, False]), 1, InputDTypeError),
        ([0, 1], 1, InputDTypeError),
        (np.array([0], dtype=np.uint8), 0, ParameterError),
        (np.array([0], dtype=np.uint8), 17, ParameterError),
    ],
)
def test_pack_rejects_bad_input(codes, bits, error):
    with pytest.raises(error):
        pack_codes(codes, bits)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_unpack_rejects_wrong_length(bits):
    count = 13
    packed = pack_codes(np.ones(count, dtype=np.uint16), bits)
    for bad in (packed[:-1], packed + b"\x00", b""):
        with pytest.raises(PayloadError, match="exactly"):
            unpack_codes(bad, bits, count)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_unpack_rejects_every_nonzero_padding_bit(bits):
    count = 5
    packed = pack_codes(np.zeros(count, dtype=np.uint8), bits)
    spare = len(packed) * 8 - bits * count
    for bit in range(8 - spare, 8):
        corrupted = packed[:-1] + bytes([packed[-1] | (1 << bit)])
        with pytest.raises(PayloadError, match="padding"):
            unpack_codes(corrupted, bits, count)
    # the last used bit is data, not padding
    last_data = bytes([packed[-1] | (1 << (7 - spare))])
    assert unpack_codes(packed[:-1] + last_data, bits, count)[-1] == 1 << (bits - 1)


def test_unpack_accepts_buffer_types_and_returns_independent_arrays():
    codes = np.array([3, 1, 2, 0, 3], dtype=np.uint8)
    packed = pack_codes(codes, 2)
    mutable = bytearray(packed)
    for buffer in (packed, mutable, memoryview(mutable)):
        np.testing.assert_array_equal(unpack_codes(buffer, 2, 5), codes)
    for bits in (8, 16):
        mutable = bytearray(pack_codes(codes, bits))
        out = unpack_codes(mutable, bits, 5)
        mutable[0] = 99
        np.testing.assert_array_equal(out, codes)
    with pytest.raises(PayloadError):
        unpack_codes("abc", 8, 3)


def test_unpack_absurd_count_is_refused_without_allocating():
    tracemalloc.start()
    try:
        for bits in (1, 3, 16):
            with pytest.raises(PayloadError):
                unpack_codes(b"\x00" * 8, bits, 2**60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ---------------------------------------------------------------------------------------
# Payload writer / reader

FIELDS = [
    ("u8", "version", 7),
    ("u16", "flags", 0xBEEF),
    ("u32", "count", 123456),
    ("f32", "norm", 1.5),
]


def _write_sample():
    writer = PayloadWriter()
    for kind, _, value in FIELDS:
        getattr(writer, f"write_{kind}")(value)
    writer.write_bytes(b"hdr")
    writer.write_array(np.array([1.0, -2.5, 3.25], dtype=np.float32))
    writer.write_codes(np.array([1, 0, 3, 2, 2], dtype=np.uint8), 2)
    writer.write_array(np.array([10, 20], dtype=">i4"))
    return writer


def _read_sample(reader):
    values = [getattr(reader, f"read_{kind}")(name) for kind, name, _ in FIELDS]
    values.append(reader.read_bytes(3, "magic"))
    values.append(reader.read_array(np.float32, 3, "values"))
    values.append(reader.read_codes(2, 5, "codes"))
    values.append(reader.read_array("<i4", 2, "indices"))
    reader.expect_end()
    return values


def test_writer_reader_round_trip():
    writer = _write_sample()
    payload = writer.to_bytes()
    assert len(writer) == len(payload) == 1 + 2 + 4 + 4 + 3 + 12 + 2 + 8
    values = _read_sample(PayloadReader(payload))
    assert values[:3] == [7, 0xBEEF, 123456]
    assert values[3] == 1.5
    assert values[4] == b"hdr"
    assert values[5].tolist() == [1.0, -2.5, 3.25]
    assert values[6].tolist() == [1, 0, 3, 2, 2]
    assert values[7].tolist() == [10, 20]


def test_writer_layout_is_little_endian():
    writer = PayloadWriter()
    writer.write_u16(0x0102)
    writer.write_u32(0x03040506)
    writer.write_f32(0.5)
    writer.write_array(np.array([1], dtype=">u4"))
    assert writer.to_bytes() == (
        b"\x02\x01\x06\x05\x04\x03" + struct.pack("<f", 0.5) + b"\x01\x00\x00\x00"
    )


def test_every_truncated_prefix_raises_payload_error():
    payload = _write_sample().to_bytes()
    for cut in range(len(payload)):
        with pytest.raises(PayloadError, match="truncated payload"):
            _read_sample(PayloadReader(payload[:cut]))


def test_truncation_message_names_field_offset_and_bytes_left():
    reader = PayloadReader(b"\x01\x02\x03")
    reader.read_u8("version")
    with pytest.raises(PayloadError) as info:
        reader.read_u32("count")
    assert str(info.value) == "truncated payload: need 4 bytes for count at offset 1, have 2"
    # a failed read consumes nothing
    assert reader.offset == 1 and reader.remaining == 2
    assert reader.read_u16("rest") == 0x0302


def test_trailing_bytes_are_rejected():
    reader = PayloadReader(b"\x01\x00\x00")
    reader.read_u8("version")
    with pytest.raises(PayloadError, match="payload has 2 unexpected trailing bytes"):
        reader.expect_end()


def test_absurd_array_counts_are_refused_before_allocating():
    reader = PayloadReader(b"\x00" * 16)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="truncated payload"):
            reader.read_array(np.float64, 2**61, "values")
        with pytest.raises(PayloadError, match="truncated payload"):
            reader.read_codes(16, 2**40, "codes")
        with pytest.raises(PayloadError, match="truncated payload"):
            reader.read_bytes(2**62, "blob")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert reader.remaining == 16


def test_read_codes_reports_field_on_bad_padding():
    reader = PayloadReader(b"\xff")
    with pytest.raises(PayloadError, match="codes: .*padding"):
        reader.read_codes(3, 2, "codes")
    with pytest.raises(PayloadError, match="codes: .*padding"):
        PayloadReader(b"\xff").read_packed_codes(3, 2, "codes")
    with pytest.raises(PayloadError, match="truncated"):
        PayloadReader(b"\x01").read_packed_codes(3, 3, "codes")


def test_packed_codes_are_checked_and_kept_packed():
    codes = np.array([5, 0, 7, 2, 1], dtype=np.uint8)
    packed = pack_codes(codes, 3)
    buffer = bytearray(packed)
    kept = PayloadReader(buffer).read_packed_codes(3, 5, "codes")
    buffer[0] ^= 0xFF  # a mutable payload changed later does not change what was checked
    assert kept.tobytes() == packed
    assert np.array_equal(unpack_codes(kept, 3, 5), codes)


@pytest.mark.parametrize("bits", [2, 7, 8])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "2-D"])
def test_written_codes_are_their_packed_bytes_as_they_are_at_to_bytes(bits, layout):
    rng = np.random.default_rng(bits)
    base = rng.integers(0, 1 << bits, size=(6, 10)).astype(np.uint8)
    codes = {"contiguous": base[0], "strided": base[:, 3], "2-D": base}[layout]
    expected = pack_codes(codes, bits)
    writer = PayloadWriter()
    writer.write_u8(9)
    writer.write_codes(codes, bits)
    writer.write_u8(4)
    assert len(writer) == len(expected) + 2
    payload = writer.to_bytes()
    assert payload == b"\x09" + expected + b"\x04"
    base[...] = 0  # the payload is bytes of its own
    assert payload[1:-1] == expected


def test_arrays_from_bytes_are_read_only_views():
    payload = np.arange(4, dtype="<f8").tobytes()
    values = PayloadReader(payload).read_array(np.float64, 4, "values")
    assert not values.flags.writeable
    assert np.shares_memory(values, np.frombuffer(payload, dtype=np.uint8))


@pytest.mark.parametrize("wrap", [bytearray, lambda b: memoryview(bytearray(b))])
def test_arrays_from_mutable_buffers_do_not_alias(wrap):
    buffer = wrap(np.arange(4, dtype="<i4").tobytes())
    values = PayloadReader(buffer).read_array(np.int32, 4, "values")
    buffer[0] = 0xFF
    assert values.tolist() == [0, 1, 2, 3]


def test_reader_reads_any_contiguous_buffer_as_its_bytes():
    payload = bytes(range(8))
    for buffer in (
        bytearray(payload),
        memoryview(payload).cast("I"),
        memoryview(payload).cast("B", (2, 4)),
        np.frombuffer(payload, dtype="<u2"),
    ):
        reader = PayloadReader(buffer)
        assert reader.size == 8
        assert reader.read_bytes(8, "all") == payload


def test_reader_rejects_non_buffers_and_bad_dtypes():
    with pytest.raises(PayloadError):
        PayloadReader("text")
    with pytest.raises(PayloadError, match="contiguous"):
        PayloadReader(np.zeros(8, dtype=np.uint8)[::2])
    with pytest.raises(PayloadError, match="MaskedArray"):
        PayloadReader(np.ma.masked_array(np.zeros(4, dtype=np.uint8)))
    reader = PayloadReader(b"\x00" * 8)
    for dtype in (np.bool_, object, "U2", np.complex64):
        with pytest.raises(ParameterError):
            reader.read_array(dtype, 1, "values")
    with pytest.raises(ParameterError):
        reader.read_array(np.uint8, -1, "values")


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("write_u8", 256),
        ("write_u8", -1),
        ("write_u16", 1 << 16),
        ("write_u32", 1 << 32),
        ("write_u8", True),
        ("write_u32", 1.0),
        ("write_f32", 1e39),
        ("write_f32", "x"),
    ],
)
def test_writer_rejects_out_of_range_values(method, value):
    writer = PayloadWriter()
    with pytest.raises(ParameterError):
        getattr(writer, method)(value)
    assert len(writer) == 0


def test_writer_rejects_bad_arrays_and_bytes():
    writer = PayloadWriter()
    with pytest.raises(InputDTypeError):
        writer.write_array([1, 2])
    with pytest.raises(InputDTypeError):
        writer.write_array(np.array([True]))
    with pytest.raises(InputDTypeError):
        writer.write_bytes("text")
    with pytest.raises(InputVectorError):
        writer.write_codes(np.array([4], dtype=np.uint8), 2)
    # 8-bit uint8 codes are kept by reference: the width is checked all the same
    for bits in (8.0, np.float64(8), True, "8"):
        with pytest.raises(ParameterError):
            writer.write_codes(np.array([4], dtype=np.uint8), bits)
    assert writer.to_bytes() == b""


# ------------------------------------------------------------------------ the envelope


def test_envelope_bytes_are_the_documented_21():
    from quicdesign._envelope import Envelope, read_envelope, write_envelope

    writer = PayloadWriter()
    write_envelope(writer, Envelope(b"QDXY", 1000, 3, 0xDEADBEEF, 7))
    data = writer.to_bytes()
    # magic, version 4, then d, client id, round tag, config tag (u32 little-endian)
    assert data == b"QDXY\x04" + struct.pack("<IIII", 1000, 3, 0xDEADBEEF, 7)
    reader = PayloadReader(data + b"body")
    envelope = read_envelope(reader, b"QDXY", "test")
    assert envelope == Envelope(b"QDXY", 1000, 3, 0xDEADBEEF, 7)
    assert reader.offset == 21
    # a newer body's version byte (QDQE 5) in the same envelope
    writer = PayloadWriter()
    write_envelope(writer, Envelope(b"QDXY", 1000, 3, 0xDEADBEEF, 7, 5))
    assert writer.to_bytes() == b"QDXY\x05" + data[5:]


@pytest.mark.parametrize(
    "envelope",
    [(b"QDX", 1, 1, 1, 1), (b"QDXY", -1, 1, 1, 1), (b"QDXY", 1, 2**32, 1, 1)]
    + [(b"QDXY", 1, 1, 1.0, 1), (b"QDXY", 1, 1, 1, True), (b"QDXY", 1, 1, 1, 1, 3)],
)
def test_envelope_writer_refuses_fields_that_do_not_fit(envelope):
    from quicdesign._envelope import Envelope, write_envelope

    writer = PayloadWriter()
    with pytest.raises(ParameterError):
        write_envelope(writer, Envelope(*envelope))
    assert len(writer) == 0


def test_envelope_reader_dispatches_versions_and_names_what_it_reads():
    from quicdesign._envelope import Envelope, read_envelope, read_envelope_fields

    body = struct.pack("<IIII", 5, 1, 2, 3)
    old = b"QDXY\x02" + body
    with pytest.raises(PayloadError, match=r"version 2 \(this release reads 4\)"):
        read_envelope(PayloadReader(old), b"QDXY", "test")
    legacy = {2: read_envelope_fields}
    assert read_envelope(PayloadReader(old), b"QDXY", "test", legacy=legacy) == Envelope(
        b"QDXY", 5, 1, 2, 3, version=2
    )
    with pytest.raises(PayloadError, match=r"version 3 \(this release reads 2, 4\)"):
        read_envelope(PayloadReader(b"QDXY\x03" + body), b"QDXY", "test", legacy=legacy)
    with pytest.raises(PayloadError, match="not a test payload"):
        read_envelope(PayloadReader(b"QDXZ\x04" + body), b"QDXY", "test")
    for cut in range(21):
        with pytest.raises(PayloadError, match="truncated"):
            read_envelope(PayloadReader((b"QDXY\x04" + body)[:cut]), b"QDXY", "test")
    for dim in (0, 2**31):
        with pytest.raises(PayloadError, match="dimension"):
            read_envelope(
                PayloadReader(b"QDXY\x04" + struct.pack("<IIII", dim, 1, 2, 3)), b"QDXY", "test"
            )


def test_framing_size_counts_only_current_envelopes():
    from quicdesign._envelope import framing_size

    envelope = b"QDXY\x04" + bytes(16)
    assert framing_size(envelope + b"abc") == 21
    assert framing_size(memoryview(envelope + b"abc")) == 21
    assert framing_size(b"QDXY\x02" + bytes(16)) == 0  # a pre-envelope version
    assert framing_size(b"QDQE\x05" + bytes(16)) == 21  # QDQE 5: the envelope, a newer body
    assert framing_size(b"QDXY\x06" + bytes(16)) == 0
    assert framing_size(b"\x00" * 40) == 0  # a bare array
    assert framing_size(envelope[:20]) == 0
