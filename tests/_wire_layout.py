"""Documented byte offsets of the payloads the tests edit, and a small legacy writer.

The offsets are written out from docs/wire-format.md (not imported from the package), so
a layout change that the documentation does not follow fails the tests.
"""

import struct

#: The envelope every payload starts with (version 4).
ENVELOPE = {"magic": 0, "version": 4, "dim": 5, "client": 9, "round": 13, "config": 17}
ENVELOPE_SIZE = 21
#: QUIC-FL payloads (QDQF, QDQE, QDQD) after the envelope.
QUICFL = {
    **ENVELOPE,
    "bits": 21,
    "shared_bits": 22,
    "chunks": 23,
    "fingerprint": 24,
    "num_exact": 32,
    "norms": 36,
}
QUICFL_HEADER_SIZE = 36
#: The pre-envelope QUIC-FL header (QDQF 2, QDQE 3, QDQD 1).
LEGACY_QUICFL = {
    "magic": 0,
    "version": 4,
    "bits": 5,
    "shared_bits": 6,
    "chunks": 7,
    "fingerprint": 8,
    "dim": 16,
    "client": 20,
    "round": 24,
    "num_exact": 28,
    "norms": 32,
}
LEGACY_VERSIONS = {b"QDQF": 2, b"QDQE": 3, b"QDQD": 1}
#: Baseline payloads before the shared envelope: the same 21 bytes with version 2.
LEGACY_BASELINE_VERSION = 2


def field(payload, offset, fmt="<I"):
    """One little-endian field of ``payload``."""
    return struct.unpack_from(fmt, payload, offset)[0]


def num_exact(payload):
    """``n_exact`` of a current QUIC-FL payload."""
    return field(payload, QUICFL["num_exact"])


def to_legacy(payload: bytes) -> bytes:
    """The payload a release before the envelope wrote for the same encoding.

    QUIC-FL magics get the 32-byte fixed header (``<4sBBBB8sIIII``: magic, version, b, l,
    chunks, fingerprint, d, client id, round tag, n_exact) in front of the unchanged body;
    baseline payloads only get version 2.
    """
    magic = payload[:4]
    assert payload[4] == 4, "not a version 4 payload"
    if magic not in LEGACY_VERSIONS:
        return magic + bytes([LEGACY_BASELINE_VERSION]) + payload[5:]
    dim, client, tag, _config = struct.unpack_from("<IIII", payload, 5)
    bits, shared_bits, chunks, fingerprint, exact = struct.unpack_from("<BBB8sI", payload, 21)
    head = struct.pack(
        "<4sBBBB8sIIII",
        magic,
        LEGACY_VERSIONS[magic],
        bits,
        shared_bits,
        chunks,
        fingerprint,
        dim,
        client,
        tag,
        exact,
    )
    return head + payload[QUICFL_HEADER_SIZE:]
