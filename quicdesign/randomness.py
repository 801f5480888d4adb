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
]

SPEC_VERSION = 1
PURPOSE_ROTATION = "rotation"
PURPOSE_SHARED_H = "shared-h"

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
    words = raw_words(round_seed, client_id, purpose, -(-num_bytes // 8))
    # the spec numbers bytes least significant first, whatever the host byte order
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
    bits = check_int(bits, "bits", 0, _MAX_SHARED_BITS)
    if bits == 0:
        # validate the stream identity anyway so bad seeds fail the same way for every bits
        derive_key(round_seed, client_id, purpose)
        return np.zeros(n, dtype=np.uint8)
    stream = _stream_bytes(round_seed, client_id, purpose, n)
    return stream[:n] & np.uint8((1 << bits) - 1)


def round_tag(round_seed) -> int:
    """32-bit tag of a round seed carried in every payload (detects cross-round mixups).

    ``blake2b(u64 little-endian round_seed, digest_size=4, person=b"quicdesign.tag1")``
    read as a little-endian u32 (``docs/randomness.md``).
    """
    seed = check_int(round_seed, "round_seed", 0, _UINT64_LIMIT - 1)
    digest = hashlib.blake2b(struct.pack("<Q", seed), digest_size=4, person=b"quicdesign.tag1")
    return int.from_bytes(digest.digest(), "little")
