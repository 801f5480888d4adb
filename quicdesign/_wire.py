"""The one bit packer and the one validated payload reader/writer.

Every compressor writes its payload with :class:`PayloadWriter` and parses it with
:class:`PayloadReader`, so the guarantees against hostile input hold everywhere: every read
is bounds-checked with a message naming the field, array reads are refused before any
allocation when the payload cannot hold them, and trailing bytes are an error.

Packed codes use one layout for every width ``bits`` in 1..16: code ``j`` occupies stream
bits ``[j*bits, (j+1)*bits)``, least significant bit first, and stream bit ``i`` is bit
``i % 8`` of byte ``i // 8`` (``numpy.packbits(..., bitorder="little")`` order). Unused
bits of the last byte must be zero.
"""

import functools
import struct
import sys

import numpy as np

from quicdesign._kernels import compiled_kernels
from quicdesign._validate import check_int
from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError, PayloadError

__all__ = [
    "MAX_CODE_BITS",
    "packed_size",
    "pack_codes",
    "unpack_codes",
    "PayloadWriter",
    "PayloadReader",
]

MAX_CODE_BITS = 16
# eight codes always end on a byte boundary, so groups of eight are packed independently
_GROUP = 8
_ARRAY_KINDS = "iuf"


def _check_bits(bits):
    return check_int(bits, "bits", 1, MAX_CODE_BITS)


def packed_size(bits, count):
    """Return the number of bytes holding ``count`` codes of ``bits`` bits each.

    Parameters
    ----------
    bits : int
        Code width, 1..16.
    count : int
        Number of codes, ``>= 0``.

    Returns
    -------
    int
        ``ceil(bits * count / 8)``.
    """
    bits = _check_bits(bits)
    count = check_int(count, "count", 0)
    return (bits * count + 7) // 8


# bits -> (lane, factor): multiplying a little-endian lane of ``8 // bits`` codes (code i in
# byte i) by the factor gathers them, code i at bit ``bits * i``, in the lane's top byte;
# the other partial products land in disjoint fields below it (no carry) or overflow.
_MULTIPLY_PACK = {2: (np.uint32, 0x01041040), 4: (np.uint16, 0x0110)}


def _pack_sub_byte(codes, bits):
    """Pack codes whose width divides 8: one multiply per lane (2 and 4 bits on
    little-endian hosts), else by or-ing shifted columns of a (bytes, k) view."""
    per_byte = 8 // bits
    num_bytes = -(-codes.size // per_byte)
    if codes.size % per_byte == 0 and codes.flags.c_contiguous:
        padded = codes
    else:
        padded = np.zeros(num_bytes * per_byte, dtype=np.uint8)
        padded[: codes.size] = codes
    if bits in _MULTIPLY_PACK and sys.byteorder == "little":
        lane, factor = _MULTIPLY_PACK[bits]
        gathered = padded.view(lane) * lane(factor)
        return gathered.view(np.uint8)[per_byte - 1 :: per_byte].tobytes()
    columns = padded.reshape(num_bytes, per_byte)
    packed = columns[:, 0].copy()
    for i in range(1, per_byte):
        packed |= columns[:, i] << (i * bits)
    return packed.tobytes()


def _gather_fields(lanes, lane_bits, bits, count):
    """Move field ``i`` of a uint64 from bit ``i * lane_bits`` down to bit ``i * bits``."""
    field_mask = (1 << bits) - 1
    out = lanes & np.uint64(field_mask)
    for i in range(1, count):
        shifted = lanes >> np.uint64(i * (lane_bits - bits))
        out |= shifted & np.uint64(field_mask << (i * bits))
    return out


def _spread_fields(packed, lane_bits, bits, count):
    """Inverse of :func:`_gather_fields`: move field ``i`` up to bit ``i * lane_bits``."""
    field_mask = (1 << bits) - 1
    out = packed & np.uint64(field_mask)
    for i in range(1, count):
        field = packed & np.uint64(field_mask << (i * bits))
        out |= field << np.uint64(i * (lane_bits - bits))
    return out


def _pack_groups(codes, bits, num_bytes):
    """Pack any width with word-parallel shifts: eight codes fill exactly ``bits`` bytes.

    Eight byte-sized (or, above 8 bits, 16-bit) codes already sit in one (two) uint64
    lanes; squeezing out the unused high bits of every lane packs the group.
    """
    groups = -(-codes.size // _GROUP)
    if bits <= 8:
        padded = np.zeros(groups * _GROUP, dtype=np.uint8)
        padded[: codes.size] = codes
        lanes = padded.view("<u8").astype(np.uint64, copy=False)
        words = _gather_fields(lanes, 8, bits, _GROUP)[:, None]
    else:
        padded = np.zeros(groups * _GROUP, dtype="<u2")
        padded[: codes.size] = codes
        lanes = padded.view("<u8").astype(np.uint64, copy=False).reshape(groups, 2)
        low = _gather_fields(lanes[:, 0], 16, bits, 4)
        high = _gather_fields(lanes[:, 1], 16, bits, 4)
        # the 8*bits-bit group straddles two words: 4*bits < 64 for bits < 16
        words = np.empty((groups, 2), dtype=np.uint64)
        words[:, 0] = low | (high << np.uint64(4 * bits))
        words[:, 1] = high >> np.uint64(64 - 4 * bits)
    group_bytes = words.astype("<u8", copy=False).view(np.uint8)[:, :bits]
    return np.ascontiguousarray(group_bytes).reshape(-1)[:num_bytes].tobytes()


def pack_codes(codes, bits):
    """Pack non-negative integer codes tightly, ``bits`` bits each, LSB first.

    Parameters
    ----------
    codes : numpy.ndarray
        Integer array with values in ``[0, 2**bits)``; flattened in C order.
    bits : int
        Code width, 1..16.

    Returns
    -------
    bytes
        ``packed_size(bits, codes.size)`` bytes; unused bits of the last byte are zero.

    Raises
    ------
    InputDTypeError
        If ``codes`` is not an integer array.
    InputVectorError
        If a code is negative or does not fit in ``bits`` bits.
    """
    bits = _check_bits(bits)
    if not isinstance(codes, np.ndarray):
        raise InputDTypeError(f"codes must be a numpy integer array, got {type(codes).__name__}")
    if codes.dtype.kind not in "iu":
        raise InputDTypeError(f"codes must have an integer dtype, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.size == 0:
        return b""
    limit = 1 << bits
    # skip the scan when the dtype itself cannot exceed the width
    if flat.dtype.kind == "i" or np.iinfo(flat.dtype).max >= limit:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            raise InputVectorError(f"codes must be in [0, 2**{bits}), found {bad}")
    if bits == 1:
        return np.packbits(flat.astype(np.uint8, copy=False), bitorder="little").tobytes()
    if bits == 8:
        return flat.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return flat.astype("<u2", copy=False).tobytes()
    # 2..7 bits: one compiled pass beats numpy's shifted columns (same bytes)
    kernels = compiled_kernels() if bits < 8 else None
    if kernels is not None:
        flat = np.ascontiguousarray(flat)
        if bits in (2, 4) and flat.dtype == np.uint8 and sys.byteorder == "little":
            return kernels.pack_byte_codes(flat, bits).tobytes()
        return kernels.pack_codes(flat, bits).tobytes()
    if 8 % bits == 0:
        return _pack_sub_byte(flat.astype(np.uint8, copy=False), bits)
    return _pack_groups(flat, bits, packed_size(bits, flat.size))


def _as_byte_array(buffer, what):
    try:
        view = memoryview(buffer)
        if not view.c_contiguous:
            raise TypeError
        return np.frombuffer(view.cast("B"), dtype=np.uint8)
    except (TypeError, ValueError):
        raise PayloadError(
            f"{what} must be a contiguous bytes-like object, got {type(buffer).__name__}"
        ) from None


@functools.cache
def _sub_byte_table(bits):
    """Read-only table mapping a byte to its ``8 // bits`` codes, viewed as one wide int."""
    shifts = np.arange(0, 8, bits)
    table = ((np.arange(256)[:, None] >> shifts) & ((1 << bits) - 1)).astype(np.uint8)
    # a byte's codes are contiguous, so one gather of a wide int unpacks them all at once
    wide = table.view(f"<u{8 // bits}").reshape(256)
    wide.flags.writeable = False
    return wide


def _unpack_sub_byte(data, bits, count):
    return np.take(_sub_byte_table(bits), data).view(np.uint8)[:count]


def _unpack_groups(data, bits, count):
    groups = -(-count // _GROUP)
    lane_bytes = 8 if bits <= 8 else 16
    whole_groups = np.zeros(groups * bits, dtype=np.uint8)
    whole_groups[: data.size] = data
    staged = np.zeros((groups, lane_bytes), dtype=np.uint8)
    staged[:, :bits] = whole_groups.reshape(groups, bits)
    words = staged.view("<u8").astype(np.uint64, copy=False)
    if bits <= 8:
        lanes = _spread_fields(words[:, 0], 8, bits, _GROUP)
        return lanes.astype("<u8", copy=False).view(np.uint8)[:count]
    half_mask = np.uint64((1 << (4 * bits)) - 1)
    low = words[:, 0] & half_mask
    high = (words[:, 0] >> np.uint64(4 * bits)) | (words[:, 1] << np.uint64(64 - 4 * bits))
    lanes = np.empty((groups, 2), dtype=np.uint64)
    lanes[:, 0] = _spread_fields(low, 16, bits, 4)
    lanes[:, 1] = _spread_fields(high & half_mask, 16, bits, 4)
    return lanes.astype("<u8", copy=False).view("<u2").reshape(-1)[:count].astype(np.uint16)


def unpack_codes(buffer, bits, count):
    """Unpack ``count`` codes written by :func:`pack_codes`.

    Parameters
    ----------
    buffer : bytes-like
        Exactly ``packed_size(bits, count)`` bytes.
    bits : int
        Code width, 1..16.
    count : int
        Number of codes, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        New array of shape ``(count,)``: ``uint8`` for ``bits <= 8``, else ``uint16``.

    Raises
    ------
    PayloadError
        If the length is not exactly ``packed_size(bits, count)`` or a padding bit is set.
    """
    bits = _check_bits(bits)
    count = check_int(count, "count", 0)
    data = _as_byte_array(buffer, "packed codes")
    _check_packed(data, bits, count)
    if bits == 1:
        return np.unpackbits(data, count=count, bitorder="little")
    if bits == 8:
        return data.copy()
    if bits == 16:
        return data.view("<u2").astype(np.uint16)
    if 8 % bits == 0:
        return _unpack_sub_byte(data, bits, count)
    return _unpack_groups(data, bits, count)


def _check_packed(data, bits, count):
    """PayloadError unless ``data`` is exactly ``count`` packed codes with zero padding."""
    expected = (bits * count + 7) // 8
    # checked before any allocation, so ``count`` is bounded by the bytes actually received
    if data.size != expected:
        raise PayloadError(
            f"packed codes must be exactly {expected} bytes for {count} codes of {bits} bits, "
            f"got {data.size}"
        )
    spare_bits = expected * 8 - bits * count
    if spare_bits and data[-1] >> (8 - spare_bits):
        raise PayloadError(f"packed codes have nonzero padding in the last {spare_bits} bits")


_FORMATS = {
    "u8": (struct.Struct("<B"), 0, 2**8 - 1),
    "u16": (struct.Struct("<H"), 0, 2**16 - 1),
    "u32": (struct.Struct("<I"), 0, 2**32 - 1),
    "f32": (struct.Struct("<f"), None, None),
}


def _little_endian_dtype(dtype):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ParameterError(f"{dtype!r} is not a numpy data type") from None
    if dtype.kind not in _ARRAY_KINDS:
        raise ParameterError(f"payload arrays must be integer or float, got {dtype}")
    return dtype.newbyteorder("<")


class PayloadWriter:
    """Accumulate a little-endian payload field by field.

    Examples
    --------
    >>> writer = PayloadWriter()
    >>> writer.write_u8(1)
    >>> writer.write_f32(0.5)
    >>> writer.to_bytes()
    b'\\x01\\x00\\x00\\x00?'
    """

    def __init__(self):
        self._parts = []
        self._size = 0

    def __len__(self):
        return self._size

    def _append(self, data):
        self._parts.append(data)
        self._size += len(data)

    def _write_int(self, kind, value):
        codec, low, high = _FORMATS[kind]
        value = check_int(value, kind, low, high)
        self._append(codec.pack(value))

    def _write_float(self, kind, value):
        codec = _FORMATS[kind][0]
        try:
            self._append(codec.pack(float(value)))
        except (TypeError, ValueError):
            raise ParameterError(f"{kind} needs a real number, got {value!r}") from None
        except OverflowError:
            raise ParameterError(f"{value!r} is out of range for {kind}") from None

    def write_u8(self, value):
        """Append an unsigned 8-bit integer."""
        self._write_int("u8", value)

    def write_u16(self, value):
        """Append an unsigned 16-bit integer."""
        self._write_int("u16", value)

    def write_u32(self, value):
        """Append an unsigned 32-bit integer."""
        self._write_int("u32", value)

    def write_f32(self, value):
        """Append an IEEE float32 (rounded from ``value``)."""
        self._write_float("f32", value)

    def write_bytes(self, data):
        """Append raw bytes (any contiguous bytes-like object), copied now."""
        if type(data) is bytes:  # immutable: kept as is (one copy less of packed codes)
            self._append(data)
            return
        try:
            self._append(memoryview(data).cast("B").tobytes())
        except TypeError:
            raise InputDTypeError(
                f"write_bytes needs a contiguous bytes-like object, got {type(data).__name__}"
            ) from None

    def write_array(self, array):
        """Append an integer or float array's values in C order, little-endian, no header."""
        if not isinstance(array, np.ndarray):
            raise InputDTypeError(f"write_array needs a numpy array, got {type(array).__name__}")
        if array.dtype.kind not in _ARRAY_KINDS:
            raise InputDTypeError(f"payload arrays must be integer or float, got {array.dtype}")
        self._append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())

    def write_codes(self, codes, bits):
        """Append codes packed by :func:`pack_codes`.

        8-bit codes in a uint8 array are their own packed bytes: they are kept by
        reference (a contiguous copy if they are not contiguous) and copied once, by
        :meth:`to_bytes` (not a second megabyte per 2**20 codes), so ``codes`` must not
        change before then.
        """
        bits = _check_bits(bits)
        if bits == 8 and isinstance(codes, np.ndarray) and codes.dtype == np.uint8:
            self._append(memoryview(np.ascontiguousarray(codes).reshape(-1)))
            return
        self._append(pack_codes(codes, bits))

    def to_bytes(self):
        """Return everything written so far as one ``bytes`` object."""
        return b"".join(self._parts)


class PayloadReader:
    """Parse a payload field by field with bounds checks.

    Parameters
    ----------
    buffer : bytes-like
        The payload: any C-contiguous buffer (``bytes``, ``bytearray``, a ``memoryview``
        of any format such as ``memoryview(p).cast("I")``, a uint8 array), read as its
        raw bytes. A ``bytes`` payload is read without copying (arrays are read-only
        views of it); any other buffer is copied per array, so later writes to it cannot
        change what was returned (while the reader lives, a ``bytearray`` cannot be resized).

    Raises
    ------
    PayloadError
        On every read past the end, with the field name, offset and bytes left.
    """

    def __init__(self, buffer):
        if isinstance(buffer, (str, np.ma.MaskedArray)):
            # a str has no bytes; a masked array's buffer holds values the mask hides
            raise PayloadError(
                f"payload must be a C-contiguous bytes-like object, got {type(buffer).__name__}"
            )
        self._immutable = isinstance(buffer, bytes)
        self._data = _as_byte_array(buffer, "payload")
        self._offset = 0

    @property
    def size(self):
        """Total payload size in bytes (whatever the item size of the buffer given)."""
        return self._data.size

    @property
    def offset(self):
        """Number of bytes consumed so far."""
        return self._offset

    @property
    def remaining(self):
        """Number of bytes not yet consumed."""
        return self._data.size - self._offset

    def _take(self, size, field):
        if size > self.remaining:
            raise PayloadError(
                f"truncated payload: need {size} bytes for {field} at offset {self._offset}, "
                f"have {self.remaining}"
            )
        start = self._offset
        self._offset += size
        return self._data[start : start + size]

    def _read_scalar(self, kind, field):
        codec = _FORMATS[kind][0]
        return codec.unpack(self._take(codec.size, field))[0]

    def read_u8(self, field):
        """Read an unsigned 8-bit integer named ``field``."""
        return self._read_scalar("u8", field)

    def read_u16(self, field):
        """Read an unsigned 16-bit integer named ``field``."""
        return self._read_scalar("u16", field)

    def read_u32(self, field):
        """Read an unsigned 32-bit integer named ``field``."""
        return self._read_scalar("u32", field)

    def read_f32(self, field):
        """Read a float32 named ``field`` (returned as a Python float)."""
        return self._read_scalar("f32", field)

    def read_bytes(self, count, field):
        """Read ``count`` raw bytes named ``field`` as ``bytes``."""
        count = check_int(count, "count", 0)
        return self._take(count, field).tobytes()

    def read_array(self, dtype, count, field):
        """Read ``count`` little-endian values of an integer or float ``dtype``.

        The size is checked against the bytes left before anything is allocated.
        Returns a read-only view when the payload is ``bytes``, otherwise a copy.
        """
        dtype = _little_endian_dtype(dtype)
        count = check_int(count, "count", 0)
        raw = self._take(count * dtype.itemsize, field)
        values = raw.view(dtype)
        if not dtype.isnative:
            return values.astype(dtype.newbyteorder("="))
        return values if self._immutable else values.copy()

    def read_codes(self, bits, count, field):
        """Read ``count`` codes of ``bits`` bits packed by :func:`pack_codes`."""
        raw = self._take(packed_size(bits, count), field)
        try:
            return unpack_codes(raw, bits, count)
        except PayloadError as exc:
            raise PayloadError(f"{field}: {exc}") from None

    def read_packed_codes(self, bits, count, field):
        """The bytes of ``count`` packed ``bits``-bit codes, checked as :meth:`read_codes`
        checks them (size, zero padding) but left packed."""
        bits = _check_bits(bits)
        count = check_int(count, "count", 0)
        raw = self._take(packed_size(bits, count), field)
        data = raw if self._immutable else raw.copy()
        try:
            _check_packed(data, bits, count)
        except PayloadError as exc:
            raise PayloadError(f"{field}: {exc}") from None
        return data

    def expect_end(self):
        """Raise ``PayloadError`` if any bytes are left unread."""
        if self.remaining:
            raise PayloadError(f"payload has {self.remaining} unexpected trailing bytes")
