"""Partial aggregates as documented bytes: the shard format, pure merges, safe pickling.

A *shard* is the state of a server-side aggregator that has absorbed some clients of a
round: which scheme and table (or configuration), the full round seed, the dimension,
the sorted client ids, the total weight and the running sum in the summation domain
(e.g. QUIC-FL's rotated domain). Everything else an aggregator holds (rotation signs,
lookup tables, coder models) is regenerated from the table or compressor and the seed.

The bytes are specified in ``docs/shard-format.md`` (versioned, little-endian, with a
BLAKE2b-256 checksum that can be keyed). :func:`from_bytes` validates a shard like a
payload: sizes are checked against the data before anything is allocated, a shard that
does not belong is refused with :class:`~quicdesign.PayloadError`, and nothing is
changed. Pickling an aggregator goes through these bytes too, so a pickle carries the
sum and the table's parameters only — but never unpickle data you do not trust: use
:func:`from_bytes` for that.

Aggregators take part through a small interface (implemented once in the weighted-sum
base, so every scheme has it): ``_shard_identity()`` returns ``(scheme, fingerprint)``,
``_shard_source()`` the table or compressor that rebuilds an empty twin,
``_shard_state()`` a :class:`ShardState` and ``_from_shard_state(state)`` loads one into
an empty aggregator.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ._validate import MAX_DIM
from ._wire import PayloadReader
from .errors import ParameterError, PayloadError

__all__ = [
    "SHARD_MAGIC",
    "SHARD_VERSION",
    "ShardState",
    "to_bytes",
    "from_bytes",
    "merged",
    "merge",
    "shard_size",
]

SHARD_MAGIC = b"QDSH"
SHARD_VERSION = 1
#: magic, version, scheme, fingerprint, round seed, dim, sum size, client count, weight
_HEADER = struct.Struct("<4sB4s8sQIIId")
_DIGEST_SIZE = 32
_PERSON = b"quicdesign.shd1"
_MAX_KEY_BYTES = 64


@dataclass(frozen=True)
class ShardState:
    """What a shard carries (everything an aggregator cannot regenerate).

    Attributes
    ----------
    scheme : bytes
        4 bytes: the payload magic of the scheme (e.g. ``b"QDQF"``).
    fingerprint : bytes
        8 bytes: the table fingerprint, or the u32 config tag and 4 zero bytes.
    round_seed : int
        The full 64-bit round seed.
    dim : int
        Length of the client vectors.
    clients : ndarray of uint32
        Sorted ids of the aggregated clients.
    total_weight : float
        Sum of their weights.
    total : ndarray of float64
        The weighted running sum in the summation domain (flattened on the wire).
    """

    scheme: bytes
    fingerprint: bytes
    round_seed: int
    dim: int
    clients: np.ndarray
    total_weight: float
    total: np.ndarray


def shard_size(sum_size: int, num_clients: int) -> int:
    """Exact size in bytes of a shard with ``sum_size`` float64 values and clients."""
    return _HEADER.size + 4 * num_clients + 8 * sum_size + _DIGEST_SIZE


def _hasher(key: bytes | None):
    """The shard checksum: BLAKE2b-256, personalised, keyed when ``key`` is given."""
    if key is None:
        key = b""
    if not isinstance(key, (bytes, bytearray)) or len(key) > _MAX_KEY_BYTES:
        raise ParameterError(f"key must be bytes of length <= {_MAX_KEY_BYTES}")
    return hashlib.blake2b(digest_size=_DIGEST_SIZE, key=bytes(key), person=_PERSON)


def _digest(data, key: bytes | None) -> bytes:
    hasher = _hasher(key)
    hasher.update(data)
    return hasher.digest()


def _check_aggregator(aggregator) -> None:
    if not hasattr(aggregator, "_shard_state"):
        raise ParameterError(f"{type(aggregator).__name__} cannot be written as a shard")


def to_bytes(aggregator, *, key: bytes | None = None) -> bytes:
    """Serialize ``aggregator``'s partial aggregate (``docs/shard-format.md``).

    Parameters
    ----------
    aggregator : an aggregator of any quicdesign scheme
    key : bytes, optional
        Up to 64 bytes: makes the checksum a keyed BLAKE2b MAC, so only holders of the
        key can produce a shard :func:`from_bytes` accepts (with the same key).

    Returns
    -------
    bytes
    """
    _check_aggregator(aggregator)
    state = aggregator._shard_state()
    total = np.ascontiguousarray(state.total, dtype="<f8").reshape(-1)
    clients = np.ascontiguousarray(state.clients, dtype="<u4")
    header = _HEADER.pack(
        SHARD_MAGIC,
        SHARD_VERSION,
        state.scheme,
        state.fingerprint,
        state.round_seed,
        state.dim,
        total.size,
        clients.size,
        state.total_weight,
    )
    # Hash the parts and join once: a shard is as large as the model, copies add up.
    hasher = _hasher(key)
    for part in (header, clients, total):
        hasher.update(part)
    return b"".join((header, clients, total, hasher.digest()))


def read_state(data, *, key: bytes | None = None) -> ShardState:
    """Parse and validate shard bytes without any table (checksum, sizes, values)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a shard must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size + _DIGEST_SIZE:
        raise PayloadError(f"truncated shard: {len(data)} bytes")
    # A view, not a slice: a shard is as large as the model, so avoid copying it.
    body, digest = memoryview(data)[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    (magic, version, scheme, fingerprint, round_seed, dim, sum_size, num_clients, weight) = (
        _HEADER.unpack_from(body)
    )
    if magic != SHARD_MAGIC:
        raise PayloadError(f"bad magic {magic!r}: not a shard (expected {SHARD_MAGIC!r})")
    if version != SHARD_VERSION:
        raise PayloadError(
            f"unsupported shard version {version} (this release reads {SHARD_VERSION})"
        )
    expected = shard_size(sum_size, num_clients)
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise PayloadError(f"{kind} shard: {len(data)} bytes, expected {expected}")
    if digest != _digest(body, key):
        raise PayloadError("shard checksum mismatch: corrupted or tampered in transit")
    if not 1 <= dim <= MAX_DIM:
        raise PayloadError(f"shard dimension {dim} outside [1, {MAX_DIM}]")
    reader = PayloadReader(data)  # bytes: the arrays below are read-only views
    reader.read_bytes(_HEADER.size, "header")
    clients = reader.read_array("<u4", num_clients, "client ids")
    total = reader.read_array("<f8", sum_size, "sum")
    reader.read_bytes(_DIGEST_SIZE, "checksum")
    reader.expect_end()
    if num_clients > 1 and np.any(np.diff(clients.astype(np.int64)) <= 0):
        raise PayloadError("shard client ids must be strictly increasing")
    if not (np.isfinite(weight) and (weight > 0 if num_clients else weight == 0)):
        raise PayloadError(f"shard total weight {weight!r} is invalid for {num_clients} clients")
    if not np.all(np.isfinite(total)):
        raise PayloadError("shard sum must be finite")
    return ShardState(scheme, fingerprint, round_seed, dim, clients, float(weight), total)


def _empty_aggregator(source, state: ShardState):
    """A fresh aggregator for the shard's scheme, round and dimension from ``source``."""
    from .codec import STRATIFIED_SHARD_SCHEME, WIRE_MAGIC, QuicFLAggregator
    from .protocol import Compressor
    from .table import Table

    if isinstance(source, Compressor):
        return source.aggregator(state.dim, state.round_seed)
    if isinstance(source, Table):
        if state.scheme in (WIRE_MAGIC, STRATIFIED_SHARD_SCHEME):
            stratified = state.scheme == STRATIFIED_SHARD_SCHEME
            return QuicFLAggregator(source, state.round_seed, state.dim, stratified=stratified)
        from .entropy import ENTROPY_MAGIC, QuicFLEntropyAggregator

        if state.scheme == ENTROPY_MAGIC:
            return QuicFLEntropyAggregator(source, state.round_seed, state.dim)
        from .direct import DIRECT_MAGIC, DirectAggregator

        if state.scheme == DIRECT_MAGIC:
            # the shard's fingerprint pins the table; whoever wrote it accepted its model
            return DirectAggregator(source, state.round_seed, state.dim, force=True)
        raise PayloadError(f"shard scheme {state.scheme!r} is not decoded with a table")
    raise ParameterError(
        f"source must be a quicdesign.Table or a Compressor, got {type(source).__name__}"
    )


def from_bytes(source, data, *, key: bytes | None = None, round_seed=None, dim=None):
    """Rebuild an aggregator from shard bytes, validating them like a payload.

    Parameters
    ----------
    source : quicdesign.Table or quicdesign.compressors.Compressor
        The table (QUIC-FL schemes) or compressor (any scheme) of the round.
    data : bytes
        A shard written by :func:`to_bytes`.
    key : bytes, optional
        The key the shard was written with.
    round_seed, dim : int, optional
        When given, the shard must be of this round and dimension (checked before any
        round state is built).

    Returns
    -------
    QuicFLAggregator
        A new aggregator holding the shard's clients, weight and sum.

    Raises
    ------
    PayloadError
        If the bytes are malformed, tampered with, or belong to another scheme, table,
        configuration, round or dimension.
    """
    state = read_state(data, key=key)
    if round_seed is not None and state.round_seed != round_seed:
        raise PayloadError("shard belongs to another round")
    if dim is not None and state.dim != dim:
        raise PayloadError(f"shard dimension {state.dim} does not match {dim}")
    aggregator = _empty_aggregator(source, state)
    aggregator._from_shard_state(state)
    return aggregator


def _copy(aggregator):
    """An independent copy: round state (immutable) is shared, the sum is copied."""
    _check_aggregator(aggregator)
    twin = copy.copy(aggregator)
    # np.array copies, so read-only inputs (e.g. from Ray's object store) work too.
    twin._sum = np.array(aggregator._sum, dtype=np.float64, copy=True)
    twin._clients = set(aggregator._clients)
    return twin


def merged(first, second):
    """A new aggregator holding both inputs' clients; neither input is changed."""
    combined = _copy(first)
    combined.merge(second)
    return combined


def merge(shards: Iterable, source=None, *, key: bytes | None = None):
    """Combine aggregators (or shard bytes) of one round into a new aggregator.

    Parameters
    ----------
    shards : iterable of aggregators or bytes
        At least one. Inputs are never modified.
    source : Table or Compressor, optional
        Needed to read shards given as bytes.
    key : bytes, optional
        The key the byte shards were written with.

    Returns
    -------
    QuicFLAggregator
        A new aggregator; ``ParameterError`` if the shards overlap or do not match.
    """
    result = None
    for shard in shards:
        if isinstance(shard, (bytes, bytearray, memoryview)):
            if source is None:
                raise ParameterError("reading shard bytes needs the table or compressor")
            # Later byte shards must match the round and dimension of the first one.
            expect = {} if result is None else {"round_seed": result.round_seed, "dim": result.dim}
            shard = from_bytes(source, shard, key=key, **expect)
        if result is None:
            result = _copy(shard)
        else:
            result.merge(shard)  # `result` is our own copy: in place is safe
    if result is None:
        raise ParameterError("merge needs at least one shard")
    return result


def _restore(source, data):
    """Unpickle hook: rebuild an aggregator from its source and shard bytes."""
    return from_bytes(source, data)
