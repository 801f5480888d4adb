"""Entropy-coded QUIC-FL: many messages, coded with ANS under the table's code model.

Same pipeline as :mod:`quicdesign.codec` (shared rotation, closed-form sender, server
sums in the rotated domain and inverts once), but the messages are entropy coded: each
coded coordinate's message is coded with the categorical model ``P(x | h)`` of its shared
value ``h`` stored in the table.

Wire format (``docs/wire-format.md``, magic ``QDQE``). Version 5, written: the wide
interleaved rANS (:mod:`quicdesign._rans`, 16-64 lanes, 2**12 slots; numpy reference,
compiled with the ``fast`` extra, same bytes; its decoder runs the lanes as vectors).
Version 4, still read: the same coder with 8 lanes and 2**14 slots. Version 3, still
read: constriction's ANS coder (``pip install quicdesign[entropy]``, imported only when
such a payload arrives). All carry a count and an 8-byte check of the coded stream (v5:
a multiply-xorshift sum, v4: blake2b; v3: blake2b of the symbols), which makes the
guarantee "decodes to exactly the encoded symbols or is refused": an ANS stream with
words dropped or changed usually still decodes to *something*.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import weakref

import numpy as np

from . import _rans
from ._deprecation import renamed_attributes
from ._kernels import compiled_kernels
from .codec import (
    WIRE_VERSION,
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
#: The version written: the envelope of version 4 with version byte 5 and the wide rANS
#: body. Version 4 (the envelope's version, 8-lane rANS) and 3 (the pre-envelope header,
#: constriction's ANS body) are still read; versions 1 and 2 carried no symbol count or
#: digest and are refused (see docs/wire-format.md).
ENTROPY_WIRE_VERSION = 5
_RANS_V4 = WIRE_VERSION
_CONSTRICTION_VERSION = 3
_DIGEST_SIZE = 8
_LEGACY_HEADER = struct.Struct("<4sBBBB8sIIII")
_DIGEST_PERSON = {
    _CONSTRICTION_VERSION: b"quicdesign.ans2",
    _RANS_V4: b"quicdesign.rans4",
}
#: rANS versions: (lanes as a function of the symbol count, probability bits)
_RANS_FORMATS = {
    _RANS_V4: (lambda count: _rans.LANES, _rans.PROB_BITS),
    ENTROPY_WIRE_VERSION: (_rans.wide_lanes, _rans.WIDE_PROB_BITS),
}


def _symbol_digest(symbols: np.ndarray) -> bytes:
    """Version 3: 8-byte blake2b of the coded symbols, one byte each, in coding order."""
    data = np.ascontiguousarray(symbols, dtype=np.uint8)
    person = _DIGEST_PERSON[_CONSTRICTION_VERSION]
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE, person=person).digest()


def _stream_digest(states: np.ndarray, words: np.ndarray, version: int = _RANS_V4) -> bytes:
    """Versions 4 and 5: 8 bytes over the coded stream as sent (states, then words).

    Version 5: :func:`quicdesign._rans.stream_check` (a multiply-xorshift sum, ~20x
    faster than blake2b compiled); version 4: blake2b. The decoder is a fixed function
    of the stream, the table and the symbol count, so an unchanged stream decodes to
    exactly the encoded symbols; hashing the stream instead of the symbols reads 2-8x
    fewer bytes and refuses a damaged stream before decoding.
    """
    if version == ENTROPY_WIRE_VERSION:
        return _rans.stream_check(states, words)
    person = _DIGEST_PERSON[version]
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=person)
    digest.update(np.ascontiguousarray(states, dtype="<u4"))
    digest.update(np.ascontiguousarray(words, dtype="<u2"))
    return digest.digest()


_SLAB = "entropy decode buffers"
_SLAB_CLIENTS = 8  # clients per allocation (a block of add_many)


def _client_buffers(cache: dict, size: int):
    """One client's h (``size`` rounded up to whole 8-byte words) and symbol arrays,
    cut from a slab shared with the next clients (weakly held in the aggregator's
    ``cache``: it lives while their contributions do).

    One allocation of 16 MiB at d = 2**20 (numpy asks for huge pages from 4 MiB on)
    instead of two 1 MiB arrays per client: when the allocator has returned those to the
    system, refaulting them 4 KiB at a time cost ~1.4 ms per client (``bench runtime``,
    b = 4), more than decoding them.
    """
    words = -(-size // 8) * 8
    per_client = words + size
    entry = cache.get(_SLAB)
    slab = entry[0]() if entry is not None else None
    used = entry[1] if entry is not None else 0
    if slab is None or used == _SLAB_CLIENTS or slab.size != per_client * _SLAB_CLIENTS:
        slab, used = np.empty(per_client * _SLAB_CLIENTS, dtype=np.uint8), 0
    cache[_SLAB] = (weakref.ref(slab), used + 1)
    piece = slab[per_client * used : per_client * (used + 1)]
    return piece[:words], piece[words:]


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


def _rans_model(table: Table, prob_bits: int = _rans.PROB_BITS) -> _rans.RansModel:
    """The table's code model quantized for the rANS coder (``TableError`` if unusable).

    Built once per code model: every round's aggregator reuses it (the model is read only).
    """
    probabilities = np.ascontiguousarray(table.code_model, dtype=np.float64)
    return _cached_rans_model(probabilities.shape, probabilities.tobytes(), prob_bits)


@functools.lru_cache(maxsize=16)
def _cached_rans_model(shape, data, prob_bits) -> _rans.RansModel:
    probabilities = np.frombuffer(data, dtype=np.float64).reshape(shape)
    return _rans.RansModel(probabilities, prob_bits=prob_bits)


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


def _coded_mask(rotated_dim: int, exact_indices: np.ndarray) -> np.ndarray | None:
    """True at the coded (not exactly sent) positions; None when all are coded."""
    if exact_indices.size == 0:
        return None
    keep = np.ones(rotated_dim, dtype=bool)
    keep[exact_indices] = False
    return keep


def _coded_positions(rotated_dim: int, exact_indices: np.ndarray) -> np.ndarray | None:
    keep = _coded_mask(rotated_dim, exact_indices)
    return None if keep is None else np.flatnonzero(keep)


class QuicFLEntropyQuantize(QuicFLQuantize):
    """:class:`~quicdesign.codec.QuicFLQuantize` with its messages entropy coded.

    Side information: the stream word count, the coded symbol count, the digest, the
    exact indices and values, then the coded stream (versions 5 and 4: rANS lane states
    and 16-bit words; version 3: constriction's 32-bit ANS words). Decoding validates all
    of it (the stream must match its digest, decode to exactly the expected symbols and
    be used up). Writes ``version`` (5; 4 and 3 only to test their readers), reads all.
    """

    def __init__(self, table: Table, version: int = ENTROPY_WIRE_VERSION):
        super().__init__(table)
        self.version = version
        # both quantized models now: an unusable code model is refused here
        self._rans_models = {bits: _rans_model(table, bits) for _, bits in _RANS_FORMATS.values()}
        self._constriction_models = None

    def _coder(self, version, count):
        """``(model, lanes)`` of a rANS version coding ``count`` symbols."""
        lanes, prob_bits = _RANS_FORMATS[version]
        return self._rans_models[prob_bits], lanes(count)

    def _constriction(self):
        if self._constriction_models is None:
            self._constriction_models = _models(self.table)
        return self._constriction_models

    def write_side(self, writer, side: _Quantized):
        if self.version == _CONSTRICTION_VERSION:
            self._write_constriction(writer, side)
            return
        # a boolean mask compresses several times faster than a gather by positions
        coded = _coded_mask(side.layout.rotated_dim, side.exact_indices)
        symbols, model_of = side.codes, side.shared
        if coded is not None:
            symbols, model_of = symbols[coded], model_of[coded]
        model, lanes = self._coder(self.version, symbols.size)
        states, words = _rans.encode(model, symbols, model_of, lanes=lanes)
        writer.write_u32(words.size)
        writer.write_u32(symbols.size)
        writer.write_bytes(_stream_digest(states, words, self.version))
        writer.write_array(side.exact_indices.astype("<u4"))
        writer.write_array(side.exact_values.astype("<f4"))
        writer.write_array(states.astype("<u4"))
        writer.write_array(words.astype("<u2"))

    def _write_constriction(self, writer, side: _Quantized):
        """Version 3 (what earlier releases wrote; kept to test the version 3 reader)."""
        constriction, models = self._constriction()
        coded = _coded_positions(side.layout.rotated_dim, side.exact_indices)
        order, bounds = _group_by_shared(side.shared, coded, self.table.num_shared)
        symbols = side.codes[order].astype(np.int32)
        coder = constriction.stream.stack.AnsCoder()
        # ANS is a stack: encode the groups backwards so they decode in order h = 0, 1, ...
        for h in range(self.table.num_shared - 1, -1, -1):
            if bounds[h + 1] > bounds[h]:
                coder.encode_reverse(symbols[bounds[h] : bounds[h + 1]], models[h])
        stream = coder.get_compressed().astype("<u4")
        writer.write_u32(stream.size)
        writer.write_u32(symbols.size)
        writer.write_bytes(_symbol_digest(symbols))
        writer.write_array(side.exact_indices.astype("<u4"))
        writer.write_array(side.exact_values.astype("<f4"))
        writer.write_array(stream)

    def read_side(self, reader, state, dim):
        header = state.header
        version = header.version
        words = reader.read_u32("stream word count")
        num_coded = reader.read_u32("coded symbol count")
        digest = reader.read_bytes(_DIGEST_SIZE, "symbol digest")
        if num_coded != dim - header.num_exact:
            raise PayloadError(
                f"payload claims {num_coded} coded symbols; {dim} positions "
                f"minus {header.num_exact} exact ones leave {dim - header.num_exact}"
            )
        rans = version in _RANS_FORMATS
        if rans:
            if words > num_coded:
                raise PayloadError(
                    f"{words} stream words for {num_coded} symbols (at most one each)"
                )
            lanes = _RANS_FORMATS[version][0](num_coded)
            stream_bytes = 4 * lanes + 2 * words
        else:
            stream_bytes = 4 * words
        expected = (
            header.header_size + 4 * header.num_chunks + 8 + _DIGEST_SIZE + 8 * header.num_exact
        )
        _check_size(reader.size, expected + stream_bytes)
        indices = reader.read_array("<u4", header.num_exact, "exact indices")
        values = reader.read_array("<f4", header.num_exact, "exact values")
        _check_exact(indices, values, dim)
        if rans:
            states = reader.read_array("<u4", lanes, "coder states")
            stream = reader.read_array("<u2", words, "coded stream")
            if _stream_digest(states, stream, version) != digest:
                raise PayloadError("coded stream does not match its digest")
            codes, shared, mask = self._decode_rans(version, states, stream, state, indices, dim)
        else:
            shared, mask = self._shared(state, dim), 0xFF
            stream = reader.read_array("<u4", words, "coded stream")
            coded = _coded_positions(dim, indices)
            codes, symbols = self._decode_constriction(stream, shared, coded, dim)
            if _symbol_digest(symbols) != digest:
                raise PayloadError("coded stream does not decode to the symbols that were encoded")
        # a rANS decoder yields only its model's symbols: no pass when they all fit
        within = rans and self._coder(version, 0)[0].num_symbols <= self.table.num_messages
        if not within and codes.max(initial=0) >= self.table.num_messages:
            raise PayloadError("decoded message outside the table")
        # one byte per code (messages < 2**8), as the server kernel reads them (v3: uint16)
        return codes.astype(np.uint8, copy=False), indices, values, shared, mask

    def contribution(self, y, side, state, dim, weight):
        """The fixed-rate quantizer's gather, with ``h`` masked as the decoder read it."""
        *side, mask = side
        gathered = super().contribution(y, tuple(side), state, dim, weight)
        gathered.shared_mask = mask
        return gathered

    def _decode_rans(self, version, states, stream, state, exact_indices, dim):
        """Versions 4 and 5: ``(codes, shared, mask)``: the codes of all ``dim``
        positions, 0 at the exact ones (checked increasing), and the client's ``h`` as
        bytes to mask. The compiled wide decoder reads the raw shared-randomness bytes
        and skips the exact positions itself; the other paths drop and refill them."""
        model, lanes = self._coder(version, dim - exact_indices.size)
        kernels = compiled_kernels()
        # masked h lies below 2**l, the model's rows (checked, so the kernel may index)
        every_row = model.num_models == 1 << self.table.shared_bits
        if kernels is not None and every_row and _rans.has_wide_entries(model):
            shared, mask, key = self._shared_bytes(state, dim)
            drawn, codes = _client_buffers(state.cache, dim)
            if shared is None:  # the decoder reads every byte before the sum: draw them
                kernels.draw_stream_bytes(key, drawn)
                shared = drawn
            shared = shared[:dim]  # whole Philox words: up to 7 bytes more
            positions = exact_indices.astype(np.intp)
            codes = _rans.decode_wide_skipping(
                kernels, model, states, stream, shared, positions, lanes, mask, out=codes
            )
            return codes, shared, mask
        shared = self._shared(state, dim)
        if exact_indices.size == 0:
            return _rans.decode(model, states, stream, shared, lanes=lanes), shared, 0xFF
        if kernels is not None:
            positions = exact_indices.astype(np.intp)
            model_of = kernels.drop_positions(shared, positions)
            symbols = _rans.decode(model, states, stream, model_of, lanes=lanes)
            return kernels.insert_zeros(symbols, positions, dim), shared, 0xFF
        coded = _coded_mask(dim, exact_indices)
        codes = np.zeros(dim, dtype=np.uint8)
        codes[coded] = _rans.decode(model, states, stream, shared[coded], lanes=lanes)
        return codes, shared, 0xFF

    def _decode_constriction(self, stream, shared, coded, dim):
        """Version 3: groups by ``h`` decoded with constriction; ``(codes, symbols)``."""
        constriction, models = self._constriction()
        order, bounds = _group_by_shared(shared, coded, self.table.num_shared)
        codes = np.zeros(dim, dtype=np.uint16)
        symbols = np.zeros(0, dtype=np.int32)
        try:
            coder = constriction.stream.stack.AnsCoder(
                np.ascontiguousarray(stream, dtype=np.uint32)
            )
            groups = [
                coder.decode(models[h], int(bounds[h + 1] - bounds[h]))
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
        return codes, symbols


def entropy_pipeline(table: Table, stratified: bool = False) -> Pipeline:
    """Entropy-coded QUIC-FL as stages: the round's rotation (summed), the coded quantizer."""
    if stratified:
        raise ParameterError("entropy-coded QUIC-FL has no stratified mode")
    return Pipeline((RandomizedHadamard(scaled=True), QuicFLEntropyQuantize(table)))


class QuicFLEntropyEncoder(QuicFLEncoder):
    """Client-side encoder for entropy-coded tables (``table.code_model`` set)."""

    _magic = ENTROPY_MAGIC
    pipeline_for = staticmethod(entropy_pipeline)

    def __init__(self, table: Table, round_seed: int):
        _require_code_model(table)
        super().__init__(table, round_seed)

    @property
    def _wire_version(self):
        # the version written is the coded quantizer's (3 only to test its reader)
        return self._pipeline.stages[-1].version

    @_wire_version.setter
    def _wire_version(self, version):
        self._pipeline.stages[-1].version = version

    def _write_header(self, writer, quantized, magic):
        if self._wire_version == _CONSTRICTION_VERSION:
            writer.write_bytes(self._legacy_header(quantized))
            return
        super()._write_header(writer, quantized, magic, self._wire_version)

    def _legacy_header(self, quantized: _Quantized) -> bytes:
        """The pre-envelope 32-byte header of version 3 (docs/wire-format.md, legacy)."""
        return _LEGACY_HEADER.pack(
            ENTROPY_MAGIC,
            _CONSTRICTION_VERSION,
            self.table.bits,
            self.table.shared_bits,
            quantized.layout.num_chunks,
            self.table.fingerprint,
            quantized.layout.dim,
            quantized.client_id,
            self._tag,
            quantized.exact_indices.size,
        )


class QuicFLEntropyAggregator(QuicFLAggregator):
    """Server-side aggregation of entropy-coded payloads (one inverse rotation in total).

    Every guarantee of :class:`quicdesign.QuicFLAggregator` holds: a payload is validated and
    decoded completely (the stream must decode to exactly the expected number of symbols,
    be used up and match the stream digest) before any state changes. Reads wire versions
    5 (wide rANS), 4 (8-lane rANS) and 3 (constriction, needs ``pip install
    quicdesign[entropy]``).
    """

    _magic = ENTROPY_MAGIC
    pipeline_for = staticmethod(entropy_pipeline)

    def __init__(self, table: Table, round_seed: int, dim: int):
        _require_code_model(table)
        super().__init__(table, round_seed, dim)


__getattr__ = renamed_attributes(
    __name__,
    {"EntropyEncoder": "QuicFLEntropyEncoder", "EntropyAggregator": "QuicFLEntropyAggregator"},
    globals(),
)
