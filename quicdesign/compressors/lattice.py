"""Dithered-lattice entropy-coded compressors: ``lattice-e8`` and ``lattice-d4``.

A pipeline of two stages: the round's shared randomized Hadamard rotation
(:class:`quicdesign.stages.RandomizedHadamard`, inverted once per round) and
:class:`DitheredLatticeStage`, which scales every rotation chunk to unit RMS (its norm is
sent as a bfloat16 scale), quantizes blocks of 8 (E8) or 4 (D4) coordinates to the nearest point
of the lattice scaled by the code model's step after adding the client's shared dither
(:func:`quicdesign.randomness.dither_uniforms`), and codes the points with the project's
interleaved rANS (:mod:`quicdesign._rans`, compiled when numba is present) under the
shipped code model (:mod:`quicdesign.lattice`). The server subtracts
the same dither, so each client decodes to its rotated vector plus an error uniform on
the lattice's Voronoi cell, independent of the vector: exactly unbiased. Payloads are
variable length (``payload_size`` is None); the body is documented in
``docs/wire-format.md`` (section "Dithered lattice").
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .._accumulate import check_contribution_bound
from .._kernels import compiled_kernels
from .._rans import FAILURES, LANES, OK, STATE_LOW, TRUNCATED, RansModel, StreamDecoder, encode
from .._validate import check_int
from ..errors import InputVectorError, ParameterError, PayloadError
from ..lattice import BlockModel, load_lattice_model, nearest_lattice_point
from ..randomness import dither_uniforms
from ..rotation import RotationLayout
from ..stages import Pipeline, RandomizedHadamard, Stage
from ._common import (
    PipelineCompressor,
    euclidean_norm,
    f32_nearest,
)
from .base import CompressorProperties

__all__ = ["DitheredLatticeStage", "LatticeE8", "LatticeD4", "MAX_ESCAPE_MAGNITUDE"]

_DIGEST_SIZE = 8
#: Quantized probability levels of the coset and parity bits.
BINARY_LEVELS = 256
#: Version of the lattice body (part of the config tag; 2 = interleaved rANS, 3 = bfloat16
#: chunk scales, a LEB128 escape count, 3- or 4-byte coder states and the word count
#: implied by the payload length).
BODY_VERSION = 3
#: Largest ``|k|`` an escaped coordinate may carry (larger values are refused).
MAX_ESCAPE_MAGNITUDE = 1 << 30
_F32_TINY = float(np.finfo(np.float32).tiny)
_BAD_PARITY = "coded stream has a parity symbol outside {0, 1}"
_BAD_ESCAPE = "an escaped value is in range, too large or of the wrong parity"


def _check_escape_count(found, listed) -> None:
    if found != listed:
        raise PayloadError(f"coded stream has {found} escapes, the payload lists {listed}")


_BF16_EXPONENT = 0x7F80  # all-ones exponent: inf or nan


def _bfloat16_scales(norms) -> tuple[np.ndarray, np.ndarray]:
    """Round float32 chunk norms to bfloat16 (nearest, ties to even): the u16 codes sent
    and the values the client scales by, so the server multiplies by exactly the same
    number (the rounding costs no bias, only 2**-9 of relative scale, and saves 2 bytes
    per chunk). ``InputVectorError`` if a norm rounds up past bfloat16's range."""
    bits = np.asarray(norms, dtype=np.float32).view(np.uint32).astype(np.uint64)
    codes = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    if np.any((codes & _BF16_EXPONENT) == _BF16_EXPONENT):
        raise InputVectorError("a rotation chunk's norm exceeds the bfloat16 range of the scales")
    codes = codes.astype(np.uint16)
    return codes, _bfloat16_values(codes)


#: Coder states below this take 3 bytes on the wire, the others 4 (flagged in a mask byte).
_SHORT_STATE_END = 1 << 24
_COUNT_BYTES = 5  # a LEB128 u32


def _write_count(writer, value) -> None:
    """``value`` (< 2**32) as unsigned LEB128: 7 bits per byte, low first, high bit = more."""
    while value >= 0x80:
        writer.write_u8((value & 0x7F) | 0x80)
        value >>= 7
    writer.write_u8(value)


def _read_count(reader, field, bound) -> int:
    """An unsigned LEB128 count of at most :data:`_COUNT_BYTES` bytes, in its shortest
    form and ``<= bound``; ``PayloadError`` otherwise."""
    value = 0
    for position in range(_COUNT_BYTES):
        byte = reader.read_u8(field)
        value |= (byte & 0x7F) << (7 * position)
        if not byte & 0x80:
            if byte == 0 and position > 0:
                raise PayloadError(f"{field} is not in its shortest LEB128 form")
            break
    else:
        raise PayloadError(f"{field} runs past {_COUNT_BYTES} LEB128 bytes")
    if value > bound:
        raise PayloadError(f"payload claims {value} for the {field}, more than {bound}")
    return value


def _write_states(writer, states) -> None:
    """A mask byte (bit ``i``: lane ``i``'s state takes 4 bytes), then each state in 3 or
    4 little-endian bytes (the final states are about log-uniform on ``[2**16, 2**32)``,
    so this saves about 3 of the 32 bytes)."""
    long = states >= _SHORT_STATE_END
    writer.write_u8(int(np.sum(long.astype(np.int64) << np.arange(LANES))))
    raw = states.astype("<u4").tobytes()
    writer.write_bytes(b"".join(raw[4 * i : 4 * i + 3 + int(long[i])] for i in range(LANES)))


def _read_states(reader) -> np.ndarray:
    """The coder states written by :func:`_write_states`; a 4-byte state must be
    ``>= 2**24`` (shortest form) and a 3-byte one ``>= 2**16`` (the coder's range)."""
    mask = reader.read_u8("coder state lengths")
    states = np.empty(LANES, dtype=np.uint32)
    for lane in range(LANES):
        long = (mask >> lane) & 1
        value = int.from_bytes(reader.read_bytes(3 + long, f"coder state {lane}"), "little")
        if value < (_SHORT_STATE_END if long else STATE_LOW):
            raise PayloadError(
                f"coder state {lane} is {value}: below the coder's range or not in 3 bytes"
            )
        states[lane] = value
    return states


def _bfloat16_values(codes) -> np.ndarray:
    """float64 values of bfloat16 ``codes`` (the high halves of float32s)."""
    return (codes.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _digest(k: np.ndarray, coset: np.ndarray) -> bytes:
    """8-byte blake2b of the coded points: ``k`` (shape (n, blocks), C order) as
    little-endian i32, then the coset bits as bytes."""
    hasher = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"quicdesign.lat2")
    hasher.update(np.ascontiguousarray(k, dtype="<i4"))  # no copy when already int32
    hasher.update(np.ascontiguousarray(coset, dtype=np.uint8))
    return hasher.digest()


class _Coder:
    """One rANS model for a code model: its ``2 bins`` class rows, then
    :data:`BINARY_LEVELS` two-symbol rows for the coset and parity bits (the rest
    of their width empty; a bit of probability ``p`` uses the row of level
    ``floor(p L)``, probability ``(level + 1/2) / L``)."""

    def __init__(self, model):
        rows = model.class_rows()
        width = rows.shape[1]
        levels = (np.arange(BINARY_LEVELS) + 0.5) / BINARY_LEVELS
        binary = np.zeros((BINARY_LEVELS, width))
        binary[:, 0] = 1.0 - levels
        binary[:, 1] = levels
        self.first_binary = rows.shape[0]
        widths = np.r_[np.full(rows.shape[0], width), np.full(BINARY_LEVELS, 2)]
        self.rans = RansModel(np.vstack([rows, binary]), widths=widths)

    def binary_rows(self, probability) -> np.ndarray:
        """The model rows of bits that are 1 with ``probability``."""
        # probabilities lie in [0, 1]: the cast truncates like floor
        level = (probability * BINARY_LEVELS).astype(np.uint16)
        np.minimum(level, BINARY_LEVELS - 1, out=level)
        level += self.first_binary
        return level


_WORKSPACE = "lattice decode workspace"
#: Largest rotated length whose decode arrays (about 30 bytes a value) an aggregator
#: keeps between payloads; longer vectors allocate them per payload.
_WORKSPACE_MAX_VALUES = 1 << 22


class _DecodeWorkspace:
    """Outputs and work arrays of the compiled decoder for ``blocks`` blocks of ``n``,
    kept by an aggregator for its next payloads (every array is rewritten before it is
    read, so a refused payload leaves nothing behind)."""

    def __init__(self, n, blocks):
        self.k = np.empty((n, blocks), dtype=np.int32)
        self.coset = np.zeros(blocks, dtype=np.uint8)
        self.unit = np.empty(n * blocks)
        self.scratch = _work_arrays(n, blocks)


def _work_arrays(n, blocks):
    """The work arrays of the compiled lattice kernels (see ``lattice_decode``)."""
    return (
        np.empty((n, blocks), dtype=np.int16),  # group: 2 bin + parity, bins <= 2**10
        np.empty((2, n, blocks), dtype=np.uint8),  # level_if
        np.zeros(blocks, dtype=np.uint8),  # required
        np.empty(blocks, dtype=np.int32),  # coset_level
        np.empty((2, blocks)),  # totals
        np.empty((4, blocks)),  # scratch
        np.empty((n, blocks)),  # the dither in columns
        np.empty(blocks, dtype=np.int32),  # indices
    )


class DitheredLatticeStage(Stage):
    """Unit-RMS scaling per chunk, dithered lattice quantization and ANS coding.

    Not commuting with sum (the dither differs per client); its inverse is the client's
    rotated vector estimate, which the pipeline sums before the shared rotation's inverse.
    """

    def __init__(self, model):
        self.model = model
        self._coder = None

    def __getstate__(self):
        return {"model": self.model, "_coder": None}

    def _models(self):
        if self._coder is None:
            self._coder = _Coder(self.model)
        return self._coder

    # -- geometry --------------------------------------------------------------------
    def _blocks(self, dim):
        return -(-dim // self.model.block)

    def _uniforms(self, state, dim):
        """The client's shared uniforms on ``[0, 1)``, block ``b``'s coordinate ``j`` at
        ``b n + j``."""
        return dither_uniforms(
            state.round_seed, state.client_id, self._blocks(dim) * self.model.block
        )

    def _dither(self, state, dim):
        """The client's dither as columns ``(n, blocks)``, uniform on ``[0, 2)^n``."""
        uniforms = self._uniforms(state, dim)
        uniforms *= 2.0  # exact in float64
        return np.ascontiguousarray(uniforms.reshape(-1, self.model.block).T)

    def side_size(self, dim, vector_dim):
        return None  # variable length

    def max_stream_words(self, dim) -> int:
        """Documented bound on the coded stream (checked before it is read)."""
        # the rANS decoder reads at most one word per symbol
        return self._blocks(dim) * (2 * self.model.block)

    # -- client ------------------------------------------------------------------------
    def apply(self, x, state):
        model, n = self.model, self.model.block
        dim = x.size
        layout = RotationLayout.for_dim(state.dim)  # the input vector's layout
        chunks = x.reshape(layout.num_chunks, layout.chunk_size)
        if not np.all(np.isfinite(chunks)):
            raise InputVectorError("the rotated vector exceeds the float32 range of the norms")
        norms = np.array([f32_nearest(euclidean_norm(c), "chunk norm") for c in chunks])
        codes, norms = _bfloat16_scales(norms)
        if np.any((norms > 0) & (norms < _F32_TINY)):
            raise InputVectorError(
                "a rotation chunk's norm is below float32's normal range; scale the vector up"
            )
        factor = np.zeros_like(norms)
        nonzero = norms > 0
        factor[nonzero] = math.sqrt(layout.chunk_size) / norms[nonzero]
        unit = (chunks * factor[:, None]).reshape(-1)
        padded = np.zeros(self._blocks(dim) * n)
        padded[:dim] = unit
        uniforms = self._uniforms(state, dim)
        dither = np.ascontiguousarray((uniforms * 2.0).reshape(-1, n).T)  # exact
        columns = padded.reshape(-1, n).T / model.scale
        y, coset = nearest_lattice_point(columns + dither, model.spec)
        return None, (codes, self._code(y, coset, uniforms))

    def _code(self, y, coset, uniforms) -> tuple[np.ndarray, np.ndarray, bytes]:
        model, n = self.model, self.model.block
        coder = self._models()
        compiled = compiled_kernels()
        if compiled is not None:
            return self._code_compiled(compiled, y, coset, uniforms)
        uniforms = uniforms * 2.0  # the dither, exact
        dither = np.ascontiguousarray(uniforms.reshape(-1, n).T)
        view = BlockModel(model, dither)
        geometry = view.geometry(coset)
        y = y.astype(np.int64)
        k = y + geometry.floor
        parities = y & 1
        k_parity = k & 1
        groups = (2 * geometry.bin + k_parity).reshape(-1)
        required = np.zeros(y.shape[1], dtype=np.int64)
        bits, bit_rows = [], []
        if model.spec.cosets == 2:
            bits.append(coset)
            bit_rows.append(coder.binary_rows(view.coset_probability()))
        for column in range(n - 1):
            bits.append(parities[column])
            bit_rows.append(coder.binary_rows(geometry.probability_odd(column, required)))
            required ^= parities[column]
        return self._stream(k, coset, bits, np.concatenate(bit_rows + [groups.astype(np.uint16)]))

    def _code_compiled(self, compiled, y, coset, uniforms):
        """:meth:`_code` by the compiled kernel (the same symbols, rows and points)."""
        model, n = self.model, self.model.block
        blocks = y.shape[1]
        count = (model.spec.cosets - 2 + 2 * n) * blocks  # bits, then one symbol a value
        symbols = np.empty(count, dtype=np.uint8)
        rows = np.empty(count, dtype=np.uint16)
        k = np.empty((n, blocks), dtype=np.int32)
        escapes = np.empty(n * blocks, dtype=np.int64)
        group, level_if, _, _, totals, scratch, dither, indices = _work_arrays(n, blocks)
        found = compiled.lattice_code_models(
            uniforms,
            y,
            coset,
            model.spec.cosets,
            model.bins,
            model.class_mass.reshape(-1),
            BINARY_LEVELS,
            self._models().first_binary,
            model.k_min,
            model.num_symbols,
            symbols,
            rows,
            k,
            escapes,
            group,
            level_if,
            totals,
            scratch,
            dither,
            indices,
        )
        return self._coded(symbols, rows, escapes[:found], k, coset)

    def _stream(self, k, coset, bits, model_of):
        """:meth:`_coded` for points ``k`` (int64) whose bits (coset, parities) and class
        rows are coded under ``model_of``: their class symbols and escapes first."""
        model = self.model
        k_parity = k & 1
        symbols = ((k - model.k_min - k_parity) >> 1).reshape(-1)
        escaped = (symbols < 0) | (symbols >= model.num_symbols // 2)
        symbols[escaped] = model.num_symbols // 2
        escapes = k.reshape(-1)[escaped]
        return self._coded(np.concatenate(bits + [symbols]), model_of, escapes, k, coset)

    def _coded(self, symbols, model_of, escapes, k, coset):
        """The coded stream, escapes and point digest (``InputVectorError`` for an escape
        too large)."""
        if escapes.size and np.max(np.abs(escapes)) > MAX_ESCAPE_MAGNITUDE:
            raise InputVectorError("a coordinate is too far out for the lattice code")
        states, words = encode(self._models().rans, symbols, model_of)
        return states.astype("<u4"), words.astype("<u2"), escapes.astype("<i4"), _digest(k, coset)

    def write_side(self, writer, side):
        codes, (states, words, escapes, digest) = side
        writer.write_array(codes.astype("<u2"))
        _write_count(writer, escapes.size)  # the word count follows from the payload length
        writer.write_bytes(digest)
        writer.write_array(escapes)
        _write_states(writer, states)
        writer.write_array(words)

    # -- server ------------------------------------------------------------------------
    def read_side(self, reader, state, dim):
        layout = RotationLayout.for_dim(state.dim)  # the input vector's layout
        codes = reader.read_array("<u2", layout.num_chunks, "chunk scales")
        exponent = codes & _BF16_EXPONENT
        if np.any(codes & 0x8000) or np.any(exponent == _BF16_EXPONENT):
            raise PayloadError("chunk scales must be finite, non-negative bfloat16 values")
        if np.any((exponent == 0) & (codes != 0)):
            # clients refuse such chunks (norm below float32's normal range)
            raise PayloadError("chunk scales must be zero or normal bfloat16 values")
        norms = _bfloat16_values(codes)
        coordinates = self._blocks(dim) * self.model.block
        num_escapes = _read_count(reader, "escape count", coordinates)
        digest = reader.read_bytes(_DIGEST_SIZE, "point digest")
        escapes = reader.read_array("<i4", num_escapes, "escapes").astype(np.int64)
        states = _read_states(reader)
        if reader.remaining % 2:
            raise PayloadError(f"coded stream has {reader.remaining} bytes: not whole 16-bit words")
        words = reader.remaining // 2
        if words > self.max_stream_words(dim):
            raise PayloadError(
                f"payload carries {words} stream words, more than the bound "
                f"{self.max_stream_words(dim)} for dimension {dim}"
            )
        stream = reader.read_array("<u2", words, "coded stream")
        reader.expect_end()
        compiled = compiled_kernels()
        if compiled is None:
            dither = self._dither(state, dim)
            k, coset, geometry = self._decode(states, stream, escapes, dither)
            unit = (self.model.scale * (k + geometry.offset)).T.reshape(-1)
        else:
            uniforms = self._uniforms(state, dim)
            k, coset, unit = self._decode_compiled(
                compiled, states, stream, escapes, uniforms, state.cache
            )
        if _digest(k, coset) != digest:
            raise PayloadError("coded stream does not decode to the points that were encoded")
        return norms, unit[:dim]

    def _decode(self, states, stream, escapes, dither):
        model, n = self.model, self.model.block
        coder = self._models()
        blocks = dither.shape[1]
        view = BlockModel(model, dither)
        decoder = StreamDecoder(coder.rans, states, stream)
        coset = np.zeros(blocks, dtype=np.int64)
        if model.spec.cosets == 2:
            coset[:] = decoder.take(coder.binary_rows(view.coset_probability()))
        geometry = view.geometry(coset)
        parities = np.zeros((n, blocks), dtype=np.int64)
        required = np.zeros(blocks, dtype=np.int64)
        for column in range(n - 1):
            rows = coder.binary_rows(geometry.probability_odd(column, required))
            parities[column] = decoder.take(rows)
            if np.any(parities[column] > 1):
                raise PayloadError(_BAD_PARITY)
            required ^= parities[column]
        parities[n - 1] = required  # the block's sum is even
        k_parity = (parities + geometry.floor) & 1
        groups = (2 * geometry.bin + k_parity).reshape(-1)
        symbols = decoder.take(groups.astype(np.uint16)).astype(np.int64)
        decoder.finish()
        if model.spec.cosets == 2 and np.any(coset > 1):
            raise PayloadError("coded stream has a coset symbol outside {0, 1}")
        flat_parity = k_parity.reshape(-1)
        k = model.k_min + flat_parity + 2 * symbols
        escaped_at = np.flatnonzero(symbols == model.num_symbols // 2)
        _check_escape_count(escaped_at.size, escapes.size)
        if escapes.size:
            in_range = (escapes >= model.k_min) & (escapes < model.k_min + model.num_symbols)
            if (
                np.any(np.abs(escapes) > MAX_ESCAPE_MAGNITUDE)
                or np.any(in_range)
                or np.any((escapes & 1) != flat_parity[escaped_at])
            ):
                raise PayloadError(_BAD_ESCAPE)
            k[escaped_at] = escapes
        return k.reshape(n, blocks), coset, geometry

    def _decode_compiled(self, compiled, states, stream, escapes, uniforms, cache):
        """:meth:`_decode` and the unit values by the compiled kernel (the same points,
        values and refusals, in the same order) from the shared :meth:`_uniforms`.

        The arrays live in the aggregator's ``cache`` and are overwritten by its next
        payload: the unit values are copied by :meth:`invert` before that.
        """
        model, n = self.model, self.model.block
        coder = self._models()
        decoder = StreamDecoder(coder.rans, states, stream)
        work = cache.get(_WORKSPACE)
        if work is None or work.unit.size != uniforms.size:
            work = _DecodeWorkspace(n, uniforms.size // n)
            if uniforms.size <= _WORKSPACE_MAX_VALUES:
                cache[_WORKSPACE] = work
        k, coset, unit = work.k, work.coset, work.unit
        coset.fill(0)
        position, status, found, coset_over, bad_escape = compiled.lattice_decode(
            uniforms,
            model.spec.cosets,
            model.scale,
            model.bins,
            model.class_mass.reshape(-1),
            model.k_min,
            model.num_symbols,
            coder.first_binary,
            BINARY_LEVELS,
            decoder.states,
            decoder.words,
            coder.rans.freq,
            coder.rans.cum,
            coder.rans.bucket_symbol,
            escapes,
            MAX_ESCAPE_MAGNITUDE,
            k,
            coset,
            unit,
            *work.scratch,
        )
        if status == TRUNCATED:
            raise PayloadError(FAILURES[TRUNCATED])
        if status != OK:
            raise PayloadError(_BAD_PARITY)
        decoder.position = position
        decoder.finish()
        if coset_over:
            raise PayloadError("coded stream has a coset symbol outside {0, 1}")
        _check_escape_count(found, escapes.size)
        if bad_escape:
            raise PayloadError(_BAD_ESCAPE)
        return k, coset, unit

    def invert(self, y, side, state, dim):
        norms, unit = side
        layout = RotationLayout.for_dim(state.dim)  # the input vector's layout
        chunks = unit.reshape(layout.num_chunks, layout.chunk_size)
        return (chunks * (norms / math.sqrt(layout.chunk_size))[:, None]).reshape(-1)

    def contribution(self, y, side, state, dim, weight):
        # Stage.contribution's values and bound, without its |x| temporary and its copy
        # (the decoded vector is this call's own)
        decoded = self.invert(y, side, state, dim)
        check_contribution_bound(max(float(decoded.max()), -float(decoded.min())))
        np.multiply(decoded, weight, out=decoded)
        return decoded

    def output_dim(self, dim):
        return dim

    def __repr__(self):
        return f"DitheredLatticeStage({self.model!r})"


class _LatticeCompressor(PipelineCompressor):
    """Shared rotation + dithered lattice code; ``bits`` picks the shipped code model."""

    lattice = "e8"
    properties = CompressorProperties(
        unbiased=True,
        sums_before_decoding=True,
        shared_randomness=("round", "client"),
        fixed_rate=False,
    )

    def __init__(self, bits=2, model=None):
        self.bits = bits
        self.model = model
        self._lattice_pipeline = None
        self._loaded_model = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lattice_pipeline"] = None
        state["_loaded_model"] = None  # reloaded (checksummed) where it is unpickled
        return state

    def resolved_model(self):
        """The code model in use: ``model`` if given, else the shipped one for ``bits``."""
        bits = check_int(self.bits, "bits", 1, 4)
        if self.model is not None:
            if getattr(self.model, "lattice", None) != self.lattice:
                raise ParameterError(f"{self.name} needs a {self.lattice} LatticeCodeModel")
            return self.model
        if self._loaded_model is None:
            self._loaded_model = load_lattice_model(self.lattice, bits)
        return self._loaded_model

    def _config(self):
        model = self.resolved_model()
        return (
            self.bits,
            model.lattice,
            float.hex(model.scale),
            model.fingerprint,
            f"body{BODY_VERSION}",
        )

    @property
    def stages(self):
        model = self.resolved_model()
        if self._lattice_pipeline is None or self._lattice_pipeline.stages[1].model is not model:
            self._lattice_pipeline = Pipeline([RandomizedHadamard(), DitheredLatticeStage(model)])
        return self._lattice_pipeline

    @property
    def expected_vnmse(self) -> float:
        """The exact vNMSE on unit-RMS rotated chunks: ``G det^(2/n) s^2``."""
        return self.resolved_model().vnmse


class LatticeE8(_LatticeCompressor):
    """Dithered E8 lattice, entropy coded (nearest point by two D8 roundings).

    Parameters
    ----------
    bits : int
        1..4: the shipped code model designed for about that many wire bits per coordinate.
    model : quicdesign.lattice.LatticeCodeModel, optional
        Use this (E8) code model instead.
    """

    name = "lattice-e8"
    magic = b"QDL8"
    lattice = "e8"


class LatticeD4(_LatticeCompressor):
    """Dithered D4 lattice, entropy coded (the same code with one D4 rounding per block).

    Parameters
    ----------
    bits : int
        1..4: the shipped code model designed for about that many wire bits per coordinate.
    model : quicdesign.lattice.LatticeCodeModel, optional
        Use this (D4) code model instead.
    """

    name = "lattice-d4"
    magic = b"QDL4"
    lattice = "d4"
