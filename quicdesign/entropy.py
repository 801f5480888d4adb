"""Entropy-coded QUIC-FL: many messages, coded with ANS under the table's code model.

Same pipeline as :mod:`quicdesign.codec` (shared rotation, closed-form sender, server
sums in the rotated domain and inverts once), but the messages are entropy coded with
constriction's ANS coder: coordinates are grouped by their shared value ``h`` and each
group is coded with the categorical model ``P(x | h)`` stored in the table. Needs the
optional dependency ``constriction`` (``pip install quicdesign[entropy]``), imported only
when an entropy coder is built.

Wire format (``docs/wire-format.md``, magic ``QDQE``, version 3): the 32-byte fixed
header of the fixed-rate format, the chunk norms, a u32 count of 32-bit stream words, a
u32 count of coded symbols, an 8-byte digest of the coded symbols, the exact indices and
values, then the ANS stream (little-endian u32 words). The digest makes the guarantee
"decodes to exactly the encoded symbols or is refused": an ANS stream with words dropped
or changed usually still decodes to *something*.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ._deprecation import renamed_attributes
from .codec import (
    _FIXED_HEADER,
    QuicFLAggregator,
    QuicFLEncoder,
    QuicFLQuantize,
    _check_exact,
    _check_size,
    _Quantized,
)
from .errors import ParameterError, PayloadError
from .stages import Pipeline, RandomizedHadamard
from .table import Table

__all__ = [
    "QuicFLEntropyEncoder",
    "QuicFLEntropyQuantize",
    "entropy_pipeline",
    "QuicFLEntropyAggregator",
    "ENTROPY_MAGIC",
    "ENTROPY_WIRE_VERSION",
]

ENTROPY_MAGIC = b"QDQE"
#: Versions 1 and 2 carried no symbol count or digest; they are refused
#: (see docs/wire-format.md).
ENTROPY_WIRE_VERSION = 3
_DIGEST_SIZE = 8


def _symbol_digest(symbols: np.ndarray) -> bytes:
    """8-byte blake2b of the coded symbols, one byte each, in coding order."""
    data = np.ascontiguousarray(symbols, dtype=np.uint8)
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE, person=b"quicdesign.ans2").digest()


def _require_code_model(table: Table) -> None:
    if getattr(table, "code_model", None) is None:
        raise ParameterError("entropy coding needs a table with a code_model")


def _models(table: Table):
    """One constriction categorical model per shared value."""
    try:
        import constriction
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ParameterError(
            "entropy-coded tables need the 'constriction' package (pip install quicdesign[entropy])"
        ) from exc
    categorical = constriction.stream.model.Categorical
    return constriction, [categorical(row, perfect=False) for row in table.code_model]


def _group_by_shared(shared: np.ndarray, keep: np.ndarray | None, num_shared: int):
    """Positions sorted by ``h`` (stable) and the group boundaries."""
    if keep is None:
        order = np.argsort(shared, kind="stable")
        counts = np.bincount(shared, minlength=num_shared)
    else:
        kept = shared[keep]
        order = keep[np.argsort(kept, kind="stable")]
        counts = np.bincount(kept, minlength=num_shared)
    return order, np.concatenate(([0], np.cumsum(counts)))


def _coded_positions(rotated_dim: int, exact_indices: np.ndarray) -> np.ndarray | None:
    if exact_indices.size == 0:
        return None
    keep = np.ones(rotated_dim, dtype=bool)
    keep[exact_indices] = False
    return np.flatnonzero(keep)


class QuicFLEntropyQuantize(QuicFLQuantize):
    """:class:`~quicdesign.codec.QuicFLQuantize` with its messages ANS coded.

    Side information: the stream word count, the coded symbol count, the symbol digest,
    the exact indices and values, then the ANS stream. Decoding validates all of it
    (the stream must decode to exactly the expected symbols and be used up).
    """

    def __init__(self, table: Table):
        super().__init__(table)
        self._constriction, self._coder_models = _models(table)

    def write_side(self, writer, side: _Quantized):
        coded = _coded_positions(side.layout.rotated_dim, side.exact_indices)
        order, bounds = _group_by_shared(side.shared, coded, self.table.num_shared)
        symbols = side.codes[order].astype(np.int32)
        coder = self._constriction.stream.stack.AnsCoder()
        # ANS is a stack: encode the groups backwards so they decode in order h = 0, 1, ...
        for h in range(self.table.num_shared - 1, -1, -1):
            if bounds[h + 1] > bounds[h]:
                coder.encode_reverse(symbols[bounds[h] : bounds[h + 1]], self._coder_models[h])
        stream = coder.get_compressed().astype("<u4")
        writer.write_u32(stream.size)
        writer.write_u32(symbols.size)
        writer.write_bytes(_symbol_digest(symbols))
        writer.write_array(side.exact_indices.astype("<u4"))
        writer.write_array(side.exact_values.astype("<f4"))
        writer.write_array(stream)

    def read_side(self, reader, state, dim):
        header = state.header
        words = reader.read_u32("stream word count")
        num_coded = reader.read_u32("coded symbol count")
        digest = reader.read_bytes(_DIGEST_SIZE, "symbol digest")
        if num_coded != dim - header.num_exact:
            raise PayloadError(
                f"payload claims {num_coded} coded symbols; {dim} positions "
                f"minus {header.num_exact} exact ones leave {dim - header.num_exact}"
            )
        expected = (
            _FIXED_HEADER.size
            + 4 * header.num_chunks
            + 8
            + _DIGEST_SIZE
            + 8 * header.num_exact
            + 4 * words
        )
        _check_size(reader.size, expected)
        indices = reader.read_array("<u4", header.num_exact, "exact indices")
        values = reader.read_array("<f4", header.num_exact, "exact values")
        stream = reader.read_array("<u4", words, "coded stream")
        _check_exact(indices, values, dim)
        shared = self._shared(state, dim)
        order, bounds = _group_by_shared(
            shared, _coded_positions(dim, indices), self.table.num_shared
        )
        codes = np.zeros(dim, dtype=np.uint16)
        symbols = np.zeros(0, dtype=np.int32)
        try:
            coder = self._constriction.stream.stack.AnsCoder(
                np.ascontiguousarray(stream, dtype=np.uint32)
            )
            groups = [
                coder.decode(self._coder_models[h], int(bounds[h + 1] - bounds[h]))
                for h in range(self.table.num_shared)
                if bounds[h + 1] > bounds[h]
            ]
            if groups:
                symbols = np.concatenate(groups)
                codes[order] = symbols
            if not coder.is_empty():
                raise PayloadError("coded stream has data left after the last symbol")
        except PayloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad stream
            raise PayloadError(f"corrupt coded stream: {exc}") from None
        if codes.max(initial=0) >= self.table.num_messages:
            raise PayloadError("decoded message outside the table")
        if _symbol_digest(symbols) != digest:
            raise PayloadError("coded stream does not decode to the symbols that were encoded")
        return codes, indices, values, shared


def entropy_pipeline(table: Table, stratified: bool = False) -> Pipeline:
    """Entropy-coded QUIC-FL as stages: the round's rotation (summed), the ANS quantizer."""
    if stratified:
        raise ParameterError("entropy-coded QUIC-FL has no stratified mode")
    return Pipeline((RandomizedHadamard(scaled=True), QuicFLEntropyQuantize(table)))


class QuicFLEntropyEncoder(QuicFLEncoder):
    """Client-side encoder for entropy-coded tables (``table.code_model`` set)."""

    _magic = ENTROPY_MAGIC
    _wire_version = ENTROPY_WIRE_VERSION
    pipeline_for = staticmethod(entropy_pipeline)

    def __init__(self, table: Table, round_seed: int):
        _require_code_model(table)
        super().__init__(table, round_seed)


class QuicFLEntropyAggregator(QuicFLAggregator):
    """Server-side aggregation of entropy-coded payloads (one inverse rotation in total).

    Every guarantee of :class:`quicdesign.QuicFLAggregator` holds: a payload is validated and
    decoded completely (the ANS stream must decode to exactly the expected number of
    symbols and be used up) before any state changes.
    """

    _magic = ENTROPY_MAGIC
    _wire_version = ENTROPY_WIRE_VERSION
    pipeline_for = staticmethod(entropy_pipeline)

    def __init__(self, table: Table, round_seed: int, dim: int):
        _require_code_model(table)
        super().__init__(table, round_seed, dim)


__getattr__ = renamed_attributes(
    __name__,
    {"EntropyEncoder": "QuicFLEntropyEncoder", "EntropyAggregator": "QuicFLEntropyAggregator"},
    globals(),
)
