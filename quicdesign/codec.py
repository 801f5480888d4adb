"""QUIC-FL runtime: encode a client vector to bytes, aggregate many clients fast.

Client: rotate with the round's shared signs (:mod:`quicdesign.rotation`), scale each
chunk to unit variance per coordinate, send coordinates outside the table's support
exactly, and map the rest to ``b``-bit messages with the table's closed-form sender rule
and the client's shared values ``h`` (:mod:`quicdesign.randomness`).

Server: regenerate each client's ``h``, decode ``R[h, x]`` in the rotated domain, add it
(weighted) to one running sum, and apply a single inverse rotation in :meth:`result`.
Memory is O(d) whatever the number of clients. The wire format is specified byte by
byte in ``docs/wire-format.md``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

from ._accumulate import WeightedSumAggregator, check_contribution_bound
from ._deprecation import renamed_attributes
from ._envelope import (
    ENVELOPE_SIZE,
    ENVELOPE_VERSION,
    Envelope,
    check_envelope,
    read_envelope,
    write_envelope,
)
from ._kernels import compiled_kernels
from ._validate import (
    as_client_vector,
    check_client_id,
    check_f32_normal,
    check_round_seed,
    check_weight,
)
from ._wire import PayloadReader, PayloadWriter, pack_codes, packed_size
from .errors import InputVectorError, ParameterError, PayloadError
from .input_model import ROTATED, check_input_model
from .randomness import (
    _mode_round_tag,
    rotation_signs,
    shared_values,
    stratified_shared_values,
)
from .rotation import MAX_CHUNKS, RotationLayout, scaled_rotate, unrotate
from .table import Table

__all__ = [
    "QuicFLEncoder",
    "QuicFLAggregator",
    "PayloadHeader",
    "read_header",
    "payload_size",
    "WIRE_MAGIC",
    "WIRE_VERSION",
]

WIRE_MAGIC = b"QDQF"
#: The envelope's version (``quicdesign._envelope``), the same for every scheme.
WIRE_VERSION = ENVELOPE_VERSION
# Clients gathered per pass of the compiled kernel (8 bytes of index per coordinate each).
_KERNEL_BLOCK = 8
# After the envelope: b, l, chunks, table fingerprint, n_exact; then one f32 norm per chunk.
_QUICFL_HEAD = struct.Struct("<BBB8sI")
#: Bytes before the chunk norms: the envelope and the QUIC-FL head (36, so norms align).
HEADER_SIZE = ENVELOPE_SIZE + _QUICFL_HEAD.size
# The pre-envelope header (QDQF 2, QDQE 3, QDQD 1) after magic and version:
# b, l, chunks, fingerprint, dim, client id, round tag, n_exact (32 bytes in all).
_LEGACY_HEAD = struct.Struct("<BBB8sIIII")
_LEGACY_HEADER_SIZE = 5 + _LEGACY_HEAD.size
#: The last pre-envelope version of each QUIC-FL magic, still read (docs/wire-format.md).
LEGACY_VERSIONS = {b"QDQF": 2, b"QDQE": 3, b"QDQD": 1}


def table_config_tag(fingerprint: bytes) -> int:
    """The envelope's config tag of a QUIC-FL payload: the fingerprint's first 4 bytes."""
    return int.from_bytes(fingerprint[:4], "little")


def _read_legacy_head(reader: PayloadReader, magic: bytes, version: int) -> Envelope:
    bits, shared_bits, chunks, fingerprint, dim, client_id, tag, num_exact = _LEGACY_HEAD.unpack(
        reader.read_bytes(_LEGACY_HEAD.size, "fixed header")
    )
    return Envelope(
        magic,
        dim,
        client_id,
        tag,
        table_config_tag(fingerprint),
        version,
        legacy_head=(bits, shared_bits, chunks, fingerprint, num_exact),
    )


def write_header(writer, magic, table, layout, client_id, tag, num_exact) -> None:
    """Write the envelope and the QUIC-FL head (``HEADER_SIZE`` bytes) of one payload."""
    write_envelope(
        writer, Envelope(magic, layout.dim, client_id, tag, table_config_tag(table.fingerprint))
    )
    writer.write_bytes(
        _QUICFL_HEAD.pack(
            table.bits, table.shared_bits, layout.num_chunks, table.fingerprint, num_exact
        )
    )


def _client_shared_values(round_seed, client_id, bits, size, stratified) -> np.ndarray:
    """The client's ``h``: independent per client, or stratified by its index."""
    if stratified:
        return stratified_shared_values(round_seed, client_id, bits, size)
    return shared_values(round_seed, client_id, bits, size)


def _table_digest(table: Table) -> bytes:
    """Full sha256 of what decoding depends on (the 8-byte fingerprint is for payloads)."""
    head = (table.bits, table.shared_bits, table.tail_prob, table.lower, table.upper)
    parts = [struct.pack("<BBddd", *head)]
    parts.append(np.ascontiguousarray(table.receiver, dtype="<f8").tobytes())
    if getattr(table, "code_model", None) is not None:
        parts.append(np.ascontiguousarray(table.code_model, dtype="<f8").tobytes())
    return hashlib.sha256(b"".join(parts)).digest()


#: Shard scheme of fixed-rate QUIC-FL rounds with stratified shared values.
STRATIFIED_SHARD_SCHEME = b"QDQS"


def _check_stratified(stratified) -> bool:
    if not isinstance(stratified, (bool, np.bool_)):
        raise ParameterError(f"stratified must be True or False, got {stratified!r}")
    return bool(stratified)


def _check_table(table) -> Table:
    if not isinstance(table, Table):
        raise ParameterError(f"table must be a quicdesign.Table, got {type(table).__name__}")
    if table.bits > 8 or table.shared_bits > 8:
        raise ParameterError("the runtime supports tables with bits <= 8 and shared_bits <= 8")
    return table


def payload_size(bits: int, dim: int, num_exact: int) -> int:
    """Exact payload size for ``dim`` and ``num_exact`` exactly-sent coordinates."""
    layout = RotationLayout.for_dim(dim)
    return (
        HEADER_SIZE + 4 * layout.num_chunks + packed_size(bits, layout.rotated_dim) + 8 * num_exact
    )


class _RoundState:
    """Per-round, per-dimension values shared by encoder and aggregator (cached)."""

    def __init__(self, round_seed: int, dim: int):
        self.layout = RotationLayout.for_dim(dim)
        self.signs32 = rotation_signs(round_seed, self.layout.rotated_dim, np.float32)
        self._signs64 = None

    def signs(self, dtype) -> np.ndarray:
        if np.dtype(dtype) == np.float64:
            if self._signs64 is None:
                self._signs64 = self.signs32.astype(np.float64)
            return self._signs64
        return self.signs32


def _norms_and_scales(rotated, exponents, chunk_size):
    """Chunk norms as sent (float32, rounded up) and the factors mapping to unit variance.

    ``rotated[k] * 2**exponents[k]`` is chunk ``k``. Scaling with the rounded norm keeps
    decoding exact. A norm beyond float32, or nonzero but below float32's normal range
    (``2**-126``, where float32 keeps fewer than 24 bits and the error would grow), is
    refused with :class:`~quicdesign.InputVectorError`.
    """
    # a plain pairwise sum, not einsum or BLAS: its rounding is the same on every CPU
    # (the compiled kernel reproduces it without an 8-byte-per-value temporary)
    kernels = compiled_kernels()
    if kernels is not None and rotated.dtype in (np.float32, np.float64):
        squares = kernels.row_square_sums(np.ascontiguousarray(rotated))
    else:
        squares = np.sum(np.square(rotated, dtype=np.float64), axis=1)
    scaled_norms = np.sqrt(squares)
    with np.errstate(over="ignore"):
        norms = np.ldexp(scaled_norms, exponents)
        norms32 = norms.astype(np.float32)
    low = norms32.astype(np.float64) < norms
    norms32[low] = np.nextafter(norms32[low], np.float32(np.inf))
    if not np.all(np.isfinite(norms32)):
        raise InputVectorError("vector is too large to encode: a chunk norm overflows float32")
    check_f32_normal(scaled_norms, "chunk norm", exponents)
    scale = np.zeros(norms.size, dtype=np.float64)
    positive = norms32 > 0
    # sqrt(m) / norm32 <= 2**14 / 2**-149 and the exponents undo the chunk scaling
    scale[positive] = np.ldexp(
        math.sqrt(chunk_size) / norms32[positive].astype(np.float64), exponents[positive]
    )
    return norms32, scale


class QuicFLEncoder:
    """Client-side QUIC-FL encoder for one round.

    Parameters
    ----------
    table : quicdesign.Table
        The quantizer (``bits``, ``shared_bits`` <= 8).
    round_seed : int
        Seed shared by the server and every client of the round, in ``[0, 2**64)``.
    stratified : bool
        Opt-in stratified shared values (``docs/randomness.md``): ``client_id`` must then
        be the client's index in the round, 0..n-1, assigned by the server. Each client
        stays exactly unbiased with the same error; the errors of a round's clients are
        negatively correlated, which helps when their vectors are similar.
    force : bool
        Accept a table designed for another input model (``docs/wire-format.md``); by
        default only ``rotated`` tables designed for the standard normal are accepted.
    """

    def __init__(
        self, table: Table, round_seed: int, *, stratified: bool = False, force: bool = False
    ):
        self.table = _check_table(table)
        check_input_model(table, ROTATED, force)
        self.stratified = _check_stratified(stratified)
        self.round_seed = check_round_seed(round_seed)
        self._tag = _mode_round_tag(self.round_seed, self.stratified)
        self._rounds: dict[int, _RoundState] = {}

    def _state(self, dim: int) -> _RoundState:
        state = self._rounds.get(dim)
        if state is None:
            state = self._rounds[dim] = _RoundState(self.round_seed, dim)
        return state

    def encode(self, vector, client_id: int, rng=None) -> bytes:
        """Encode one client's vector.

        Parameters
        ----------
        vector : array_like of float16, float32 or float64
            Any shape (flattened in C order); not modified.
        client_id : int
            The client's id in ``[0, 2**32)``; it seeds the shared values ``h``.
        rng : numpy.random.Generator or int, optional
            Client-private randomness for the sender's coin flips (a seed is accepted);
            fresh entropy when omitted. The same rng state gives the same bytes.

        Returns
        -------
        bytes
            The payload (``docs/wire-format.md``).
        """
        client_id = check_client_id(client_id)
        flat = as_client_vector(vector)
        return self._serialize(self._quantize(flat, client_id, rng))

    def _quantize(self, flat: np.ndarray, client_id: int, rng) -> _Quantized:
        """Rotate, scale, split off the exact tail and draw the messages."""
        table = self.table
        state = self._state(flat.size)
        layout = state.layout
        # rotated[k] * 2**exponents[k] is chunk k's rotation: nothing overflows or
        # underflows, and the butterflies give the same bits on every CPU
        rotated, exponents = scaled_rotate(flat, state.signs(flat.dtype), layout)
        norms32, scale = _norms_and_scales(rotated, exponents, layout.chunk_size)
        z = (rotated * scale[:, None].astype(rotated.dtype)).reshape(-1)
        lower, upper = table.support
        outside = np.abs(z) > upper if lower == -upper else (z < lower) | (z > upper)
        exact = np.flatnonzero(outside)
        shared = _client_shared_values(
            self.round_seed, client_id, table.shared_bits, layout.rotated_dim, self.stratified
        )
        rng = np.random.default_rng(rng)  # a Generator passes through; None or an int seeds one
        # The sampler clamps values beyond the support; their codes are overwritten below.
        codes = table.sender.sample(z, shared, rng=rng)
        codes[exact] = 0
        return _Quantized(
            client_id=client_id,
            layout=layout,
            norms=norms32,
            shared=shared,
            codes=codes,
            exact_indices=exact.astype(np.uint32),
            exact_values=z[exact].astype(np.float32),
        )

    def _write_header(self, writer: PayloadWriter, quantized: _Quantized, magic: bytes):
        write_header(
            writer,
            magic,
            self.table,
            quantized.layout,
            quantized.client_id,
            self._tag,
            quantized.exact_indices.size,
        )

    def _serialize(self, quantized: _Quantized) -> bytes:
        writer = PayloadWriter()
        self._write_header(writer, quantized, WIRE_MAGIC)
        writer.write_array(quantized.norms.astype("<f4"))
        writer.write_bytes(pack_codes(quantized.codes, self.table.bits))
        writer.write_array(quantized.exact_indices.astype("<u4"))
        writer.write_array(quantized.exact_values.astype("<f4"))
        return writer.to_bytes()


@dataclass
class _Quantized:
    """One client's quantized vector before serialization."""

    client_id: int
    layout: RotationLayout
    norms: np.ndarray
    shared: np.ndarray
    codes: np.ndarray
    exact_indices: np.ndarray
    exact_values: np.ndarray


class PayloadHeader:
    """Parsed and validated header (envelope, QUIC-FL head, chunk norms) of a payload.

    ``header_size`` is the number of bytes before the chunk norms: ``HEADER_SIZE`` for
    the current version, 32 for a pre-envelope payload.
    """

    __slots__ = (
        "version",
        "header_size",
        "config_tag",
        "bits",
        "shared_bits",
        "num_chunks",
        "fingerprint",
        "dim",
        "client_id",
        "round_tag",
        "num_exact",
        "norms",
    )

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)

    def __repr__(self):
        return (
            f"PayloadHeader(version={self.version}, bits={self.bits}, "
            f"shared_bits={self.shared_bits}, dim={self.dim}, client_id={self.client_id}, "
            f"num_exact={self.num_exact})"
        )


def read_header(reader: PayloadReader, magic: bytes = WIRE_MAGIC) -> PayloadHeader:
    """Read the envelope, QUIC-FL head and chunk norms, checking what needs no table.

    Reads the current version and the pre-envelope one of ``magic``
    (:data:`LEGACY_VERSIONS`). The claimed dimension is checked against
    :data:`~quicdesign._validate.MAX_DIM` and the chunk count against the layout rule
    here, before anyone allocates for it.
    """
    legacy = {LEGACY_VERSIONS[magic]: _read_legacy_head} if magic in LEGACY_VERSIONS else None
    envelope = read_envelope(reader, magic, magic.decode("ascii"), legacy=legacy)
    if envelope.legacy_head is None:
        head = _QUICFL_HEAD.unpack(reader.read_bytes(_QUICFL_HEAD.size, "QUIC-FL head"))
        header_size = HEADER_SIZE
    else:
        head, header_size = envelope.legacy_head, _LEGACY_HEADER_SIZE
    bits, shared_bits, num_chunks, fingerprint, num_exact = head
    dim = envelope.dim
    if not 1 <= num_chunks <= MAX_CHUNKS:
        raise PayloadError(f"num_chunks {num_chunks} outside 1..{MAX_CHUNKS}")
    expected_chunks = RotationLayout.for_dim(dim).num_chunks
    if num_chunks != expected_chunks:
        raise PayloadError(
            f"payload claims {num_chunks} chunks; dimension {dim} has {expected_chunks}"
        )
    norms = reader.read_array("<f4", num_chunks, "chunk norms")
    if not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise PayloadError("chunk norms must be finite and non-negative")
    return PayloadHeader(
        version=envelope.version,
        header_size=header_size,
        config_tag=envelope.config_tag,
        bits=bits,
        shared_bits=shared_bits,
        num_chunks=num_chunks,
        fingerprint=fingerprint,
        dim=dim,
        client_id=envelope.client_id,
        round_tag=envelope.round_tag,
        num_exact=num_exact,
        norms=norms,
    )


def check_table_header(header: PayloadHeader, table: Table, round_tag: int, dim: int) -> None:
    """Check a header against the receiver's table, round and dimension (``PayloadError``)."""
    if header.fingerprint != table.fingerprint:
        raise PayloadError(
            f"table fingerprint {header.fingerprint.hex()} does not match this "
            f"aggregator's table {table.fingerprint.hex()}"
        )
    if (header.bits, header.shared_bits) != (table.bits, table.shared_bits):
        raise PayloadError(
            f"payload has b={header.bits}, l={header.shared_bits}; table has "
            f"b={table.bits}, l={table.shared_bits}"
        )
    check_envelope(
        header,
        dim=dim,
        round_tag=round_tag,
        config=table_config_tag(table.fingerprint),
        scheme="QUIC-FL",
    )


def _check_size(size: int, expected: int) -> None:
    if size != expected:
        kind = "truncated" if size < expected else "oversized"
        raise PayloadError(f"{kind} payload: {size} bytes, expected {expected}")


class QuicFLAggregator(WeightedSumAggregator):
    """Server-side QUIC-FL aggregation for one round and dimension.

    Decoded clients are summed in the rotated domain; :meth:`result` applies one inverse
    rotation. A payload is validated completely before any state changes, so a rejected
    payload (:class:`~quicdesign.PayloadError`) leaves the aggregator exactly as it was.

    Parameters
    ----------
    table : quicdesign.Table
        The table the clients used.
    round_seed : int
        The round's seed.
    dim : int
        Length of the client vectors.
    stratified : bool
        Decode clients whose ``h`` is stratified by their index (see :class:`Encoder`).
    force : bool
        Accept a table designed for another input model.
    """

    def __init__(
        self,
        table: Table,
        round_seed: int,
        dim: int,
        *,
        stratified: bool = False,
        force: bool = False,
    ):
        self.table = _check_table(table)
        check_input_model(table, ROTATED, force)
        self.round_seed = check_round_seed(round_seed)
        self.stratified = _check_stratified(stratified)
        self._state = _RoundState(self.round_seed, dim)  # validates dim
        self.dim = self._state.layout.dim
        self._tag = _mode_round_tag(self.round_seed, self.stratified)
        self._fingerprint = table.fingerprint
        self._table_digest = _table_digest(table)
        self._flat_receiver = table.receiver.reshape(-1)
        layout = self._state.layout
        entries = layout.num_chunks * self._flat_receiver.size
        self._index_dtype = np.uint16 if entries <= 1 << 16 else np.uint32
        self._chunk_offsets = (np.arange(layout.num_chunks) * self._flat_receiver.size).astype(
            self._index_dtype
        )[:, None]
        super().__init__((layout.num_chunks, layout.chunk_size))

    _magic = WIRE_MAGIC

    def _check_header(self, header: PayloadHeader) -> None:
        """Check the header against this aggregator (before reading any array)."""
        layout = self._state.layout
        check_table_header(header, self.table, self._tag, self.dim)
        self._check_new_client(header.client_id)
        if header.num_exact > layout.rotated_dim:
            raise PayloadError(
                f"{header.num_exact} exact coordinates exceed the rotated dimension "
                f"{layout.rotated_dim}"
            )

    def _check_exact(self, indices: np.ndarray, values: np.ndarray) -> None:
        if indices.size:
            if int(indices[-1]) >= self._state.layout.rotated_dim or np.any(
                np.diff(indices.astype(np.int64)) <= 0
            ):
                raise PayloadError("exact indices must be strictly increasing and in range")
            if not np.all(np.isfinite(values)):
                raise PayloadError("exact values must be finite")

    def _parse(self, payload, reader: PayloadReader, header: PayloadHeader, shared: np.ndarray):
        """Read codes and exact coordinates; returns ``(codes, indices, values)``."""
        table, layout = self.table, self._state.layout
        expected = payload_size(table.bits, self.dim, header.num_exact)
        _check_size(reader.size, expected - HEADER_SIZE + header.header_size)
        codes = reader.read_codes(table.bits, layout.rotated_dim, "codes")
        indices = reader.read_array("<u4", header.num_exact, "exact indices")
        values = reader.read_array("<f4", header.num_exact, "exact values")
        reader.expect_end()
        self._check_exact(indices, values)
        return codes, indices, values

    def _decode(self, payload, weight: float) -> tuple[int, np.ndarray]:
        """Validate ``payload``; return ``(client_id, weighted rotated contribution)``."""
        client_id, tables, index, indices, exact = self._prepare(payload, weight)
        decoded = tables[index]
        decoded[indices] = exact
        layout = self._state.layout
        return client_id, decoded.reshape(layout.num_chunks, layout.chunk_size)

    def _prepare(self, payload, weight: float):
        """Validate ``payload`` completely; return what decoding gathers from.

        ``(client_id, tables, index, exact_positions, exact_values)``: the decoded
        contribution is ``tables[index]`` with ``exact_values`` at ``exact_positions``.
        """
        reader = PayloadReader(payload)
        header = read_header(reader, self._magic)
        self._check_header(header)
        table, layout = self.table, self._state.layout
        shared = _client_shared_values(
            self.round_seed,
            header.client_id,
            table.shared_bits,
            layout.rotated_dim,
            self.stratified,
        )
        codes, indices, values = self._parse(payload, reader, header, shared)
        # Fold norm, 1/sqrt(chunk) and weight into one small table per chunk, so decoding
        # is a single gather with a narrow index (numpy gathers fastest with those).
        scale = header.norms.astype(np.float64) * (weight / math.sqrt(layout.chunk_size))
        tables = (scale[:, None] * self._flat_receiver[None, :]).reshape(-1)
        exact = values * scale[indices // layout.chunk_size]
        # max |R| bounds every decoded coordinate, so this costs O(table), not O(d)
        unweighted = float(np.max(header.norms, initial=0.0)) / math.sqrt(layout.chunk_size)
        largest = unweighted * max(
            float(np.max(np.abs(self._flat_receiver))),
            float(np.max(np.abs(values), initial=0.0)),
        )
        check_contribution_bound(largest)
        index = shared.astype(self._index_dtype)
        index <<= table.bits
        index |= codes
        if layout.num_chunks > 1:
            index.reshape(layout.num_chunks, -1)[1:] += self._chunk_offsets[1:]
        return header.client_id, tables, index, indices, exact

    def add_many(self, payloads, weights=None) -> None:
        """Add payloads in order, exactly as a loop of :meth:`add` (same bits, same errors).

        With the compiled kernels (``pip install quicdesign[fast]``, unless
        ``QUICDESIGN_KERNELS=numpy``) blocks of clients are gathered and summed in one
        pass over the accumulator; the sums are bit-identical to the numpy path.
        """
        from ._kernels import compiled_kernels

        kernels = compiled_kernels()
        if kernels is None:
            super().add_many(payloads, weights)
            return
        payloads, weights = self._batch_arguments(payloads, weights)
        for start in range(0, len(payloads), _KERNEL_BLOCK):
            block, failure = [], None
            seen = set()
            for position in range(start, min(len(payloads), start + _KERNEL_BLOCK)):
                try:
                    weight = check_weight(weights[position])
                    prepared = self._prepare(payloads[position], weight)
                    if prepared[0] in seen:
                        raise PayloadError(f"client {prepared[0]} was already added this round")
                except (PayloadError, ParameterError) as exc:
                    failure = (position, exc)
                    break
                seen.add(prepared[0])
                block.append((weight, prepared))
            if block:
                self._commit_block(kernels, block)
            if failure is not None:
                self._raise_at(*failure)

    def _commit_block(self, kernels, block) -> None:
        """Accumulate validated clients with the compiled gather (nothing below fails)."""
        prepared = [item for _, item in block]
        width = max(tables.size + exact.size for _, tables, _, _, exact in prepared)
        # each client's exact values sit after its table; its index points there
        dtype = self._index_dtype if width <= np.iinfo(self._index_dtype).max + 1 else np.uint32
        tables_block = np.zeros((len(block), width), dtype=np.float64)
        indices = np.empty((len(block), self._state.layout.rotated_dim), dtype=dtype)
        for row, (_, tables, index, positions, exact) in enumerate(prepared):
            tables_block[row, : tables.size] = tables
            tables_block[row, tables.size : tables.size + exact.size] = exact
            indices[row] = index
            indices[row, positions] = tables.size + np.arange(exact.size)
        kernels.gather_accumulate(self._sum.reshape(-1), tables_block, indices)
        for weight, item in block:
            self._total_weight += weight
            self._clients.add(item[0])

    def _merge_key(self) -> tuple:
        return (self._magic, self._table_digest, self.round_seed, self.dim, self.stratified)

    def _shard_identity(self) -> tuple[bytes, bytes]:
        # stratified rounds get their own shard scheme (docs/shard-format.md)
        return (STRATIFIED_SHARD_SCHEME if self.stratified else self._magic), self._fingerprint

    def _shard_source(self) -> Table:
        return self.table

    def rotated_mean(self) -> np.ndarray:
        """The weighted mean still in the rotated domain, shape (chunks, chunk_size).

        What a port (``docs/porting.md``, tests/test_port_c.py) checks before its inverse
        rotation.
        """
        return self.weighted_mean()

    def _finalize(self, mean: np.ndarray) -> np.ndarray:
        # The single inverse rotation of the round.
        return unrotate(mean, self._state.signs(np.float64), self._state.layout)


__getattr__ = renamed_attributes(
    __name__,
    {
        "Encoder": "QuicFLEncoder",
        "Aggregator": "QuicFLAggregator",
        "max_payload_size": "payload_size",
    },
    globals(),
)
