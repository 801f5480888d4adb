"""The one payload envelope: written and read here only (``docs/wire-format.md``).

Every payload of every scheme starts with the same 21 bytes (little-endian)::

    magic      4 bytes   one per scheme, e.g. b"QDQF" (QUIC-FL), b"QDSQ" (min-max SQ)
    version    u8        ENVELOPE_VERSION (4) for every scheme; QDQE writes 5 (its body's
                         wide rANS coder), the envelope the same
    dim        u32       length of the client vector
    client_id  u32       client id in [0, 2**32)
    round_tag  u32       the round's tag (quicdesign.randomness.round_tag)
    config     u32       the scheme's tag of its wire-relevant parameters

What follows is the scheme's body. Readers of the versions written before the envelope
existed (QDQF 2, QDQE 3, QDQD 1, the baselines' 2) are passed in by the schemes as
``legacy`` layouts, so the version dispatch is also here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._validate import MAX_DIM, check_int
from ._wire import PayloadReader, PayloadWriter
from .errors import ParameterError, PayloadError

__all__ = [
    "ENVELOPE_VERSION",
    "ENVELOPE_SIZE",
    "Envelope",
    "config_tag",
    "write_envelope",
    "read_envelope",
    "read_envelope_fields",
    "check_envelope",
    "framing_size",
]

#: One version for every scheme: 4 is above every version written before the envelope.
ENVELOPE_VERSION = 4
#: Versions whose first 21 bytes are this envelope (5: QDQE's wide rANS body).
FRAMED_VERSIONS = (ENVELOPE_VERSION, 5)
_FIELDS = struct.Struct("<IIII")  # dim, client_id, round_tag, config_tag
ENVELOPE_SIZE = 4 + 1 + _FIELDS.size


@dataclass(frozen=True)
class Envelope:
    """The envelope's fields (``magic`` and ``version`` already checked by the reader).

    ``legacy_head`` holds scheme fields a pre-envelope header carried in front of the
    body (QUIC-FL's ``b, l, chunks, fingerprint, n_exact``); None for version 4.
    """

    magic: bytes
    dim: int
    client_id: int
    round_tag: int
    config_tag: int
    version: int = ENVELOPE_VERSION
    legacy_head: tuple | None = None


def config_tag(*items) -> int:
    """32-bit tag of a scheme's wire-relevant parameters (detects another config's payloads)."""
    digest = hashlib.blake2b(repr(items).encode(), digest_size=4, person=b"quicdesign.cfg1")
    return int.from_bytes(digest.digest(), "little")


_WHOLE = struct.Struct("<4sBIIII")


def write_envelope(writer: PayloadWriter, envelope: Envelope) -> None:
    """Write the 21-byte envelope (its version: the current one unless a scheme's newer
    body says otherwise, one of :data:`FRAMED_VERSIONS`).

    Raises ``ParameterError`` if the magic is not 4 bytes or a field is not a u32.
    """
    fields = (envelope.dim, envelope.client_id, envelope.round_tag, envelope.config_tag)
    if len(envelope.magic) != 4:
        raise ParameterError(f"a payload magic is 4 bytes, got {envelope.magic!r}")
    if envelope.version not in FRAMED_VERSIONS:
        raise ParameterError(f"an envelope has version 4 or 5, got {envelope.version!r}")
    if any(type(value) is bool for value in fields):
        raise ParameterError("envelope fields must be integers, got a bool")
    try:
        writer.write_bytes(_WHOLE.pack(envelope.magic, envelope.version, *fields))
    except struct.error:
        for name, value in zip(
            ("dim", "client_id", "round_tag", "config_tag"), fields, strict=True
        ):
            check_int(value, name, 0, 2**32 - 1)
        raise  # pragma: no cover - every struct.error above is a field out of range


def read_envelope_fields(reader: PayloadReader, magic: bytes, version: int) -> Envelope:
    """Read ``dim, client_id, round_tag, config`` (the layout of version 4 and baseline 2)."""
    dim, client_id, tag, config = _FIELDS.unpack(reader.read_bytes(_FIELDS.size, "envelope"))
    return Envelope(magic, dim, client_id, tag, config, version)


#: A pre-envelope layout: reads everything after magic and version.
LegacyLayout = Callable[[PayloadReader, bytes, int], Envelope]


def read_envelope(
    reader: PayloadReader,
    expected_magic: bytes,
    scheme: str,
    *,
    legacy: Mapping[int, LegacyLayout] | None = None,
) -> Envelope:
    """Read and check the envelope of a ``scheme`` payload.

    Parameters
    ----------
    reader : PayloadReader
        Positioned at the start of the payload; left at the start of the body.
    expected_magic : bytes
        The scheme's 4-byte magic.
    scheme : str
        Name used in error messages.
    legacy : mapping of int to callable, optional
        Older versions still read, each with the function reading its layout after the
        version byte.

    Raises
    ------
    PayloadError
        Truncated envelope, foreign magic, unsupported version, or a dimension outside
        ``1..MAX_DIM`` (checked before anyone allocates for it).
    """
    found = reader.read_bytes(len(expected_magic), "magic")
    if found != expected_magic:
        raise PayloadError(
            f"bad magic {found!r}: not a {scheme} payload (expected {expected_magic!r})"
        )
    version = reader.read_u8("version")
    if version == ENVELOPE_VERSION:
        envelope = read_envelope_fields(reader, found, version)
    elif legacy and version in legacy:
        envelope = legacy[version](reader, found, version)
    else:
        readable = sorted({ENVELOPE_VERSION, *(legacy or ())})
        raise PayloadError(
            f"unsupported {scheme} wire version {version} "
            f"(this release reads {', '.join(map(str, readable))})"
        )
    if not 1 <= envelope.dim <= MAX_DIM:
        raise PayloadError(f"payload dimension {envelope.dim} outside 1..{MAX_DIM}")
    return envelope


def check_envelope(envelope: Envelope, *, dim: int, round_tag: int, config: int, scheme: str):
    """Refuse a payload of another dimension, round or configuration (``PayloadError``)."""
    if envelope.dim != dim:
        raise PayloadError(
            f"payload dimension {envelope.dim} does not match the aggregator's {dim}"
        )
    if envelope.round_tag != round_tag:
        raise PayloadError(f"payload belongs to another round (tag {envelope.round_tag:#010x})")
    if envelope.config_tag != config:
        raise PayloadError(
            f"payload was encoded with other {scheme} parameters "
            f"(config {envelope.config_tag:#010x})"
        )


def framing_size(payload) -> int:
    """Bytes of framing in front of ``payload``'s body: ``ENVELOPE_SIZE`` for a payload
    that starts with a current envelope (magic ``QD..``, version 4, or QDQE's 5), else 0.

    Lets bit counters report header-free sizes beside framed ones.
    """
    view = memoryview(payload).cast("B")
    head = bytes(view[:5])
    if len(view) >= ENVELOPE_SIZE and head[:2] == b"QD" and head[4] in FRAMED_VERSIONS:
        return ENVELOPE_SIZE
    return 0
