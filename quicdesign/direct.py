"""Direct (no rotation) QUIC-FL: for tables designed for the values' own law.

Rotation makes any input close to N(0, 1), which is why the rotated path
(:mod:`quicdesign.codec`) uses normal-designed tables. When rotation is unwanted (per-
coordinate quantization of values with a known law, small or latency-bound vectors, no
fast transform), :class:`DirectEncoder` quantizes the values themselves: each chunk is
scaled to unit RMS and quantized with a table designed for the values' law rescaled to
unit variance (``solvers.design(..., input_model="direct")``). Same guarantees as the
rotated path: unbiased, the wire format is versioned and validated
(``docs/wire-format.md``, magic ``QDQD``), a rejected payload changes nothing, and the
server only sums decoded values (no transform at all).
"""

from __future__ import annotations

import numpy as np

from ._accumulate import WeightedSumAggregator
from ._validate import as_client_vector, check_client_id, check_f32_normal, check_round_seed
from ._wire import PayloadReader, PayloadWriter, pack_codes, packed_size
from .codec import (
    HEADER_SIZE,
    WIRE_VERSION,
    _check_size,
    _check_table,
    check_table_header,
    read_header,
    write_header,
)
from .errors import InputVectorError, PayloadError
from .input_model import DIRECT, check_input_model
from .randomness import round_tag, shared_values
from .rotation import RotationLayout
from .table import Table

__all__ = ["DirectEncoder", "DirectAggregator", "DIRECT_MAGIC", "direct_payload_size"]

DIRECT_MAGIC = b"QDQD"
#: The envelope's version; version 1 (the pre-envelope header) is still read.
DIRECT_VERSION = WIRE_VERSION


def _chunking(dim: int) -> tuple[int, int]:
    """``(chunk_size, num_chunks)``: the rotated layout's chunk size, without padding."""
    layout = RotationLayout.for_dim(dim)
    return layout.chunk_size, layout.num_chunks


def direct_payload_size(bits: int, dim: int, num_exact: int) -> int:
    """Exact size of a direct payload."""
    return HEADER_SIZE + 4 * _chunking(dim)[1] + packed_size(bits, dim) + 8 * num_exact


def _chunk_sums(values: np.ndarray, chunk_size: int) -> np.ndarray:
    starts = np.arange(0, values.size, chunk_size)
    return np.add.reduceat(values, starts)


def _chunk_norms32(flat: np.ndarray, chunk_size: int) -> np.ndarray:
    """Chunk norms as sent (float32), computed without overflow or underflow.

    Each chunk is divided by its largest magnitude first, so any finite input gets an
    accurate norm; a norm beyond float32, or nonzero below float32's normal range, is
    refused (as on the rotated path).
    """
    starts = np.arange(0, flat.size, chunk_size)
    largest = np.maximum.reduceat(np.abs(flat), starts)
    safe = np.where(largest > 0, largest, 1.0)
    scaled = flat / np.repeat(safe, chunk_size)[: flat.size]
    with np.errstate(over="ignore"):  # an infinite norm is refused just below
        norms = largest * np.sqrt(_chunk_sums(scaled * scaled, chunk_size))
        norms32 = norms.astype(np.float32)
    if not np.all(np.isfinite(norms32)):
        raise InputVectorError("vector is too large to encode: a chunk norm overflows float32")
    check_f32_normal(norms, "chunk norm")
    return norms32


def _chunk_lengths(dim: int, chunk_size: int, num_chunks: int) -> np.ndarray:
    lengths = np.full(num_chunks, chunk_size, dtype=np.float64)
    lengths[-1] = dim - chunk_size * (num_chunks - 1)
    return lengths


class DirectEncoder:
    """Client-side encoder for ``direct`` tables: no rotation, per-chunk RMS scaling.

    Parameters
    ----------
    table : quicdesign.Table
        A table whose input model is ``direct`` (``bits``, ``shared_bits`` <= 8).
    round_seed : int
        Seed shared by the server and the clients of the round, in ``[0, 2**64)``.
    force : bool
        Accept a table designed for rotated inputs (to measure the mismatch).
    """

    def __init__(self, table: Table, round_seed: int, *, force: bool = False):
        self.table = _check_table(table)
        check_input_model(table, DIRECT, force)
        self.round_seed = check_round_seed(round_seed)
        self._tag = round_tag(self.round_seed)

    def encode(self, vector, client_id: int, rng=None) -> bytes:
        """Encode one client's vector (any shape, flattened in C order).

        Chunk ``k`` (``chunk_size`` consecutive values, the last one shorter) is scaled
        by ``sqrt(n_k) / norm_k``; values of ``|z|`` beyond the table's support are sent
        exactly; the others get the table's closed-form sender rule with the client's
        shared values ``h``. ``rng`` (a Generator or seed) drives the sender's coins.
        """
        client_id = check_client_id(client_id)
        flat = as_client_vector(vector).astype(np.float64)
        dim = flat.size
        chunk_size, num_chunks = _chunking(dim)
        norms32 = _chunk_norms32(flat, chunk_size)
        lengths = _chunk_lengths(dim, chunk_size, num_chunks)
        with np.errstate(divide="ignore"):
            scale = np.where(norms32 > 0, np.sqrt(lengths) / norms32.astype(np.float64), 0.0)
        z = flat * np.repeat(scale, chunk_size)[:dim]
        table = self.table
        lower, upper = table.support
        exact = np.flatnonzero((z < lower) | (z > upper))
        shared = shared_values(self.round_seed, client_id, table.shared_bits, dim)
        codes = table.sender.sample(z, shared, rng=np.random.default_rng(rng))
        codes[exact] = 0
        writer = PayloadWriter()
        write_header(
            writer,
            DIRECT_MAGIC,
            table,
            RotationLayout.for_dim(dim),
            client_id,
            self._tag,
            exact.size,
        )
        writer.write_array(norms32.astype("<f4"))
        writer.write_bytes(pack_codes(codes, table.bits))
        writer.write_array(exact.astype("<u4"))
        writer.write_array(z[exact].astype("<f4"))
        return writer.to_bytes()


class DirectAggregator(WeightedSumAggregator):
    """Server side of the direct path: validate, decode ``R[h, x]`` times the chunk scale,
    sum. No transform; :meth:`result` is the weighted mean.

    Parameters
    ----------
    table : quicdesign.Table
        The clients' ``direct`` table.
    round_seed : int
        The round's seed.
    dim : int
        Length of the client vectors.
    force : bool
        Accept a table designed for rotated inputs.
    """

    def __init__(self, table: Table, round_seed: int, dim: int, *, force: bool = False):
        self.table = _check_table(table)
        check_input_model(table, DIRECT, force)
        self.round_seed = check_round_seed(round_seed)
        self.dim = RotationLayout.for_dim(dim).dim  # validates dim
        self._chunk_size, self._num_chunks = _chunking(self.dim)
        self._lengths = _chunk_lengths(self.dim, self._chunk_size, self._num_chunks)
        self._tag = round_tag(self.round_seed)
        super().__init__((self.dim,))

    def _merge_key(self) -> tuple:
        # full seeds, not 32-bit tags: two rounds can share a tag
        return (DIRECT_MAGIC, self.table.fingerprint, self.round_seed, self.dim)

    def _shard_identity(self) -> tuple[bytes, bytes]:
        return DIRECT_MAGIC, self.table.fingerprint

    def _shard_source(self) -> Table:
        return self.table

    def _decode(self, payload, weight: float):
        table = self.table
        reader = PayloadReader(payload)
        header = read_header(reader, DIRECT_MAGIC)
        check_table_header(header, table, self._tag, self.dim)
        if header.num_exact > self.dim:
            raise PayloadError(f"{header.num_exact} exact coordinates exceed dim {self.dim}")
        self._check_new_client(header.client_id)
        expected = direct_payload_size(table.bits, self.dim, header.num_exact)
        expected += header.header_size - HEADER_SIZE
        _check_size(reader.size, expected)
        codes = reader.read_codes(table.bits, self.dim, "codes")
        indices = reader.read_array("<u4", header.num_exact, "exact indices")
        values = reader.read_array("<f4", header.num_exact, "exact values")
        reader.expect_end()
        if indices.size and (
            int(indices[-1]) >= self.dim or np.any(np.diff(indices.astype(np.int64)) <= 0)
        ):
            raise PayloadError("exact indices must be strictly increasing and in range")
        if not np.all(np.isfinite(values)):
            raise PayloadError("exact values must be finite")
        shared = shared_values(self.round_seed, header.client_id, table.shared_bits, self.dim)
        # value = R[h, x] * norm_k / sqrt(n_k): the inverse of the client's scaling
        scale = header.norms.astype(np.float64) / np.sqrt(self._lengths) * weight
        per_coordinate = np.repeat(scale, self._chunk_size)[: self.dim]
        decoded = table.receiver[shared, codes] * per_coordinate
        decoded[indices] = values * per_coordinate[indices]
        if not np.all(np.isfinite(decoded)):
            raise PayloadError("weighted contribution overflows float64")
        return header.client_id, decoded
