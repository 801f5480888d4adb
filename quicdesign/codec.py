"""QUIC-FL runtime: encode a client vector to bytes, aggregate many clients fast.

Client: rotate with the round's shared signs (:mod:`quicdesign.rotation`), scale each
chunk to unit variance per coordinate, send coordinates outside the table's support
exactly, and map the rest to ``b``-bit messages with the table's closed-form sender rule
and the client's shared values ``h`` (:mod:`quicdesign.randomness`).

Server: regenerate each client's ``h``, decode ``R[h, x]`` in the rotated domain, add it
(weighted) to one running sum, and apply a single inverse rotation in :meth:`result`.
Memory is O(d) whatever the number of clients. As stages (:mod:`quicdesign.stages`):
``RandomizedHadamard(scaled=True)`` (summed) then :class:`QuicFLQuantize`; the server is
the one :class:`~quicdesign.stages.PipelineAggregator`. The wire format is specified byte by
byte in ``docs/wire-format.md``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

from ._accumulate import check_contribution_bound
from ._deprecation import renamed_attributes
from ._envelope import (
    ENVELOPE_SIZE,
    ENVELOPE_VERSION,
    Envelope,
    check_envelope,
    read_envelope,
    read_envelope_fields,
    write_envelope,
)
from ._kernels import compiled_kernels
from ._validate import (
    as_client_vector,
    check_client_id,
    check_f32_normal,
    check_round_seed,
)
from ._wire import PayloadReader, PayloadWriter, packed_size
from ._workspace import WORKSPACE_KEY, Workspace, work_array
from .errors import InputVectorError, ParameterError, PayloadError
from .input_model import ROTATED, check_input_model
from .randomness import (
    PURPOSE_SHARED_H,
    _mode_round_tag,
    derive_key,
    shared_values,
    stratified_shared_values,
)
from .rotation import MAX_CHUNKS, RotationLayout
from .stages import (
    GatheredContribution,
    Pipeline,
    PipelineAggregator,
    RandomizedHadamard,
    Stage,
)
from .table import Table

__all__ = [
    "QuicFLEncoder",
    "QuicFLQuantize",
    "quicfl_pipeline",
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
#: Versions above the envelope's that a magic writes (the same envelope, a newer body).
NEWER_VERSIONS = {b"QDQE": (5,)}


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


def write_header(
    writer,
    magic,
    table,
    layout,
    client_id,
    tag,
    num_exact,
    version=ENVELOPE_VERSION,
    *,
    fingerprint=None,
) -> None:
    """Write the envelope and the QUIC-FL head (``HEADER_SIZE`` bytes) of one payload;
    ``fingerprint`` is ``table.fingerprint`` when the caller has it (it hashes the table)."""
    if fingerprint is None:
        fingerprint = table.fingerprint
    config = table_config_tag(fingerprint)
    write_envelope(writer, Envelope(magic, layout.dim, client_id, tag, config, version))
    writer.write_bytes(
        _QUICFL_HEAD.pack(table.bits, table.shared_bits, layout.num_chunks, fingerprint, num_exact)
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


#: Values numpy sums with one pairwise tree in every supported version: numpy < 2.3 sums
#: a longer contiguous array in buffers of this many values, one after the other.
_PAIRWISE_BUFFER = 8192


def _pairwise_sum(values) -> np.float64:
    """numpy's pairwise sum of a contiguous float64 array, the whole array as one tree
    (``np.add.reduce`` in numpy >= 2.3), whatever the numpy version: halves rounded down
    to a multiple of 8, as numpy splits them, until pieces numpy sums as one tree."""
    size = values.size
    if size <= _PAIRWISE_BUFFER:
        return np.add.reduce(values)
    half = size // 2
    half -= half % 8
    return _pairwise_sum(values[:half]) + _pairwise_sum(values[half:])


def _row_square_sums(rows) -> np.ndarray:
    """Each row's sum of squares: :func:`_pairwise_sum` of the row squared into one
    contiguous float64 row (no rows-sized float64 temporary, whose fresh pages cost more
    than the sums)."""
    sums = np.empty(rows.shape[0])
    squares = np.empty(rows.shape[1])
    for index, row in enumerate(rows):
        sums[index] = _pairwise_sum(np.square(row, dtype=np.float64, out=squares))
    return sums


def _norms_and_scales(rotated, exponents, chunk_size, square_sums=None):
    """Chunk norms as sent (float32, rounded up) and the factors mapping to unit variance.

    ``rotated[k] * 2**exponents[k]`` is chunk ``k``; ``square_sums``: the rows' sums of
    squares when the compiled rotation found them (the same bits as summed here).
    Scaling with the rounded norm keeps decoding exact. A norm beyond float32, or
    nonzero but below float32's normal range (``2**-126``, where float32 keeps fewer
    than 24 bits and the error would grow), is refused with
    :class:`~quicdesign.InputVectorError`.
    """
    # a plain pairwise sum, not einsum or BLAS: its rounding is the same on every CPU and
    # numpy version (the compiled kernel reproduces it without an 8-byte-per-value temporary)
    kernels = compiled_kernels()
    if square_sums is not None:
        squares = square_sums
    elif kernels is not None and rotated.dtype in (np.float32, np.float64):
        squares = kernels.row_square_sums(np.ascontiguousarray(rotated))
    else:
        squares = _row_square_sums(rotated)
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


def _check_exact(indices: np.ndarray, values: np.ndarray, count: int) -> None:
    if indices.size:
        if int(indices[-1]) >= count or np.any(np.diff(indices.astype(np.int64)) <= 0):
            raise PayloadError("exact indices must be strictly increasing and in range")
        if not np.all(np.isfinite(values)):
            raise PayloadError("exact values must be finite")


class QuicFLQuantize(Stage):
    """QUIC-FL's quantizer on the rotated chunks (a :class:`~quicdesign.stages.ScaledChunks`).

    Client: scale each chunk to unit variance per coordinate with its float32 norm
    (rounded up), send coordinates outside the table's support exactly, map the rest to
    ``b``-bit messages with the table's sender rule and the client's shared values ``h``.
    Side information: the packed messages, then the exact indices and values; the chunk
    norms travel in the QUIC-FL header (:func:`read_header` reads them).

    Server (:meth:`contribution`, the fused inverse): fold norm, ``1/sqrt(chunk)`` and the
    weight into one small table per chunk, so decoding is a single gather
    ``table[h << b | x]`` with a narrow index, summed by the compiled kernels in blocks.
    Not commuting with sum: ``h`` and the norms are the client's own.

    Parameters
    ----------
    table : quicdesign.Table
        The quantizer (validated by the encoder or aggregator).
    stratified : bool
        Whether ``h`` is stratified by the client's index.
    """

    commutes_with_sum = False
    #: contributions are :class:`~quicdesign.stages.GatheredContribution`s
    gathers = True

    def __init__(self, table: Table, stratified: bool = False):
        self.table = table
        self.stratified = stratified
        self._flat_receiver = table.receiver.reshape(-1)
        self._receiver_peak = float(np.max(np.abs(self._flat_receiver)))

    def _shared(self, state, count):
        workspace = state.cache.get(WORKSPACE_KEY)
        kernels = compiled_kernels()
        bits = self.table.shared_bits
        if workspace is not None and kernels is not None and bits and not self.stratified:
            # an encoder's h in its work array (shared_values' bytes, drawn in place): two
            # fresh megabytes per 2**20 encode otherwise, which the allocator may hand
            # back to the system between calls (page faults cost more than the draw)
            stream = work_array(workspace, "shared h", -(-count // 8) * 8, np.uint8)
            key = derive_key(state.round_seed, state.client_id, PURPOSE_SHARED_H)
            kernels.draw_stream_bytes(key, stream)
            shared = stream[:count]
            return np.bitwise_and(shared, np.uint8((1 << bits) - 1), out=shared)
        return _client_shared_values(
            state.round_seed, state.client_id, bits, count, self.stratified
        )

    def apply(self, x, state):
        rotated, exponents, layout = x.rotated, x.exponents, x.layout
        norms32, scale = _norms_and_scales(rotated, exponents, layout.chunk_size, x.square_sums)
        factors = scale.astype(rotated.dtype)
        if rotated.dtype in (np.float32, np.float64):
            return None, self._quantize_rows(rotated, factors, norms32, layout, state)
        z = (rotated * factors[:, None]).reshape(-1)
        return None, self._quantize(z, norms32, layout, state)

    def _quantize_rows(self, rotated, factors, norms32, layout, state) -> _Quantized:
        """:meth:`_quantize` of ``z = rotated * factors[:, None]`` without materializing
        ``z``: one compiled pass over ``rotated``, or the numpy sender's tiles (the same
        bytes: ``tests/test_kernels.py``, ``tests/test_sender.py``)."""
        rotated = np.ascontiguousarray(rotated)
        shared = self._shared(state, rotated.size)
        rng = np.random.default_rng(state.rng)
        sender, kernels = self.table.sender, compiled_kernels()
        if kernels is None:
            codes, exact, values = sender.sample_rows_numpy(
                rotated, factors, self.table.support, shared, rng, state.cache.get(WORKSPACE_KEY)
            )
        else:
            codes, exact, values = sender.sample_rows(
                kernels,
                rotated,
                factors,
                self.table.support,
                shared,
                rng,
                state.cache.get(WORKSPACE_KEY),
            )
        return _with_exact_tail(state, layout, norms32, shared, codes, exact, values)

    def _quantize(self, z, norms32, layout, state) -> _Quantized:
        """Split off the exact tail of the unit-variance ``z`` and draw the messages."""
        shared = self._shared(state, z.size)
        lower, upper = self.table.support
        outside = np.abs(z) > upper if lower == -upper else (z < lower) | (z > upper)
        exact = np.flatnonzero(outside)
        rng = np.random.default_rng(state.rng)  # a Generator passes through; a seed seeds one
        codes = self.table.sender.sample(z, shared, rng=rng)
        return _with_exact_tail(state, layout, norms32, shared, codes, exact, z[exact])

    def write_side(self, writer, side):
        writer.write_codes(side.codes, self.table.bits)
        writer.write_array(side.exact_indices.astype("<u4"))
        writer.write_array(side.exact_values.astype("<f4"))

    def _payload_size(self, dim, num_exact):
        return payload_size(self.table.bits, dim, num_exact)

    def read_side(self, reader, state, dim):
        header = state.header
        num_exact = header.num_exact
        # a pre-envelope payload's header has another size (docs/wire-format.md)
        expected = self._payload_size(state.dim, num_exact) - HEADER_SIZE + header.header_size
        _check_size(reader.size, expected)
        # checked but left packed: the compiled server reads the codes where they lie
        codes = reader.read_packed_codes(self.table.bits, dim, "codes")
        indices = reader.read_array("<u4", num_exact, "exact indices")
        values = reader.read_array("<f4", num_exact, "exact values")
        _check_exact(indices, values, dim)
        return codes, indices, values, None

    def _shared_bytes(self, state, count):
        """The client's ``h`` as ``(bytes, mask, key)``: the raw stream bytes, or None and
        the Philox ``key`` of the stream that gives them (the compiled server generates
        them tile by tile, the numpy path at once), and the mask
        :func:`~quicdesign.randomness.shared_values` applies (no pass to mask them)."""
        bits = self.table.shared_bits
        if self.stratified or bits == 0:
            return self._shared(state, count), 0xFF, None
        key = derive_key(state.round_seed, state.client_id, PURPOSE_SHARED_H)
        return None, (1 << bits) - 1, key

    def contribution(self, y, side, state, dim, weight):
        codes, indices, values, shared = side
        layout = RotationLayout.for_dim(state.dim)
        norms = state.header.norms
        shared_key = None
        if shared is None:  # fixed rate: packed codes; the entropy decoder gives both
            shared, shared_mask, shared_key = self._shared_bytes(state, layout.rotated_dim)
            code_width = self.table.bits
        else:
            shared_mask, code_width = 0xFF, 8
        # norm, 1/sqrt(chunk) and weight are folded into one scale per chunk
        scale = norms.astype(np.float64) * (weight / math.sqrt(layout.chunk_size))
        exact = values * scale[indices // layout.chunk_size]
        # max |R| bounds every decoded coordinate, so this costs O(table), not O(d)
        unweighted = float(np.max(norms, initial=0.0)) / math.sqrt(layout.chunk_size)
        largest = unweighted * max(self._receiver_peak, float(np.max(np.abs(values), initial=0.0)))
        check_contribution_bound(largest)
        return GatheredContribution(
            self._flat_receiver,
            scale,
            layout.chunk_size,
            self.table.bits,
            codes,
            code_width,
            shared,
            shared_mask,
            indices,
            exact,
            shared_key,
        )

    def invert(self, y, side, state, dim):
        return self.contribution(y, side, state, dim, 1.0).materialize()

    def __repr__(self):
        return f"{type(self).__name__}(table={self.table!r}, stratified={self.stratified!r})"


def quicfl_pipeline(table: Table, stratified: bool = False) -> Pipeline:
    """QUIC-FL as stages: the round's chunked rotation (summed), then the quantizer."""
    return Pipeline((RandomizedHadamard(scaled=True), QuicFLQuantize(table, stratified)))


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

    Notes
    -----
    Between calls the encoder keeps its work arrays, one set per thread (about two
    float32 copies of the padded vector plus a row's worth of sender temporaries), so
    repeated encodes do not fault in fresh pages; encoding from several threads at
    once is safe.
    """

    _magic = WIRE_MAGIC
    _input_model = ROTATED
    #: ``(table, stratified) -> Pipeline``: the scheme's stages (shared with the aggregator)
    pipeline_for = staticmethod(quicfl_pipeline)

    def __init__(
        self, table: Table, round_seed: int, *, stratified: bool = False, force: bool = False
    ):
        self.table = _check_table(table)
        check_input_model(table, self._input_model, force)
        self.stratified = _check_stratified(stratified)
        self.round_seed = check_round_seed(round_seed)
        self._tag = _mode_round_tag(self.round_seed, self.stratified)
        self._pipeline = self.pipeline_for(self.table, self.stratified)
        # the round's rotation signs per length, and the per-thread work arrays
        self._cache: dict = {WORKSPACE_KEY: Workspace()}
        # hashed once (16 KiB of receiver at b = 8), not twice per payload
        self._fingerprint = self.table.fingerprint
        # the rotation's first pass finds NaN and inf itself: no pass of its own for them
        first = self._pipeline.stages[0]
        self._check_finite = not getattr(first, "refuses_non_finite", False)

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
        flat = as_client_vector(vector, check_finite=self._check_finite)
        sides = self._apply(flat, client_id, rng)
        quantized = sides[-1]
        writer = PayloadWriter()
        self._write_header(writer, quantized, self._magic)
        writer.write_array(quantized.norms.astype("<f4"))
        self._pipeline.write(writer, sides)
        return writer.to_bytes()

    def _apply(self, flat, client_id, rng) -> list:
        """Every stage's side information for the validated vector ``flat``."""
        state = self._pipeline.client_state(flat.size, self.round_seed, client_id, rng, self._cache)
        return self._pipeline.apply(flat, state)

    def _quantize(self, flat, client_id, rng) -> _Quantized:
        """The quantized vector before packing (benchmarks time the coders on it)."""
        return self._apply(flat, client_id, rng)[-1]

    def _write_header(
        self,
        writer: PayloadWriter,
        quantized: _Quantized,
        magic: bytes,
        version: int = ENVELOPE_VERSION,
    ):
        write_header(
            writer,
            magic,
            self.table,
            quantized.layout,
            quantized.client_id,
            self._tag,
            quantized.exact_indices.size,
            version,
            fingerprint=self._fingerprint,
        )


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
    legacy = {LEGACY_VERSIONS[magic]: _read_legacy_head} if magic in LEGACY_VERSIONS else {}
    legacy.update(dict.fromkeys(NEWER_VERSIONS.get(magic, ()), read_envelope_fields))
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


def check_table_header(
    header: PayloadHeader, table: Table, round_tag: int, dim: int, fingerprint=None
) -> None:
    """Check a header against the receiver's table, round and dimension (``PayloadError``).

    ``fingerprint`` is ``table.fingerprint`` when the caller has it (it hashes the table).
    """
    if fingerprint is None:
        fingerprint = table.fingerprint
    if header.fingerprint != fingerprint:
        raise PayloadError(
            f"table fingerprint {header.fingerprint.hex()} does not match this "
            f"aggregator's table {fingerprint.hex()}"
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
        config=table_config_tag(fingerprint),
        scheme="QUIC-FL",
    )


def _check_size(size: int, expected: int) -> None:
    if size != expected:
        kind = "truncated" if size < expected else "oversized"
        raise PayloadError(f"{kind} payload: {size} bytes, expected {expected}")


class QuicFLAggregator(PipelineAggregator):
    """Server-side QUIC-FL aggregation for one round and dimension.

    The pipeline aggregator of :func:`quicfl_pipeline`: decoded clients are summed in the
    rotated domain with the quantizer's fused gather; :meth:`result` applies one inverse
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
        Decode clients whose ``h`` is stratified by their index (see
        :class:`QuicFLEncoder`).
    force : bool
        Accept a table designed for another input model.
    """

    _magic = WIRE_MAGIC
    _input_model = ROTATED
    pipeline_for = staticmethod(quicfl_pipeline)

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
        check_input_model(table, self._input_model, force)
        round_seed = check_round_seed(round_seed)
        self.stratified = _check_stratified(stratified)
        self._layout = RotationLayout.for_dim(dim)  # validates dim
        self._tag = _mode_round_tag(round_seed, self.stratified)
        self._fingerprint = table.fingerprint
        self._table_digest = _table_digest(table)
        pipeline = self.pipeline_for(self.table, self.stratified)
        self._num_codes = pipeline.sum_shape(self._layout.dim)[0]
        super().__init__(pipeline, self._layout.dim, round_seed)

    def _read_envelope(self, reader: PayloadReader) -> PayloadHeader:
        header = read_header(reader, self._magic)
        self._check_header(header)
        return header

    def _check_header(self, header: PayloadHeader) -> None:
        """Check the header against this aggregator (before reading any array)."""
        # the fingerprint hashed once (16 KiB of receiver at b = 8), not twice per payload
        check_table_header(header, self.table, self._tag, self.dim, self._fingerprint)
        self._check_new_client(header.client_id)
        if header.num_exact > self._num_codes:
            raise PayloadError(
                f"{header.num_exact} exact coordinates exceed the {self._num_codes} coded ones"
            )

    def _merge_key(self) -> tuple:
        return (self._magic, self._table_digest, self.round_seed, self.dim, self.stratified)

    def _shard_identity(self) -> tuple[bytes, bytes]:
        # stratified rounds get their own shard scheme (docs/shard-format.md)
        return (STRATIFIED_SHARD_SCHEME if self.stratified else self._magic), self._fingerprint

    def _shard_source(self) -> Table:
        return self.table


__getattr__ = renamed_attributes(
    __name__,
    {
        "Encoder": "QuicFLEncoder",
        "Aggregator": "QuicFLAggregator",
        "max_payload_size": "payload_size",
    },
    globals(),
)


def _with_exact_tail(state, layout, norms32, shared, codes, exact, exact_values) -> _Quantized:
    """A client's quantized chunks; the sampler clamped the ``exact`` values (sent as
    float32 beside the messages), so their codes are set to 0."""
    codes[exact] = 0
    return _Quantized(
        client_id=state.client_id,
        layout=layout,
        norms=norms32,
        shared=shared,
        codes=codes,
        exact_indices=exact.astype(np.uint32),
        exact_values=exact_values.astype(np.float32),
    )
