"""Interleaved rANS under a per-symbol categorical model (the QDQE v4 and v5 body coder).

Format (``docs/wire-format.md``, "QDQE version 4"): :data:`LANES` coder states of 32 bits,
16-bit renormalization, probabilities quantized to ``2**PROB_BITS``. Symbol ``i`` (in
coding order) is coded by state ``i % LANES`` with model ``model_of[i]``; the encoder runs
backwards over the symbols and the words it emits, reversed, are read by the decoder in
order (within a row of lanes, in lane order). A valid stream is used up exactly and
leaves every state at its start value. The *wide* format of QDQE version 5 is the same
coder with :func:`wide_lanes` lanes (16 to :data:`WIDE_LANES`, by the symbol count) and
``2**WIDE_PROB_BITS`` slots: a row's lanes decode as vectors of 16, and a slot's
symbol, frequency and offset fit one 32-bit table entry (``RansModel.wide_entries``).

This module is the numpy reference, vectorized across the lanes (one row of lanes per
step); the compiled kernels (``quicdesign._kernels``) produce the same words and
symbols (``tests/test_rans.py``) and are chosen when available.
"""

from __future__ import annotations

import numpy as np

from ._kernels import compiled_kernels
from .errors import PayloadError, TableError

__all__ = [
    "LANES",
    "PROB_BITS",
    "WIDE_LANES",
    "WIDE_PROB_BITS",
    "wide_lanes",
    "RansModel",
    "StreamDecoder",
    "encode",
    "decode",
    "stream_check",
]

#: Interleaved coder states.
LANES = 8
#: Probabilities are integers summing to ``2**PROB_BITS`` (0.05-0.1 % above the entropy
#: for the shipped tables; every symbol keeps at least one slot).
PROB_BITS = 14
#: Smallest normalized state; states live in ``[STATE_LOW, 2**32)``.
STATE_LOW = 1 << 16
#: The wide format (QDQE v5): most lanes, and probability bits (0.14-0.31 % above the
#: entropy for the shipped tables, 0.11-0.24 % more than :data:`PROB_BITS`).
WIDE_LANES = 64
WIDE_PROB_BITS = 12
_WIDE_GROUP = 16  # the compiled decoder's vector width
_SYMBOLS_PER_GROUP = 1 << 18  # each state costs ~17 bits: <= 0.001 bits per symbol
_WORD_BITS = 16
#: Most symbols per stream (the wire's u32 count; the rotated dimension is far below).
MAX_SYMBOLS = 2**32 - 1
_OUTSIDE_WIDTH = "a symbol is outside its row's width"
# decoder statuses shared with the compiled kernel
OK, TRUNCATED, LEFT_OVER, BAD_FINAL_STATE = 0, 1, 2, 3
FAILURES = {
    TRUNCATED: "coded stream ends before the last symbol",
    LEFT_OVER: "coded stream has words left after the last symbol",
    BAD_FINAL_STATE: "coded stream does not end in the coder's start state",
}


def quantize_frequencies(probabilities, prob_bits=PROB_BITS) -> np.ndarray:
    """Integer frequencies summing to ``2**prob_bits`` with every symbol at least 1.

    Each row ``p`` (normalized to sum 1) gets ``1 + floor(p * (T - K))`` slots, ``T =
    2**prob_bits``; the slots left over go one each to the largest fractional parts
    (ties to the lower symbol). Pure IEEE arithmetic and a stable sort: the same on every
    machine, so encoder and decoder derive the same model from the table.

    Raises
    ------
    TableError
        If a row is not finite and non-negative with a positive sum, or has more than
        ``T / 2`` symbols.
    """
    p = np.array(probabilities, dtype=np.float64, ndmin=2)
    if p.ndim != 2 or p.shape[1] < 1:
        raise TableError(f"code model must be a (shared values, messages) array, got {p.shape}")
    total, symbols = 1 << prob_bits, p.shape[1]
    if symbols > total // 2:
        raise TableError(f"{symbols} messages exceed the coder's {total // 2}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p.sum(axis=1) <= 0):
        raise TableError("code model rows must be finite, non-negative and not all zero")
    p = p / p.sum(axis=1, keepdims=True)
    scaled = p * (total - symbols)
    whole = np.floor(scaled)
    freq = 1 + whole.astype(np.int64)
    left = total - freq.sum(axis=1)
    if np.any(left < 0) or np.any(left >= symbols):  # pragma: no cover - arithmetic bound
        raise TableError("code model could not be quantized")
    order = np.argsort(-(scaled - whole), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(symbols)[None, :], axis=1)
    freq += rank < left[:, None]
    return freq.astype(np.uint32)


class RansModel:
    """Quantized models for every shared value: frequencies, cumulative starts, lookups.

    Parameters
    ----------
    probabilities : array_like, shape (H, K)
        The table's code model ``P(x | h)``.
    widths : array_like of int, shape (H,), optional
        Row ``h`` codes only symbols ``0 .. widths[h] - 1`` (quantized on their own);
        the others get frequency 0 and cannot be encoded (a decoder never yields them).
        Default: every row is ``K`` wide.
    prob_bits : int
        Probabilities are quantized to ``2**prob_bits`` (:data:`PROB_BITS`, or
        :data:`WIDE_PROB_BITS` for the wide format).
    """

    def __init__(self, probabilities, widths=None, prob_bits=PROB_BITS):
        p = np.array(probabilities, dtype=np.float64, ndmin=2)
        if prob_bits not in (PROB_BITS, WIDE_PROB_BITS):
            raise TableError(f"probabilities are quantized to {PROB_BITS} or {WIDE_PROB_BITS} bits")
        self.prob_bits = prob_bits
        if widths is None:
            self.freq = quantize_frequencies(p, prob_bits)
            self.narrow = False
        else:
            widths = np.asarray(widths, dtype=np.int64)
            if p.ndim != 2 or widths.shape != (p.shape[0],) or np.any(widths < 1):
                raise TableError("widths must give every row of the model at least one symbol")
            if np.any(widths > p.shape[1]):
                raise TableError("a row's width exceeds the model's symbols")
            self.freq = np.zeros(p.shape, dtype=np.uint32)
            for width in np.unique(widths):
                rows = widths == width
                self.freq[rows, :width] = quantize_frequencies(p[rows, :width], prob_bits)
            self.narrow = bool(np.any(widths < p.shape[1]))
        self.num_models, self.num_symbols = self.freq.shape
        self.cum = np.zeros((self.num_models, self.num_symbols + 1), dtype=np.uint32)
        np.cumsum(self.freq, axis=1, out=self.cum[:, 1:])
        check_frequencies(self.freq, self.cum, allow_empty=self.narrow, prob_bits=prob_bits)
        # slot -> symbol (numpy reference) and 2**_BUCKET_BITS-wide starting points
        # for the compiled decoder's short forward scan
        slots = np.arange(1 << prob_bits)
        self.slot_symbol = np.empty((self.num_models, slots.size), dtype=np.uint8)
        for h in range(self.num_models):
            self.slot_symbol[h] = np.searchsorted(self.cum[h, 1:], slots, side="right")
        self.bucket_symbol = np.ascontiguousarray(self.slot_symbol[:, :: 1 << _BUCKET_SHIFT])
        for table in (self.freq, self.cum, self.slot_symbol, self.bucket_symbol):
            table.flags.writeable = False  # shared by every coder of the table
        self._wide_entries = None

    @property
    def wide_entries(self) -> np.ndarray:
        """The compiled wide decoder's table (:data:`WIDE_PROB_BITS` models of at least
        two symbols): ``entries[h << 12 | slot] = s | f[s] << 8 | (slot - c[s]) << 20``,
        ``s`` the slot's symbol; every field fits (``f < 2**12`` with two symbols)."""
        if self._wide_entries is None:
            if self.prob_bits != WIDE_PROB_BITS or not _has_wide_entries(self):
                raise TableError(
                    "wide entries need a 12-bit model of at most 256 rows, each of at "
                    "least two symbols"
                )
            s = self.slot_symbol.astype(np.intp)
            rows = np.arange(self.num_models)[:, None]
            offset = np.arange(1 << WIDE_PROB_BITS) - self.cum[rows, s]
            entries = s | (self.freq[rows, s].astype(np.int64) << 8) | (offset << 20)
            self._wide_entries = entries.astype(np.uint32).reshape(-1)
            self._wide_entries.flags.writeable = False
        return self._wide_entries


_BUCKET_SHIFT = 4


def check_frequencies(freq, cum, allow_empty=False, prob_bits=PROB_BITS) -> None:
    """Refuse frequency tables that are not a valid rANS model (every row sums to
    ``2**prob_bits``, every symbol at least 1 (0 too if ``allow_empty``), ``cum`` their
    running sums from 0)."""
    freq = np.asarray(freq)
    cum = np.asarray(cum)
    if freq.ndim != 2 or cum.shape != (freq.shape[0], freq.shape[1] + 1):
        raise TableError("frequency and cumulative tables have inconsistent shapes")
    if freq.shape[1] > 256:
        raise TableError("at most 256 symbols per model")
    if (
        np.any(freq < (0 if allow_empty else 1))
        or np.any(cum[:, 0] != 0)
        or np.any(cum[:, -1] != 1 << prob_bits)
    ):
        raise TableError(f"frequencies must be >= 1 and sum to 2**{prob_bits} in every row")
    if np.any(np.diff(cum.astype(np.int64), axis=1) != freq):
        raise TableError("cumulative table is not the running sum of the frequencies")


def _check_symbols(model: RansModel, symbols, model_of):
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8)
    model_of = _check_model_of(model, model_of)
    if symbols.shape != model_of.shape:
        raise ValueError("symbols and model_of must be 1-d arrays of one length")
    if symbols.size and int(symbols.max()) >= model.num_symbols:
        raise ValueError("a symbol is outside the model")
    return symbols, model_of


def _check_model_of(model: RansModel, model_of):
    """The per-symbol model indices as a 1-d integer array inside the model (kept in its
    narrow dtype: the compiled loops read it once per symbol)."""
    model_of = np.ascontiguousarray(model_of)
    if model_of.ndim != 1 or model_of.dtype.kind not in "iu":
        raise ValueError("model_of must be a 1-d integer array")
    if model_of.size > MAX_SYMBOLS:
        raise ValueError(f"at most {MAX_SYMBOLS} symbols per stream")
    if model_of.size and (int(model_of.min()) < 0 or int(model_of.max()) >= model.num_models):
        raise ValueError("a model index is outside the model")
    return model_of


def wide_lanes(count: int) -> int:
    """Lanes of the wide format for ``count`` symbols: 16 per ``2**18`` symbols (rounded
    to nearest), 16 to :data:`WIDE_LANES` (more lanes decode faster, each costs its
    state's ~17 bits)."""
    groups = (count + _SYMBOLS_PER_GROUP // 2) // _SYMBOLS_PER_GROUP
    groups = min(max(groups, 1), WIDE_LANES // _WIDE_GROUP)
    return _WIDE_GROUP * groups


def _check_lanes(model: RansModel, lanes: int) -> int:
    """The two formats: :data:`LANES` lanes with a :data:`PROB_BITS` model (v4), a
    multiple of 16 up to :data:`WIDE_LANES` with a :data:`WIDE_PROB_BITS` one (v5)."""
    wide = lanes in range(_WIDE_GROUP, WIDE_LANES + 1, _WIDE_GROUP)
    if (lanes, model.prob_bits) != (LANES, PROB_BITS) and not (
        wide and model.prob_bits == WIDE_PROB_BITS
    ):
        raise ValueError(f"no rANS format has {lanes} lanes and 2**{model.prob_bits} slots")
    return lanes


def encode(model: RansModel, symbols, model_of, *, kernels="auto", lanes=LANES):
    """Code ``symbols[i]`` under model row ``model_of[i]``.

    Parameters
    ----------
    kernels : "auto" or None
        ``"auto"`` uses the compiled kernel when available; None forces the numpy code.
    lanes : int
        Coder states: :data:`LANES` (QDQE v4) or :func:`wide_lanes` of the symbol count
        (v5, with a :data:`WIDE_PROB_BITS` model).

    Returns
    -------
    states : ndarray of uint32, shape (lanes,)
        The final coder states (the decoder's initial ones).
    words : ndarray of uint16
        The stream words in decoding order.
    """
    symbols, model_of = _check_symbols(model, symbols, model_of)
    lanes = _check_lanes(model, lanes)
    compiled = compiled_kernels() if kernels == "auto" else None
    if compiled is not None:
        states, words = compiled.rans_lanes_encode(
            symbols, model_of, model.freq, model.cum, lanes, model.prob_bits
        )
        if states[0] == 0:  # the kernel's mark of an empty symbol (states are >= 2**16)
            raise ValueError(_OUTSIDE_WIDTH)
        return states, words
    return _encode_numpy(model, symbols, model_of, lanes)


def _encode_numpy(model, symbols, model_of, lanes=LANES):
    count = symbols.size
    freq = model.freq[model_of, symbols].astype(np.uint64)
    if np.any(freq == 0):  # only narrow rows have empty symbols; the kernel checks too
        raise ValueError(_OUTSIDE_WIDTH)
    start = model.cum[model_of, symbols].astype(np.uint64)
    limit = freq << np.uint64(32 - model.prob_bits)
    states = np.full(lanes, STATE_LOW, dtype=np.uint64)
    emitted = []
    for row_start in range(((count - 1) // lanes) * lanes, -1, -lanes):
        width = min(lanes, count - row_start)
        rows = slice(row_start, row_start + width)
        x = states[:width]
        need = x >= limit[rows]
        if need.any():
            # lanes run backwards within a row, so their words are pushed high lane first
            emitted.append((x[need] & np.uint64(0xFFFF))[::-1])
            x[need] >>= np.uint64(_WORD_BITS)
        f = freq[rows]
        x[:] = ((x // f) << np.uint64(model.prob_bits)) + (x % f) + start[rows]
    pushed = np.concatenate(emitted) if emitted else np.zeros(0, np.uint64)
    return states.astype(np.uint32), pushed[::-1].astype(np.uint16)


def decode(model: RansModel, states, words, model_of, *, kernels="auto", lanes=LANES):
    """Decode ``model_of.size`` symbols; PayloadError unless the stream is exactly theirs.

    The stream must hold exactly the words the symbols consume and leave every state at
    :data:`STATE_LOW` (where the encoder started). ``lanes`` as in :func:`encode`.
    """
    model_of = _check_model_of(model, model_of)
    lanes = _check_lanes(model, lanes)
    compiled = compiled_kernels() if kernels == "auto" else None
    if compiled is not None and model.prob_bits == WIDE_PROB_BITS and _has_wide_entries(model):
        return decode_wide_skipping(
            compiled, model, states, words, model_of, _NOTHING_SKIPPED, lanes
        )
    decoder = StreamDecoder(model, states, words, kernels=kernels, lanes=lanes)
    symbols = decoder.take(model_of)
    decoder.finish()
    return symbols


_NOTHING_SKIPPED = np.zeros(0, dtype=np.intp)


def decode_wide_skipping(
    compiled, model, states, words, model_of, skipped, lanes, model_mask=0xFF, out=None
) -> np.ndarray:
    """The compiled wide decoder: one symbol per entry of ``model_of`` (uint8 model
    indices, validated once masked with ``model_mask``), 0 at the ``skipped`` positions
    (validated: increasing, in range), which code nothing; PayloadError unless the
    stream of ``lanes`` states is exactly theirs. ``out``: a writable contiguous uint8
    array of ``model_of.size`` for the symbols (returned), else a new one."""
    states = _check_states(states, lanes)
    words = np.ascontiguousarray(words, dtype=np.uint16)
    model_of = model_of.astype(np.uint8, copy=False)
    if out is None:
        out = np.empty(model_of.size, dtype=np.uint8)
    elif not (
        out.dtype == np.uint8
        and out.shape == model_of.shape
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError("out must be a writable contiguous uint8 array, one entry per symbol")
    symbols, end_states, position, status = compiled.rans_wide_decode(
        states, words, model_of, model_mask, model.wide_entries, skipped, out
    )
    if status != OK:
        raise PayloadError(FAILURES[status])
    _check_end(position, words.size, end_states)
    return symbols


_CHECK_STEP = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: position i adds (i + 1) times it
_MIX_MULTIPLIERS = (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)  # MurmurHash3's 64-bit finalizer
_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """MurmurHash3's ``fmix64`` on uint64 values, in place (a bijection of 64 bits)."""
    for multiplier in _MIX_MULTIPLIERS:
        z ^= z >> np.uint64(33)
        z *= np.uint64(multiplier)
    z ^= z >> np.uint64(33)
    return z


def _check_sum_numpy(values: np.ndarray, first: int) -> int:
    """``sum(fmix64(values[i] + (first + i + 1) * step)) mod 2**64`` (numpy reference)."""
    position = np.arange(first + 1, first + 1 + values.size, dtype=np.uint64)
    z = values.astype(np.uint64) + position * np.uint64(_CHECK_STEP)
    return int(_mix64(z).sum(dtype=np.uint64))


def stream_check(states, words, *, kernels="auto") -> bytes:
    """The QDQE version 5 stream check (``docs/wire-format.md``): 8 bytes over the
    coded stream as sent (states, then words, little-endian).

    The stream's bytes, zero-padded to a multiple of 8, are read as little-endian u64
    values ``v_i``; ``S = sum_i fmix64(v_i + (i + 1) * 0x9E3779B97F4A7C15) mod 2**64``
    and the check is ``fmix64(S xor n)``, ``n`` the stream's byte count, written as a
    little-endian u64. ``fmix64`` is a bijection, so a change confined to one aligned
    8-byte value always changes the check; other damage passes with a chance of about
    ``2**-64``. Integrity against accidents, not authenticity (it has no key).
    """
    states = np.ascontiguousarray(states, dtype="<u4").view(np.uint8)
    words = np.ascontiguousarray(words, dtype="<u2").view(np.uint8)
    # no copy of the stream when the states fill whole 8-byte values (even lanes)
    pieces = [states, words] if states.size % 8 == 0 else [np.concatenate([states, words])]
    parts = []
    for piece in pieces:
        whole = piece.size - piece.size % 8
        parts.append(piece[:whole].view("<u8"))
        if whole < piece.size:  # only the last piece: zero-padded to 8 bytes
            parts.append(np.concatenate([piece[whole:], np.zeros(8, np.uint8)])[:8].view("<u8"))
    compiled = compiled_kernels() if kernels == "auto" else None
    total, first = 0, 0
    for values in parts:
        if compiled is not None:
            total += int(compiled.rans_check_sum(values, first))
        else:
            total += _check_sum_numpy(values, first)
        first += values.size
    n = states.size + words.size
    check = _mix64(np.array([(total & _MASK64) ^ n], dtype=np.uint64))
    return check.astype("<u8").tobytes()


def has_wide_entries(model: RansModel) -> bool:
    """True if the compiled wide decoder serves ``model`` (12-bit, 2..256 symbols, at most
    256 rows, no narrow rows)."""
    return model.prob_bits == WIDE_PROB_BITS and _has_wide_entries(model)


def _has_wide_entries(model: RansModel) -> bool:
    return not model.narrow and model.num_symbols >= 2 and model.num_models <= 256


def _check_states(states, lanes):
    states = np.ascontiguousarray(states, dtype=np.uint32)
    if states.shape != (lanes,):
        raise PayloadError(f"coded stream needs {lanes} coder states")
    if np.any(states < STATE_LOW):
        raise PayloadError("coded stream starts from a state below the coder's range")
    return states


def _check_end(position, available, states) -> None:
    """PayloadError unless every word was read and the states are back at the start."""
    if position != available:
        raise PayloadError(FAILURES[LEFT_OVER])
    if np.any(states != STATE_LOW):
        raise PayloadError(FAILURES[BAD_FINAL_STATE])


class StreamDecoder:
    """Decode one stream in parts whose models depend on the symbols already decoded.

    The words and states are those of one :func:`encode` call over all parts in order;
    :meth:`take` decodes the next ``model_of.size`` symbols (symbol ``i`` of the stream
    still uses lane ``i % lanes``) and :meth:`finish` refuses a stream that is not used
    up or does not end in the start states (so the checks equal :func:`decode`'s). The
    compiled kernel serves the :data:`LANES` format; other formats decode with numpy.
    """

    def __init__(self, model: RansModel, states, words, *, kernels="auto", lanes=LANES):
        self.lanes = _check_lanes(model, lanes)
        states = _check_states(states, self.lanes)
        self.model = model
        self.words = np.ascontiguousarray(words, dtype=np.uint16)
        self.states = states.astype(np.uint64)
        self.position = 0
        self.decoded = 0
        compiled = compiled_kernels() if kernels == "auto" else None
        v4 = (self.lanes, model.prob_bits) == (LANES, PROB_BITS)
        self._compiled = compiled if v4 else None

    def take(self, model_of) -> np.ndarray:
        """The next ``model_of.size`` symbols (PayloadError if the stream runs out)."""
        model_of = _check_model_of(self.model, model_of)
        model = self.model
        if self._compiled is not None:
            symbols, self.position, status = self._compiled.rans_decode_part(
                self.states,
                self.words,
                self.position,
                self.decoded,
                model_of,
                model.freq,
                model.cum,
                model.bucket_symbol,
            )
        else:
            symbols, status = _decode_part_numpy(self, model_of)
        if status != OK:
            raise PayloadError(FAILURES[status])
        self.decoded += model_of.size
        return symbols

    def finish(self) -> None:
        """PayloadError unless every word was read and the states are back at the start."""
        _check_end(self.position, self.words.size, self.states)


def _decode_part_numpy(decoder, model_of):
    """The numpy decoder: symbols from ``decoder.decoded`` on, vectorized across the lanes
    (rows stay aligned to them, so the first and last rows may be partial)."""
    model, x, words, lanes = decoder.model, decoder.states, decoder.words, decoder.lanes
    count, first = model_of.size, decoder.decoded
    symbols = np.empty(count, dtype=np.uint8)
    bits = np.uint64(model.prob_bits)
    mask = np.uint64((1 << model.prob_bits) - 1)
    begin = 0
    while begin < count:
        lane0 = (first + begin) % lanes
        width = min(lanes - lane0, count - begin)
        h = model_of[begin : begin + width]
        lanes_now = x[lane0 : lane0 + width]
        slot = lanes_now & mask
        s = model.slot_symbol[h, slot]
        symbols[begin : begin + width] = s
        lanes_now[:] = model.freq[h, s] * (lanes_now >> bits) + slot - model.cum[h, s]
        need = np.flatnonzero(lanes_now < STATE_LOW)
        if need.size:
            position = decoder.position
            if position + need.size > words.size:
                return symbols, TRUNCATED
            lanes_now[need] = (lanes_now[need] << np.uint64(_WORD_BITS)) | words[
                position : position + need.size
            ].astype(np.uint64)
            decoder.position = position + need.size
        begin += width
    return symbols, OK
