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

from ._validate import check_f32_normal
from ._wire import packed_size, unpack_codes
from .codec import (
    HEADER_SIZE,
    WIRE_VERSION,
    QuicFLAggregator,
    QuicFLEncoder,
    QuicFLQuantize,
)
from .errors import InputVectorError, ParameterError, PayloadError
from .input_model import DIRECT
from .rotation import RotationLayout
from .stages import Pipeline
from .table import Table

__all__ = [
    "DirectEncoder",
    "DirectAggregator",
    "DirectQuantize",
    "direct_pipeline",
    "DIRECT_MAGIC",
    "direct_payload_size",
]

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


class DirectQuantize(QuicFLQuantize):
    """QUIC-FL's quantizer on the values themselves: chunk ``k`` (``chunk_size``
    consecutive values, the last one shorter) is scaled by ``sqrt(n_k) / norm_k``.

    Same side information as :class:`~quicdesign.codec.QuicFLQuantize` (norms in the
    header, then packed messages and exact coordinates). The server decodes
    ``R[h, x] * norm_k / sqrt(n_k)`` with the weight folded into the per-chunk scale.
    """

    gathers = False

    def __init__(self, table: Table):
        super().__init__(table)

    def apply(self, x, state):
        flat = x.astype(np.float64)
        dim = flat.size
        chunk_size, num_chunks = _chunking(dim)
        norms32 = _chunk_norms32(flat, chunk_size)
        lengths = _chunk_lengths(dim, chunk_size, num_chunks)
        with np.errstate(divide="ignore"):
            scale = np.where(norms32 > 0, np.sqrt(lengths) / norms32.astype(np.float64), 0.0)
        z = flat * np.repeat(scale, chunk_size)[:dim]
        return None, self._quantize(z, norms32, RotationLayout.for_dim(dim), state)

    def _payload_size(self, dim, num_exact):
        return direct_payload_size(self.table.bits, dim, num_exact)

    def contribution(self, y, side, state, dim, weight):
        packed, indices, values, _ = side
        codes = unpack_codes(packed, self.table.bits, dim)  # checked by read_side
        chunk_size, num_chunks = _chunking(dim)
        # value = R[h, x] * norm_k / sqrt(n_k): the inverse of the client's scaling
        lengths = _chunk_lengths(dim, chunk_size, num_chunks)
        scale = state.header.norms.astype(np.float64) / np.sqrt(lengths) * weight
        per_coordinate = np.repeat(scale, chunk_size)[:dim]
        shared = self._shared(state, dim)
        decoded = self.table.receiver[shared, codes] * per_coordinate
        decoded[indices] = values * per_coordinate[indices]
        if not np.all(np.isfinite(decoded)):
            raise PayloadError("weighted contribution overflows float64")
        return decoded

    def invert(self, y, side, state, dim):
        return self.contribution(y, side, state, dim, 1.0)

    def __repr__(self):
        return f"{type(self).__name__}(table={self.table!r})"


def direct_pipeline(table: Table, stratified: bool = False) -> Pipeline:
    """Direct QUIC-FL as stages: one per-client quantizer, no transform."""
    if stratified:
        raise ParameterError("direct QUIC-FL has no stratified mode")
    return Pipeline((DirectQuantize(table),))


class DirectEncoder(QuicFLEncoder):
    """Client-side encoder for ``direct`` tables: no rotation, per-chunk RMS scaling.

    Values of ``|z|`` beyond the table's support are sent exactly; the others get the
    table's closed-form sender rule with the client's shared values ``h``.

    Parameters
    ----------
    table : quicdesign.Table
        A table whose input model is ``direct`` (``bits``, ``shared_bits`` <= 8).
    round_seed : int
        Seed shared by the server and the clients of the round, in ``[0, 2**64)``.
    force : bool
        Accept a table designed for rotated inputs (to measure the mismatch).
    """

    _magic = DIRECT_MAGIC
    _input_model = DIRECT
    pipeline_for = staticmethod(direct_pipeline)

    def __init__(self, table: Table, round_seed: int, *, force: bool = False):
        super().__init__(table, round_seed, force=force)


class DirectAggregator(QuicFLAggregator):
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

    _magic = DIRECT_MAGIC
    _input_model = DIRECT
    pipeline_for = staticmethod(direct_pipeline)

    def __init__(self, table: Table, round_seed: int, dim: int, *, force: bool = False):
        super().__init__(table, round_seed, dim, force=force)
