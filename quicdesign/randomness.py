"""Shared randomness as a versioned, bit-exact specification (spec version 1).

Clients and the server must draw the *same* rotation signs and the same shared values
``h`` without talking to each other, and a PyTorch or JAX port must reproduce them bit for
bit. So this module pins every step from ``(round_seed, client_id, purpose)`` to bits, and
``docs/randomness.md`` plus ``tests/test_randomness.py`` carry golden vectors.

Specification, version 1
------------------------
Key derivation
    ``key = int.from_bytes(blake2b(data, digest_size=16, person=b"quicdesign.rng1"), "little")``
    where ``data = struct.pack("<QQ", round_seed, client_id) + purpose.encode("utf-8")``.
Generator
    Philox4x64-10 (Random123), multipliers ``0xD2E7470EE14C6C93``, ``0xCA5A826395121157``,
    Weyl key increments ``0x9E3779B97F4A7C15``, ``0xBB67AE8584CAA73B``. The 128-bit key is
    split little-endian into ``(k0, k1) = (key & (2**64 - 1), key >> 64)``. Raw word ``4*i + j``
    (``j`` in 0..3) is output word ``j`` of the Philox block at counter ``i + 1``, where the
    256-bit counter is the little-endian word tuple ``(c0, c1, c2, c3)``. This is exactly
    ``numpy.random.Philox(key=key).random_raw(count)``: numpy stores a zero counter and
    increments it *before* computing each block, so the first block uses counter 1.
    Only this raw 64-bit stream is part of the spec; numpy ``Generator`` methods are not
    used because their algorithms may change between releases.
Rotation signs
    Purpose ``"rotation"``, ``client_id = 0``. Bit ``j`` of the stream is bit ``j % 64``
    (least significant first) of raw word ``j // 64``; sign ``j`` is ``+1`` if that bit is 0
    and ``-1`` if it is 1.
Shared values
    Purpose ``"shared-h"`` by default. Byte ``j`` of the stream is byte ``j % 8`` (least
    significant first) of raw word ``j // 8``; value ``j`` is ``byte_j & (2**bits - 1)``.

Stratified shared values (opt-in, stratification version 1)
    Purpose ``"stratified-h"``. A client with index ``i`` in the round (``0 <= i < 2**32``,
    assigned by the server) belongs to block ``B = i // H`` and slot ``s = i % H``, with
    ``H = 2**bits``. The block's stream is ``(round_seed, B, "stratified-h")``; bytes
    ``3j``, ``3j + 1``, ``3j + 2`` of it give ``x_j = byte & (H - 1)``,
    ``a_j = (2 * byte + 1) & (H - 1)`` and ``c_j = byte & (H - 1)``, and value ``j`` is
    ``(((s ^ x_j) * a_j) + c_j) & (H - 1)``. For each ``j`` this is a bijection of the
    slots of a block (xor, multiplication by an odd number and addition modulo ``2**bits``),
    so the ``H`` clients of a block use every value exactly once, while each client's value
    is uniform (``c_j`` is): unbiasedness and per-client error are those of independent
    draws.

Lattice dither (opt-in, dither version 1)
    Purpose ``"lattice-dither"``, per client (``client_id`` of the payload). Value ``j`` is
    ``(word_j >> 11) * 2**-53``, a uniform double in ``[0, 1)`` with 53 random bits
    (exactly representable, so every platform gets the same value).

Client-private randomness (coin flips only the sender needs) is not part of this spec:
callers pass their own ``numpy.random.Generator``.
"""

import hashlib
import struct

import numpy as np

from quicdesign._validate import check_int
from quicdesign.errors import ParameterError

__all__ = [
    "SPEC_VERSION",
    "PURPOSE_ROTATION",
    "PURPOSE_SHARED_H",
    "derive_key",
    "raw_words",
    "rotation_signs",
    "shared_values",
    "round_tag",
    "stratified_shared_values",
    "STRATIFICATION_VERSION",
    "PURPOSE_STRATIFIED_H",
    "PURPOSE_LATTICE_DITHER",
    "DITHER_VERSION",
    "dither_uniforms",
]

SPEC_VERSION = 1
PURPOSE_ROTATION = "rotation"
PURPOSE_SHARED_H = "shared-h"
PURPOSE_STRATIFIED_H = "stratified-h"
#: Version of the stratified mapping below (part of the spec; bump on any change).
STRATIFICATION_VERSION = 1
PURPOSE_LATTICE_DITHER = "lattice-dither"
#: Version of the dither mapping of :func:`dither_uniforms` (bump on any change).
DITHER_VERSION = 1

_PERSONALIZATION = b"quicdesign.rng1"
_UINT64_LIMIT = 1 << 64
_MAX_SHARED_BITS = 8
_SIGN_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int8))


def derive_key(round_seed, client_id, purpose):
    """Derive the 128-bit Philox key for one ``(round, client, purpose)`` stream.

    Parameters
    ----------
    round_seed, client_id : int
        Integers in ``[0, 2**64)``. Use ``client_id = 0`` for round-wide randomness.
    purpose : str
        Non-empty label separating independent streams, e.g. ``PURPOSE_ROTATION``.

    Returns
    -------
    int
        The key, ``0 <= key < 2**128``.
    """
    round_seed = check_int(round_seed, "round_seed", 0, _UINT64_LIMIT - 1)
    client_id = check_int(client_id, "client_id", 0, _UINT64_LIMIT - 1)
    if not isinstance(purpose, str) or not purpose:
        raise ParameterError(f"purpose must be a non-empty str, got {purpose!r}")
    data = struct.pack("<QQ", round_seed, client_id) + purpose.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=16, person=_PERSONALIZATION).digest()
    return int.from_bytes(digest, "little")


def raw_words(round_seed, client_id, purpose, count):
    """Return the first ``count`` raw 64-bit words of a stream.

    Parameters
    ----------
    round_seed, client_id : int
        Integers in ``[0, 2**64)``.
    purpose : str
        Non-empty stream label.
    count : int
        Number of words, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array of shape ``(count,)``: Philox4x64-10 with key
        ``derive_key(round_seed, client_id, purpose)`` and a zero initial counter.
    """
    key = derive_key(round_seed, client_id, purpose)
    count = check_int(count, "count", 0)
    return np.random.Philox(key=key).random_raw(count)


def _stream_bytes(round_seed, client_id, purpose, num_bytes):
    return key_stream_bytes(derive_key(round_seed, client_id, purpose), num_bytes)


def key_stream_bytes(key, num_bytes):
    """The first ``num_bytes`` bytes (rounded up to whole words) of the stream of Philox
    ``key`` (a :func:`derive_key` value): its raw 64-bit words, least significant byte
    first whatever the host byte order (the spec's numbering)."""
    words = np.random.Philox(key=key).random_raw(-(-num_bytes // 8))
    return words.astype("<u8", copy=False).view(np.uint8)


def rotation_signs(round_seed, n, dtype=np.float32, *, client_id=0, purpose=PURPOSE_ROTATION):
    """Return ``n`` rotation signs in ``{+1, -1}`` (the round's by default).

    Parameters
    ----------
    round_seed : int
        Integer in ``[0, 2**64)`` shared by every client of the round.
    n : int
        Number of signs, ``>= 0`` (``RotationLayout.rotated_dim``).
    dtype : data-type, optional
        ``float16``, ``float32`` (default), ``float64`` or ``int8``.
    client_id : int, optional
        0 (the round-wide rotation) unless a scheme rotates per client (EDEN).
    purpose : str, optional
        Stream label, ``PURPOSE_ROTATION`` by default.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``; sign ``j`` is ``-1`` exactly when bit ``j`` of the
        ``(round_seed, client_id, purpose)`` stream is set.
    """
    n = check_int(n, "n", 0)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ParameterError(f"dtype {dtype!r} is not a numpy data type") from None
    if dtype not in _SIGN_DTYPES:
        raise ParameterError(f"sign dtype must be float16, float32, float64 or int8, got {dtype}")
    stream = _stream_bytes(round_seed, client_id, purpose, -(-n // 8))
    bits = np.unpackbits(stream, count=n, bitorder="little")
    # 1 - 2*bit maps 0 -> +1 and 1 -> -1 without a branch
    signs = bits.astype(dtype)
    signs *= -2
    signs += 1
    return signs


def _check_shared_bits(bits):
    return check_int(bits, "bits", 0, _MAX_SHARED_BITS)


def stratified_shared_values(round_seed, client_index, bits, n):
    """Return ``n`` shared values for the client at ``client_index``, stratified.

    The clients with indices ``k * 2**bits .. (k + 1) * 2**bits - 1`` use, at every
    coordinate, each of the ``2**bits`` values exactly once (a permutation drawn per
    coordinate from the round's stream); each client's values alone are uniform and
    independent across coordinates, exactly like :func:`shared_values`.

    Parameters
    ----------
    round_seed : int
        Integer in ``[0, 2**64)``.
    client_index : int
        The client's index in the round, in ``[0, 2**32)`` (assigned by the server).
    bits : int
        Bits per value, ``0 <= bits <= 8``.
    n : int
        Number of values, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(n,)`` (see the module docstring for the mapping).
    """
    n = check_int(n, "n", 0)
    bits = _check_shared_bits(bits)
    client_index = check_int(client_index, "client_index", 0, 2**32 - 1)
    block, slot = divmod(client_index, 1 << bits)
    if bits == 0:
        derive_key(round_seed, block, PURPOSE_STRATIFIED_H)
        return np.zeros(n, dtype=np.uint8)
    mask = np.uint8((1 << bits) - 1)
    stream = _stream_bytes(round_seed, block, PURPOSE_STRATIFIED_H, 3 * n)[: 3 * n]
    triples = stream.reshape(n, 3) if n else stream.reshape(0, 3)
    xor, multiplier, offset = triples[:, 0], triples[:, 1], triples[:, 2]
    values = np.bitwise_xor(np.uint8(slot), xor)
    values *= (multiplier << np.uint8(1)) | np.uint8(1)  # odd: a bijection modulo 2**bits
    values += offset
    return values & mask


def shared_values(round_seed, client_id, bits, n, *, purpose=PURPOSE_SHARED_H):
    """Return ``n`` shared integers in ``[0, 2**bits)`` for one client.

    Parameters
    ----------
    round_seed, client_id : int
        Integers in ``[0, 2**64)``; the server regenerates the values from them.
    bits : int
        Bits per value, ``0 <= bits <= 8``; ``0`` gives all zeros.
    n : int
        Number of values, ``>= 0``.
    purpose : str, optional
        Stream label, ``PURPOSE_SHARED_H`` by default.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(n,)``; value ``j`` is byte ``j`` of the stream
        masked to its low ``bits`` bits.
    """
    n = check_int(n, "n", 0)
    bits = _check_shared_bits(bits)
    if bits == 0:
        # validate the stream identity anyway so bad seeds fail the same way for every bits
        derive_key(round_seed, client_id, purpose)
        return np.zeros(n, dtype=np.uint8)
    stream = _stream_bytes(round_seed, client_id, purpose, n)
    return stream[:n] & np.uint8((1 << bits) - 1)


def dither_uniforms(round_seed, client_id, n, *, purpose=PURPOSE_LATTICE_DITHER):
    """Return ``n`` shared uniform doubles in ``[0, 1)`` (the lattice dither stream).

    Parameters
    ----------
    round_seed, client_id : int
        Integers in ``[0, 2**64)``; the server regenerates the values from them.
    n : int
        Number of values, ``>= 0``.
    purpose : str, optional
        Stream label, ``PURPOSE_LATTICE_DITHER`` by default.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(n,)``; value ``j`` is ``(word_j >> 11) * 2**-53``.
    """
    n = check_int(n, "n", 0)
    words = raw_words(round_seed, client_id, purpose, n)
    # the top 53 bits scaled by 2**-53: exact in float64, the same on every platform
    # (in place: the server regenerates a client's dither for every payload)
    words >>= np.uint64(11)
    uniforms = words.astype(np.float64)
    uniforms *= 2.0**-53
    return uniforms


def round_tag(round_seed) -> int:
    """32-bit tag of a round seed carried in every payload (detects cross-round mixups).

    ``blake2b(u64 little-endian round_seed, digest_size=4, person=b"quicdesign.tag1")``
    read as a little-endian u32 (``docs/randomness.md``).
    """
    return _tag(round_seed, b"quicdesign.tag1")


def _mode_round_tag(round_seed, stratified: bool) -> int:
    """The payload tag of a round: stratified rounds use the personalisation
    ``b"quicdesign.tgs1"``, so a payload is never decoded with the other mode's ``h``."""
    return _tag(round_seed, b"quicdesign.tgs1") if stratified else round_tag(round_seed)


def _tag(round_seed, person: bytes) -> int:
    seed = check_int(round_seed, "round_seed", 0, _UINT64_LIMIT - 1)
    digest = hashlib.blake2b(struct.pack("<Q", seed), digest_size=4, person=person)
    return int.from_bytes(digest.digest(), "little")
