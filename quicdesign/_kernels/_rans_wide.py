"""numba kernels of the wide rANS coder (the QDQE v5 body, ``quicdesign._rans``).

The decoder runs the lanes of a row as vectors of 16 (``llvm.masked.gather`` for the
slot lookup, ``llvm.masked.expandload`` for the renormalization words read in lane
order): numba's loop vectorizer emits no gathers, so that step is written as LLVM IR.
LLVM lowers both intrinsics to plain loads where the CPU has no vector form, so the
kernel gives the same symbols everywhere (``tests/test_rans.py``), only slower.
"""

from __future__ import annotations

import types as pytypes
import warnings

import llvmlite
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import ParameterError

__all__ = ["rans_check_sum", "rans_lanes_encode", "rans_slot_lookups", "rans_wide_decode"]

# quicdesign._rans wide format constants (checked equal by tests/test_rans.py)
_WIDE_LANES = 64  # most lanes (a row reads at most one word per lane)
_WIDE_PROB_BITS = 12
_STATE_LOW = 1 << 16
_GROUP = 16  # lanes per vector
_OK, _TRUNCATED = 0, 1
_CHECK_STEP = 0x9E3779B97F4A7C15  # the stream check's constants (_rans.stream_check)
_MIX_MULTIPLIERS = (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)

_I1, _I8, _I16, _I32, _I64 = (ir.IntType(bits) for bits in (1, 8, 16, 32, 64))
# the gather is named by its pointer type: opaque pointers (llvmlite >= 0.45 always,
# 0.44 when enabled) are "p0", typed ones "p0i32"
_OPAQUE = getattr(
    llvmlite, "opaque_pointers_enabled", hasattr(llvmlite, "ir_layer_typed_pointers_enabled")
)
_GATHER = "llvm.masked.gather.v16i32.v16p0" + ("" if _OPAQUE else "i32")


def _vector(kind, value=None):
    return ir.Constant(ir.VectorType(kind, _GROUP), value)


def _splat(kind, value):
    return _vector(kind, [value] * _GROUP)


def _broadcast(builder, value, kind):
    """A run-time scalar of type ``kind`` in every lane."""
    first = builder.insert_element(_vector(kind), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, _vector(kind), _splat(_I32, 0))


def _element_pointer(builder, context, array_type, array, offset, kind):
    """``&array[offset]`` as a pointer to a vector of ``_GROUP`` elements of ``kind``."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(kind, _GROUP).as_pointer())


def _vector_element_pointers(builder, base, index):
    """``getelementptr inbounds i32, ptr base, <16 x i32> index``: a vector of pointers
    (only this form lets LLVM emit one 32-bit-index gather). llvmlite's ``gep`` writes
    it when given the element type; it types the result as a scalar pointer, so the
    result is retyped (the IR text has no result type)."""
    pointers = builder.gep(base, [index], inbounds=True, source_etype=_I32)
    pointers.type = ir.VectorType(base.type, _GROUP)
    return pointers


def _intrinsic(builder, name, result, *arguments):
    function_type = ir.FunctionType(result, list(arguments))
    return cgutils.get_or_insert_function(builder.module, function_type, name)


def _group_codegen(context, builder, signature, args):
    """LLVM IR of :func:`_decode_group` (one group of 16 lanes, the scalar kernel's
    arithmetic in 32-bit lanes: states stay below 2**32, ``f * (x >> 12)`` too)."""
    states_t, _, model_of_t, _, _, symbols_t, entries_t, words_t, _ = signature.args
    states, lane, model_of, start, model_mask, symbols, entries, words, position = args
    lanes32 = ir.VectorType(_I32, _GROUP)
    lanes16 = ir.VectorType(_I16, _GROUP)
    need_type = ir.VectorType(_I1, _GROUP)
    entry_pointers = ir.VectorType(_I32.as_pointer(), _GROUP)
    gather = _intrinsic(builder, _GATHER, lanes32, entry_pointers, _I32, need_type, lanes32)
    expand = _intrinsic(
        builder, "llvm.masked.expandload.v16i16", lanes16, _I16.as_pointer(), need_type, lanes16
    )
    popcount = _intrinsic(builder, "llvm.ctpop.i32", _I32, _I32)
    table = context.make_array(entries_t)(context, builder, entries).data
    words_data = context.make_array(words_t)(context, builder, words).data

    state_pointer = _element_pointer(builder, context, states_t, states, lane, _I32)
    x = builder.load(state_pointer, align=4)
    model_pointer = _element_pointer(builder, context, model_of_t, model_of, start, _I8)
    models = builder.and_(
        builder.zext(builder.load(model_pointer, align=1), lanes32),
        _broadcast(builder, builder.trunc(model_mask, _I32), _I32),
    )
    # entry = table[h << 12 | slot]: symbol | freq << 8 | (slot - cum) << 20
    slot = builder.and_(x, _splat(_I32, (1 << _WIDE_PROB_BITS) - 1))
    index = builder.or_(builder.shl(models, _splat(_I32, _WIDE_PROB_BITS)), slot)
    pointers = _vector_element_pointers(builder, table, index)
    entry = builder.call(gather, [pointers, ir.Constant(_I32, 4), _splat(_I1, 1), _vector(_I32)])
    symbol_pointer = _element_pointer(builder, context, symbols_t, symbols, start, _I8)
    builder.store(builder.trunc(entry, ir.VectorType(_I8, _GROUP)), symbol_pointer, align=1)
    frequency = builder.and_(builder.lshr(entry, _splat(_I32, 8)), _splat(_I32, 0xFFF))
    x = builder.add(
        builder.mul(frequency, builder.lshr(x, _splat(_I32, _WIDE_PROB_BITS))),
        builder.lshr(entry, _splat(_I32, 20)),
    )
    # lanes below the range take the next words in lane order
    need = builder.icmp_unsigned("<", x, _splat(_I32, _STATE_LOW))
    read = builder.call(expand, [builder.gep(words_data, [position]), need, _vector(_I16)])
    refilled = builder.or_(builder.shl(x, _splat(_I32, 16)), builder.zext(read, lanes32))
    builder.store(builder.select(need, refilled, x), state_pointer, align=4)
    taken = builder.call(popcount, [builder.zext(builder.bitcast(need, _I16), _I32)])
    return builder.add(position, builder.zext(taken, _I64))


@intrinsic
def _decode_group(
    typingctx, states, lane, model_of, start, model_mask, symbols, entries, words, position
):
    """Decode symbols ``start .. start + 15`` with lanes ``lane .. lane + 15`` (symbol
    ``start + j`` on lane ``lane + j``, model ``model_of[start + j] & model_mask``), then
    renormalize those lanes in order from ``words[position:]``; the new position.

    The caller guarantees the bounds: ``lane + 16 <= states.size``, ``start + 16 <=
    model_of.size == symbols.size``, every masked model below ``entries.size >> 12``,
    ``position + 16 <= words.size``.
    """
    arrays = {
        "states": (states, types.uint32),
        "model_of": (model_of, types.uint8),
        "symbols": (symbols, types.uint8),
        "entries": (entries, types.uint32),
        "words": (words, types.uint16),
    }
    for array, dtype in arrays.values():
        if not (isinstance(array, types.Array) and array.dtype == dtype and array.layout == "C"):
            return None
    signature = types.intp(
        states, types.intp, model_of, types.intp, types.intp, symbols, entries, words, types.intp
    )
    return signature, _group_codegen


@intrinsic
def _gather_group(typingctx, entries, index, start, out):
    """``out[start : start + 16] = entries[index[start : start + 16]]`` with the vector
    gather :func:`_decode_group` looks up its slots with (the caller keeps ``start + 16 <=
    index.size == out.size`` and every index below ``entries.size``)."""
    for array in (entries, index, out):
        if not (isinstance(array, types.Array) and array.dtype == types.uint32):
            return None
    if entries.layout != "C" or index.layout != "C" or out.layout != "C":
        return None

    def codegen(context, builder, signature, args):
        entries_t, index_t, _, out_t = signature.args
        table, indices, first, result = args
        lanes32 = ir.VectorType(_I32, _GROUP)
        need_type = ir.VectorType(_I1, _GROUP)
        entry_pointers = ir.VectorType(_I32.as_pointer(), _GROUP)
        gather = _intrinsic(builder, _GATHER, lanes32, entry_pointers, _I32, need_type, lanes32)
        base = context.make_array(entries_t)(context, builder, table).data
        index_pointer = _element_pointer(builder, context, index_t, indices, first, _I32)
        pointers = _vector_element_pointers(builder, base, builder.load(index_pointer, align=4))
        entry = builder.call(
            gather, [pointers, ir.Constant(_I32, 4), _splat(_I1, 1), _vector(_I32)]
        )
        out_pointer = _element_pointer(builder, context, out_t, result, first, _I32)
        builder.store(entry, out_pointer, align=4)
        return context.get_dummy_value()

    return types.void(entries, index, types.intp, out), codegen


def rans_slot_lookups(entries, index, out):
    """``out[:] = entries[index]`` with the wide decoder's vector gather, 16 at a time:
    a decode's slot-table lookups alone (``quicdesign bench runtime`` times
    :func:`_slot_lookups`, the unchecked loop, as a limit). Refused unless the
    three arrays are contiguous uint32, ``index`` and ``out`` one size, every index below
    ``entries.size`` (``ParameterError``)."""
    arrays = (entries, index, out)
    if not all(
        isinstance(a, np.ndarray) and a.dtype == np.uint32 and a.ndim == 1 and a.flags.c_contiguous
        for a in arrays
    ):
        raise ParameterError("slot lookups take contiguous one-dimensional uint32 arrays")
    if index.size != out.size or (index.size and int(index.max()) >= entries.size):
        raise ParameterError("an index lies outside the slot table or the output")
    _slot_lookups(entries, index, out)
    return out


@numba.njit(cache=True, nogil=True)
def _slot_lookups(entries, index, out):  # pragma: no cover - compiled
    """:func:`rans_slot_lookups` without its checks."""
    whole = index.size - index.size % _GROUP
    for start in range(0, whole, _GROUP):
        _gather_group(entries, index, start, out)
    for i in range(whole, index.size):
        out[i] = entries[index[i]]


@numba.njit(cache=True, nogil=True, inline="always")
def _scalar_step(x, lane, h, entries, words, position):  # pragma: no cover - compiled
    """One symbol of one lane with the vector step's arithmetic: ``(symbol, position)``
    (past the end a word reads as 0; the caller refuses ``position > words.size``)."""
    state = np.uint64(x[lane])
    low = np.uint64((1 << _WIDE_PROB_BITS) - 1)
    entry = np.uint64(entries[(np.intp(h) << _WIDE_PROB_BITS) | np.intp(state & low)])
    state = ((entry >> np.uint64(8)) & np.uint64(0xFFF)) * (state >> np.uint64(_WIDE_PROB_BITS)) + (
        entry >> np.uint64(20)
    )
    if state < np.uint64(_STATE_LOW):
        word = np.uint64(words[position]) if position < words.size else np.uint64(0)
        state = (state << np.uint64(16)) | word
        position += 1
    x[lane] = np.uint32(state)
    return np.uint8(entry & np.uint64(0xFF)), position


def rans_wide_decode(states, words, model_of, model_mask, entries, skipped, symbols):
    """``_rans._decode_numpy`` of the wide format: ``(symbols, states, position, status)``.

    Runs :func:`_vector_wide_decode`; if that kernel cannot be built (its LLVM IR on
    another llvmlite or numba, a backend that refuses it), warns once and decodes lane
    by lane from then on (:func:`_lane_by_lane_decoder`: the same arithmetic, so the
    same symbols, statuses and states, ``tests/test_rans.py`` forces it).
    """
    global _fallback
    if _fallback is None:
        try:
            return _vector_wide_decode(
                states, words, model_of, model_mask, entries, skipped, symbols
            )
        except Exception as exc:  # noqa: BLE001 - any failure to build the vector kernel
            warnings.warn(
                f"the vector rANS decoder could not be built ({type(exc).__name__}: {exc}); "
                "decoding lane by lane (same results, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
            _fallback = _lane_by_lane_decoder()
    return _fallback(states, words, model_of, model_mask, entries, skipped, symbols)


_fallback = None  # the lane-by-lane decoder once the vector one failed to build


def _lane_by_lane_decoder():
    """:func:`_vector_wide_decode` compiled with :func:`_decode_group_scalar` in place of
    the LLVM IR group (not cached on disk: it would share the vector kernel's cache
    name; it is built only where that one cannot be)."""
    function = _DECODE_LOOP
    names = dict(function.__globals__, _decode_group=_decode_group_scalar)
    clone = pytypes.FunctionType(function.__code__, names, "rans_wide_decode_lane_by_lane")
    return numba.njit(nogil=True)(clone)


@numba.njit(cache=True, nogil=True, inline="always")
def _decode_group_scalar(
    states, lane, model_of, start, model_mask, symbols, entries, words, position
):  # pragma: no cover - compiled
    """:func:`_decode_group` lane by lane: the lanes that need a word take the next ones
    in lane order, as the vector's expand load gives them (branch free: whether a lane
    needs a word is a coin flip, a branch on it would be mispredicted half the time)."""
    low = np.uint64((1 << _WIDE_PROB_BITS) - 1)
    for j in range(_GROUP):
        state = np.uint64(states[lane + j])
        h = np.intp(model_of[start + j] & model_mask)
        entry = np.uint64(entries[(h << _WIDE_PROB_BITS) | np.intp(state & low)])
        symbols[start + j] = np.uint8(entry & np.uint64(0xFF))
        state = ((entry >> np.uint64(8)) & np.uint64(0xFFF)) * (
            state >> np.uint64(_WIDE_PROB_BITS)
        ) + (entry >> np.uint64(20))
        need = np.uint64(state < np.uint64(_STATE_LOW))
        word = np.uint64(words[position]) & (np.uint64(0) - need)
        states[lane + j] = np.uint32((state << (need << np.uint64(4))) | word)
        position += np.intp(need)
    return position


@numba.njit(cache=True, nogil=True)
def _vector_wide_decode(
    states, words, model_of, model_mask, entries, skipped, symbols
):  # pragma: no cover - compiled
    """:func:`rans_wide_decode` with rows of lanes as vectors of 16.

    ``symbols`` (``model_of.size`` entries, written and returned) gets 0 at the
    ``skipped`` positions (strictly increasing, in range), the decoded symbols in order
    at the others (coded with the model ``model_of`` has there), so a caller needs no
    pass to drop or refill exact positions. ``entries[h << 12 | slot]`` is ``symbol |
    freq << 8 | (slot - cum) << 20``; the model of position ``i`` is ``model_of[i] &
    model_mask``, validated (below ``entries.size >> 12``: raw shared-randomness bytes
    need no masked copy); ``states.size`` lanes, a multiple of 16 up to 64. A row of
    lanes runs as vectors of 16 when no skipped position falls inside it and its words
    cannot run past the stream, else lane by lane with the same arithmetic.
    """
    lanes = states.size
    size = model_of.size
    count = size - skipped.size
    available = words.size
    x = states.copy()
    position = 0
    shift = 0  # skipped positions before the current one
    following = skipped[0] if skipped.size else size
    i = 0
    while i < count:
        here = i + shift
        row = min(lanes, count - i)
        if row == lanes and following >= here + lanes and position + lanes <= available:
            for lane in range(0, lanes, _GROUP):
                position = _decode_group(
                    x, lane, model_of, here + lane, model_mask, symbols, entries, words, position
                )
            i += lanes
            continue
        for lane in range(row):
            while here == following:
                symbols[here] = 0
                shift += 1
                here += 1
                following = skipped[shift] if shift < skipped.size else size
            h = model_of[here] & model_mask
            symbols[here], position = _scalar_step(x, lane, h, entries, words, position)
            here += 1
        i += row
    for k in range(shift, skipped.size):  # skipped positions after the last symbol
        symbols[skipped[k]] = 0
    if position > available:
        return symbols, x, available, _TRUNCATED
    return symbols, x, position, _OK


_DECODE_LOOP = _vector_wide_decode.py_func  # the Python source of both decoders


@numba.njit(cache=True, nogil=True)
def rans_lanes_encode(symbols, model_of, freq, cum, lanes, prob_bits):  # pragma: no cover
    """``_rans._encode_numpy`` with ``lanes`` states and ``2**prob_bits`` slots as one
    scalar loop: the same states and words (all-zero states refuse an empty symbol)."""
    count = symbols.size
    states = np.full(lanes, _STATE_LOW, dtype=np.uint64)
    pushed = np.empty(count, dtype=np.uint16)
    emitted = 0
    shift = np.uint64(32 - prob_bits)
    scale = np.uint64(prob_bits)
    for i in range(count - 1, -1, -1):
        lane = i % lanes
        x = states[lane]
        h = model_of[i]
        s = symbols[i]
        f = np.uint64(freq[h, s])
        if f == 0:
            return np.zeros(lanes, dtype=np.uint32), np.empty(0, dtype=np.uint16)
        if x >= (f << shift):
            pushed[emitted] = np.uint16(x & np.uint64(0xFFFF))
            emitted += 1
            x >>= np.uint64(16)
        states[lane] = ((x // f) << scale) + (x % f) + np.uint64(cum[h, s])
    words = np.empty(emitted, dtype=np.uint16)
    for j in range(emitted):
        words[j] = pushed[emitted - 1 - j]
    return states.astype(np.uint32), words


@numba.njit(cache=True, nogil=True)
def rans_check_sum(values, first):  # pragma: no cover - compiled
    """``_rans._check_sum_numpy``: ``sum(fmix64(values[i] + (first + i + 1) * step))``
    modulo ``2**64`` (independent terms: the loop vectorizes)."""
    total = np.uint64(0)
    step = np.uint64(_CHECK_STEP)
    for i in range(values.size):
        z = values[i] + np.uint64(first + i + 1) * step
        z ^= z >> np.uint64(33)
        z *= np.uint64(_MIX_MULTIPLIERS[0])
        z ^= z >> np.uint64(33)
        z *= np.uint64(_MIX_MULTIPLIERS[1])
        z ^= z >> np.uint64(33)
        total += z
    return total
