"""numba kernels; each mirrors a numpy code path exactly (same operations, same order)."""

from __future__ import annotations

import ctypes
import sys

import numba
import numba.extending
import numpy as np
from llvmlite import ir
from numba.core import cgutils

from ..errors import ParameterError
from ._rans_wide import rans_check_sum, rans_lanes_encode, rans_slot_lookups, rans_wide_decode

__all__ = [
    "accumulate_gathered",
    "sender_states",
    "flip_coins",
    "pack_codes",
    "butterfly_passes",
    "signed_chunk_peaks",
    "drop_positions",
    "insert_zeros",
    "rans_decode_part",
    "rans_lanes_encode",
    "rans_wide_decode",
    "rans_slot_lookups",
    "rans_check_sum",
    "draw_stream_bytes",
    "nearest_e8",
    "nearest_dn",
    "row_square_sums",
]

# quicdesign._rans format constants (checked equal by tests/test_rans.py)
_LANES = 8
_PROB_BITS = 14
_STATE_LOW = 1 << 16
_BUCKET_SHIFT = 4


def accumulate_gathered(accumulator, gathered):
    """Add a block of validated ``stages.GatheredContribution``s (sharing receiver table,
    chunking and code widths) to the flat float64 ``accumulator`` in one pass."""
    first = gathered[0]
    _check_reads(accumulator.size, gathered)
    slots = first.receiver.size + _SUM_TILE  # the table, then the tile's exact values
    index_dtype = np.uint16 if slots <= 1 << 16 else np.uint32
    # the clients' codes stay where they lie (payload bytes): the kernel gets their
    # addresses, read while ``gathered`` holds them
    codes = [np.ascontiguousarray(g.codes) for g in gathered]
    exact_counts = [g.positions.size for g in gathered]
    # h from the clients' Philox streams, drawn tile by tile by numpy's own generator
    # (no 1 MiB array per client at d = 2**20), whole words per tile
    streamed = first.chunk_size % 8 == 0 and all(g.shared is None for g in gathered)
    if streamed:
        generators = [np.random.Philox(key=g.shared_key) for g in gathered]
        interfaces = [generator.ctypes for generator in generators]
        next_word = ctypes.cast(interfaces[0].next_uint64, ctypes.c_void_p).value
        states = np.array([i.state_address for i in interfaces], dtype=np.uintp)
        shared, shared_addresses = [], states
    else:
        next_word = 0
        shared = [np.ascontiguousarray(g.shared_bytes()) for g in gathered]
        shared_addresses = _addresses(shared)
    _coded_accumulate(
        accumulator,
        first.receiver,
        first.chunk_size,
        # 2**bits as a runtime value: LLVM keeps a multiply by it in 16-bit lanes, while
        # it widens a shift by a variable amount to 64-bit lanes (4x the vector work)
        1 << first.bits,
        first.code_width,
        np.stack([g.scale for g in gathered]),
        np.array([g.shared_mask for g in gathered], dtype=np.uint8),
        _addresses(codes),
        codes[0].size,
        next_word,
        shared_addresses,
        shared[0].size if shared else 0,
        np.concatenate([[0], np.cumsum(exact_counts)]).astype(np.intp),
        np.concatenate([g.positions for g in gathered]).astype(np.intp),
        np.concatenate([g.exact for g in gathered]).astype(np.float64, copy=False),
        np.empty((len(gathered), _SUM_TILE), dtype=index_dtype),
    )


def _check_reads(size, gathered):
    """Refuse what would make the kernel read or write past an array (it has no bounds
    checks): O(1) per client, the contributions' own invariants validated at decode."""
    for g in gathered:
        if g.scale.size * g.chunk_size != size:
            raise ParameterError(f"{g.scale.size} chunks of {g.chunk_size} do not cover {size}")
        if g.codes.size * 8 < size * g.code_width or (
            g.shared is not None and g.shared.size < size
        ):
            raise ParameterError("too few code or shared bytes for the sum's length")
        if g.exact.size != g.positions.size or (g.positions.size and int(g.positions[-1]) >= size):
            raise ParameterError("an exact position lies outside the sum or has no value")


def _addresses(arrays):
    """Start addresses of equally long contiguous uint8 arrays (checked here: the kernel
    reads ``size`` bytes from each)."""
    if any(a.dtype != np.uint8 or a.size != arrays[0].size for a in arrays):
        raise ParameterError("the clients' byte arrays must be uint8 and equally long")
    return np.array([a.ctypes.data for a in arrays], dtype=np.uintp)


@numba.extending.intrinsic
def _next_word(typingctx, function, state):  # pragma: no cover - compiled
    """``function(state)``: a bit generator's ``next_uint64`` (addresses as uintp)."""
    byte_pointer = ir.IntType(8).as_pointer()
    signature = ir.FunctionType(ir.IntType(64), [byte_pointer])

    def codegen(context, builder, sig, args):
        target = builder.inttoptr(args[0], signature.as_pointer())
        return builder.call(target, [builder.inttoptr(args[1], byte_pointer)])

    return numba.types.uint64(numba.types.uintp, numba.types.uintp), codegen


@numba.extending.intrinsic
def _byte_pointer(typingctx, address):  # pragma: no cover - compiled
    """The address (a uintp) as a ``uint8*`` for ``numba.carray``."""
    pointer = numba.types.CPointer(numba.types.uint8)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(numba.types.uintp), codegen


@numba.extending.intrinsic
def _prefetch(typingctx, address):  # pragma: no cover - compiled
    """Hint the cache to load the line at ``address`` (never faults, whatever it is)."""
    byte_pointer = ir.IntType(8).as_pointer()
    word = ir.IntType(32)
    signature = ir.FunctionType(ir.VoidType(), [byte_pointer, word, word, word])

    def codegen(context, builder, sig, args):
        function = cgutils.get_or_insert_function(builder.module, signature, "llvm.prefetch.p0")
        # read, keep in every cache level, data
        hints = [ir.Constant(word, 0), ir.Constant(word, 3), ir.Constant(word, 1)]
        builder.call(function, [builder.inttoptr(args[0], byte_pointer), *hints])
        return context.get_dummy_value()

    return numba.types.void(numba.types.uintp), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _bytes_at(addresses, c, size):  # pragma: no cover - compiled
    """Client ``c``'s ``size`` bytes starting at ``addresses[c]`` as a uint8 array."""
    return numba.carray(_byte_pointer(addresses[c]), size)


# coordinates per tile of the sender kernels (measured at 2**20, b = 1..8: 8192 beats
# 1024 by 0.1-0.2 ms, its passes' per-tile costs amortized; the tile's work stays in L2)
_TILE = 8192
# multipliers and masks spreading packed codes to the 16-bit index lanes of a word (the
# lanes are in memory order on little-endian hosts only)
_LITTLE_ENDIAN = sys.byteorder == "little"
_SPREAD_1, _LANES_1 = np.uint64(1 | 1 << 15 | 1 << 30 | 1 << 45), np.uint64(0x0001000100010001)
_SPREAD_2, _LANES_2 = np.uint64(1 | 1 << 14 | 1 << 28 | 1 << 42), np.uint64(0x0003000300030003)
_SUM_TILE = 4096  # coordinates per tile of the server kernel (measured best of 1024..8192)


@numba.njit(cache=True, nogil=True, inline="always")
def _tile_index(out, values, mask, factor, codes, code_width, start, count):  # pragma: no cover
    """``out[j] = (values[j] & mask) * factor | x_i`` for ``i = start + j``, ``x_i`` the
    ``i``-th ``code_width``-bit code of ``codes`` (``factor = 2**bits``, ``values`` the
    tile's shared bytes); simple loops for whole bytes.

    The loops run over views starting at the tile, in the index dtype: offset indices or
    intp arithmetic keep LLVM from vectorizing them (5x slower at d = 2**20).
    """
    kind = out.dtype.type
    scale = kind(factor)
    narrow = kind(mask)
    if count % 8 == 0 and code_width == 8:
        tile = codes[start : start + count]
        for j in range(count):
            out[j] = ((kind(values[j]) & narrow) * scale) | kind(tile[j])
        return
    for j in range(count):
        out[j] = (kind(values[j]) & narrow) * scale
    if count % 8 == 0 and code_width == 4:
        tile = codes[start >> 1 : (start + count) >> 1]
        for q in range(count >> 1):
            byte = kind(tile[q])
            out[2 * q] |= byte & kind(15)
            out[2 * q + 1] |= byte >> kind(4)
    elif count % 8 == 0 and code_width == 2 and _LITTLE_ENDIAN and out.itemsize == 2:
        # a byte's four codes spread to four 16-bit lanes of one word by one multiply
        # (the shifted copies 0, 14, 28 and 42 bits up do not overlap: no carries)
        tile, lanes = codes[start >> 2 : (start + count) >> 2], out.view(np.uint64)
        for q in range(count >> 2):
            lanes[q] |= (np.uint64(tile[q]) * _SPREAD_2) & _LANES_2
    elif count % 8 == 0 and code_width == 1 and _LITTLE_ENDIAN and out.itemsize == 2:
        # each half byte's four codes to four 16-bit lanes (copies 0, 15, 30, 45 bits up)
        tile, lanes = codes[start >> 3 : (start + count) >> 3], out.view(np.uint64)
        for q in range(count >> 3):
            byte = np.uint64(tile[q])
            lanes[2 * q] |= ((byte & np.uint64(15)) * _SPREAD_1) & _LANES_1
            lanes[2 * q + 1] |= ((byte >> np.uint64(4)) * _SPREAD_1) & _LANES_1
    elif count % 8 == 0 and code_width == 2:
        tile = codes[start >> 2 : (start + count) >> 2]
        for q in range(count >> 2):
            byte = kind(tile[q])
            out[4 * q] |= byte & kind(3)
            out[4 * q + 1] |= (byte >> kind(2)) & kind(3)
            out[4 * q + 2] |= (byte >> kind(4)) & kind(3)
            out[4 * q + 3] |= byte >> kind(6)
    elif count % 8 == 0 and code_width == 1:
        tile = codes[start >> 3 : (start + count) >> 3]
        for q in range(count >> 3):
            byte = kind(tile[q])
            for u in range(8):
                out[8 * q + u] |= (byte >> kind(u)) & kind(1)
    else:
        code_mask = (1 << code_width) - 1
        last = codes.size - 1
        for j in range(count):
            bit = (start + j) * code_width
            byte = bit >> 3
            # a code may straddle two bytes; past the last byte there are no code bits
            word = np.intp(codes[byte]) | (np.intp(codes[min(byte + 1, last)]) << 8)
            out[j] |= kind((word >> (bit & 7)) & code_mask)


@numba.njit(cache=True, nogil=True, inline="always")
def _tile_sum(total, tables, index, clients, count):  # pragma: no cover - compiled
    """``total[j] += tables[c, index[c, j]]`` for ``c = 0, 1, ...`` in order, four clients
    per pass (the running value is a float64 either way, so passes round alike)."""
    c = 0
    while clients - c >= 4:
        t0, t1, t2, t3 = tables[c], tables[c + 1], tables[c + 2], tables[c + 3]
        i0, i1, i2, i3 = index[c], index[c + 1], index[c + 2], index[c + 3]
        for j in range(count):
            total[j] = total[j] + t0[i0[j]] + t1[i1[j]] + t2[i2[j]] + t3[i3[j]]
        c += 4
    while c < clients:
        t0, i0 = tables[c], index[c]
        for j in range(count):
            total[j] += t0[i0[j]]
        c += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _draw_bytes(out, next_word, state, count):  # pragma: no cover - compiled
    """The next ``count`` (a multiple of 8) bytes of a bit generator's stream: its words,
    least significant byte first (whatever the host byte order)."""
    for q in range(count >> 3):
        word = _next_word(next_word, state)
        for u in range(8):
            out[8 * q + u] = np.uint8((word >> np.uint64(8 * u)) & np.uint64(255))


@numba.njit(cache=True, nogil=True)
def _coded_accumulate(
    accumulator,
    receiver,
    chunk_size,
    factor,
    code_width,
    scales,
    masks,
    code_addresses,
    code_bytes,
    next_word,
    shared_addresses,
    shared_bytes,
    exact_starts,
    positions,
    exact,
    index,
):  # pragma: no cover - compiled
    """Client ``c``'s coordinate ``i`` of chunk ``k`` is ``scales[c, k] * receiver[(h[i] &
    masks[c]) * factor + x]`` with ``x`` the ``i``-th ``code_width``-bit code of its
    ``code_bytes`` bytes at ``code_addresses[c]`` (``factor = 2**bits``), or ``exact[j]``
    where ``i == positions[j]`` for its ``j`` in ``exact_starts[c] .. exact_starts[c +
    1]`` (increasing). ``h`` is its ``shared_bytes`` bytes at ``shared_addresses[c]``, or,
    when ``next_word`` (the address of a bit generator's ``next_uint64``) is not 0, the
    stream of the generator state at ``shared_addresses[c]``, drawn tile by tile (chunks
    of whole words). The inputs are validated (every index stays in the table). Per tile
    of coordinates each client's indices are built first (its exact values get slots
    after its table), then summed coordinate by coordinate in client order; the products
    are numpy's ``scale * receiver`` table entries, so the float64 sums are bit-identical
    to ``accumulator += materialize()`` per client.
    """
    clients = scales.shape[0]
    slots = receiver.size
    cursor = exact_starts[:-1].copy()
    tables = np.empty((clients, slots + _SUM_TILE), dtype=np.float64)
    drawn = np.empty(_SUM_TILE, dtype=np.uint8)
    for k in range(accumulator.size // chunk_size):
        for c in range(clients):  # numpy's scale * receiver table entries
            for e in range(slots):
                tables[c, e] = scales[c, k] * receiver[e]
        chunk_end = (k + 1) * chunk_size
        for start in range(k * chunk_size, chunk_end, _SUM_TILE):
            stop = min(start + _SUM_TILE, chunk_end)
            count = stop - start
            for c in range(clients):
                row = index[c]
                codes = _bytes_at(code_addresses, c, code_bytes)
                if next_word != 0:
                    _draw_bytes(drawn, next_word, shared_addresses[c], count)
                    values = drawn
                else:
                    values = _bytes_at(shared_addresses, c, shared_bytes)[start:stop]
                _tile_index(row, values, masks[c], factor, codes, code_width, start, count)
                # the next tile's codes, while this block draws and sums (each client's
                # stream is read in short runs far apart: too late for the hardware)
                ahead = (stop * code_width) >> 3
                until = min(((stop + _SUM_TILE) * code_width) >> 3, code_bytes)
                for line in range(ahead, until, 64):
                    _prefetch(code_addresses[c] + line)
                taken, end = cursor[c], exact_starts[c + 1]
                slot = slots
                while taken < end and positions[taken] < stop:
                    tables[c, slot] = exact[taken]
                    row[positions[taken] - start] = slot
                    taken += 1
                    slot += 1
                cursor[c] = taken
            _tile_sum(accumulator[start:stop], tables, index, clients, count)


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket_of(value, low, per_unit, top):  # pragma: no cover - compiled
    """numpy's ``clip((value - low) * per_unit, 0, top)`` truncated to intp, rounded in
    the dtype of ``value``; NaN takes bucket 0 (numpy would fail on it), so no index
    ever leaves the tables."""
    position = (value - low) * per_unit
    if position > top:
        return np.intp(top)
    if position >= 0:
        return np.intp(position)
    return np.intp(0)


def sender_work_size(size, num_shared):
    """Length of :func:`sender_states`' randomizing work arrays for ``size`` values: about
    one value in ``num_shared`` randomizes (the arrays grow when a vector has more)."""
    return size // num_shared + size // 64 + _TILE + 1


@numba.njit(cache=True, nogil=True)
def sender_states(
    rows,
    factors,
    lower,
    upper,
    shared,
    low,
    per_unit,
    num_shared,
    states,
    next_threshold,
    steps,
    piece_bounds,
    messages,
    randomizing,
    fractions,
):  # pragma: no cover - compiled
    """The QUIC-FL sender on ``z = (rows * factors[:, None]).reshape(-1)`` without
    materializing ``z``: the levels before the coin flips, the randomizing positions
    with their coin-flip fractions, and the exact (outside) split.

    ``z`` is rounded as numpy's product in the dtype of ``rows``; ``lower``/``upper`` have
    the dtype numpy compares ``z`` with them in, ``low`` and ``per_unit`` that of ``rows``
    (buckets round as ``SenderRule._state_tables`` allows for). ``h``'s state at ``z`` is
    ``s = 2 level + moving``, nondecreasing in ``z``: ``states[bucket * H + h]`` holds
    ``level << 2 | dirty << 1 | moving`` at the bucket's low end, dirty when ``s`` changes
    inside the bucket; a dirty state steps to ``steps[2 (h S + s) + 1]`` while ``z >=
    next_threshold[h S + s]`` (float64, exact; ``steps[2 (h S + s)]`` is ``s``: a step
    taken or not is one load indexed by the comparison, where LLVM would make a select
    of two loads a branch, which a dirty value's half-and-half outcome mispredicts). The
    moving ``h`` randomizes on the piece starting at ``piece_bounds[2 i]`` and as wide as
    ``piece_bounds[2 i + 1]``, ``i = h (K - 1) + level``, with
    ``SenderRule._fraction``'s probability.
    Per tile of values: the arithmetic (vectorized), the outside values (rare), one lookup
    in a small table per value, then the flagged ones (moving or dirty: about 1 in H)
    while the tile is in L2. ``messages`` (``rows.size`` values) receives the levels;
    ``randomizing`` and ``fractions`` (one size, at least :func:`sender_work_size`) are
    work arrays, replaced by larger ones when a vector has more randomizing values. Returns
    the levels (``messages``), the randomizing positions (increasing), their fractions,
    the outside positions (increasing) and their ``z``.
    """
    width = rows.shape[1]
    size = rows.shape[0] * width
    num_states = next_threshold.size // num_shared
    pieces = piece_bounds.size // (2 * num_shared)
    if messages.size != size or randomizing.size != fractions.size:
        raise ValueError("sender work arrays of the wrong size")
    top = states.size // num_shared - 1
    where = np.empty(_TILE, dtype=np.uint32)
    tile_outside = np.zeros(_TILE, dtype=np.uint8)  # read 8 at a time
    outside_words = tile_outside.view(np.uint64)
    tile_positions = np.empty(_TILE + 1, dtype=np.uint32)
    tile_moving = np.empty(_TILE, dtype=np.uint8)
    tile_dirty = np.empty(_TILE, dtype=np.uint32)
    exact = np.empty(size // 256 + _TILE, dtype=np.intp)
    exact_z = np.empty(exact.size, dtype=rows.dtype)
    count = 0
    outside = 0
    for k in range(rows.shape[0]):
        row = rows[k]
        factor = factors[k]
        for start in range(0, width, _TILE):
            n = min(_TILE, width - start)
            tile = row[start : start + n]
            first_index = k * width + start
            tile_shared = shared[first_index : first_index + n]
            smallest, largest = 0, 0
            beyond = 0
            for j in range(n):  # the arithmetic (vectorized)
                z = tile[j] * factor
                h = tile_shared[j]
                smallest = min(smallest, h)
                largest = max(largest, h)
                where[j] = np.uint32(_bucket_of(z, low, per_unit, top) * num_shared + h)
                out_of_bounds = np.uint8((z < lower) | (z > upper))
                tile_outside[j] = out_of_bounds
                beyond |= out_of_bounds
            # checked before the lookups (a raise inside the loop keeps it scalar)
            if smallest < 0 or largest >= num_shared:
                raise IndexError("a shared value is outside [0, H)")
            # grown here, not in the loops below: an array reassigned inside a loop costs
            # numba an atomic reference count per iteration
            if count + n > randomizing.size:
                randomizing = _grown(randomizing, count, n)
                fractions = _grown(fractions, count, n)
            if outside + n > exact.size:
                exact = _grown(exact, outside, n)
                exact_z = _grown(exact_z, outside, n)
            if beyond:  # the outside values (rare), 8 flags at a time
                for w in range((n + 7) >> 3):
                    if outside_words[w]:
                        for j in range(8 * w, min(8 * w + 8, n)):
                            if tile_outside[j]:
                                exact[outside] = first_index + j
                                exact_z[outside] = tile[j] * factor
                                outside += 1
            tile_messages = messages[first_index : first_index + n]
            found = 0
            for j in range(n):  # the lookups, the flagged positions compacted branch-free
                entry = states[where[j]]
                tile_messages[j] = entry >> 2
                tile_positions[found] = j
                found += (entry & 3) != 0  # moving or dirty (looked up again when flagged)
            moving = _tile_flagged(
                tile,
                factor,
                tile_messages,
                tile_shared,
                where,
                states,
                tile_positions[:found],
                next_threshold,
                steps,
                num_states,
                tile_moving,
                tile_dirty,
            )
            _tile_fractions(
                tile,
                factor,
                tile_messages,
                tile_shared,
                tile_positions[:moving],
                piece_bounds,
                pieces,
                randomizing[count : count + moving],
                fractions[count : count + moving],
                first_index,
            )
            count += moving
    return messages, randomizing[:count], fractions[:count], exact[:outside], exact_z[:outside]


@numba.njit(cache=True, nogil=True)
def _tile_flagged(
    tile,
    factor,
    levels,
    shared,
    where,
    states,
    positions,
    next_threshold,
    steps,
    num_states,
    moving_bits,
    dirty_at,
):  # pragma: no cover - compiled
    """:func:`sender_states`' flagged values of a tile (their flags looked up again from
    ``where`` and ``states``, cheaper than storing every value's): dirty ones stepped to
    their state, the moving ones' positions compacted to the front of ``positions``.
    Returns the moving count.

    Three branch-free passes (at b = 8 about 3 in 10 flagged values are dirty, and half
    of those step: branches on either mispredict): the flags, with the dirty
    values' indices compacted into ``dirty_at``; the dirty values' one step (a second
    is rare); the compaction. ``moving_bits`` and ``dirty_at`` are work arrays of a
    tile's length.
    """
    count = positions.size
    dirty = 0
    for f in range(count):
        flag = np.uintp(states[where[np.uintp(positions[f])]])
        moving_bits[f] = flag & np.uintp(1)
        dirty_at[dirty] = f
        dirty += (flag >> np.uintp(1)) & np.uintp(1)
    stride = np.uintp(num_states)
    for d in range(dirty):
        f = np.uintp(dirty_at[d])
        j = np.uintp(positions[f])
        value = np.float64(tile[j] * factor)
        base = np.uintp(shared[j]) * stride
        state = np.uintp(2) * np.uintp(levels[j]) + np.uintp(moving_bits[f])
        taken = np.uintp(value >= next_threshold[base + state])
        state = np.uintp(steps[np.uintp(2) * (base + state) + taken])
        while value >= next_threshold[base + state]:
            state = np.uintp(steps[np.uintp(2) * (base + state) + np.uintp(1)])
        levels[j] = state >> np.uintp(1)
        moving_bits[f] = state & np.uintp(1)
    moving = 0
    for f in range(count):
        positions[moving] = positions[f]
        moving += moving_bits[f]
    return moving


@numba.njit(cache=True, nogil=True)
def _tile_fractions(
    tile, factor, levels, shared, positions, piece_bounds, pieces, out, fractions, at
):  # pragma: no cover - compiled
    """The moving values' positions (plus ``at``) and ``SenderRule._fraction`` of each:
    a function of its own (registers for this loop alone) with unsigned indices (no
    wraparound code); each piece's start and width side by side in ``piece_bounds``
    (one dependent load less than through the event's breakpoints)."""
    stride = np.uintp(pieces)
    for f in range(positions.size):
        j = np.uintp(positions[f])
        value = np.float64(tile[j] * factor)
        piece = np.uintp(2) * (np.uintp(shared[j]) * stride + np.uintp(levels[j]))
        piece_low = piece_bounds[piece]
        piece_width = piece_bounds[piece + np.uintp(1)]
        fraction = (value - piece_low) / piece_width if piece_width > 0 else 1.0
        fraction = 0.0 if fraction <= 0 else fraction  # -0.0 too: +0.0, as piece_fractions
        out[f] = at + np.intp(j)
        fractions[f] = 1.0 if fraction > 1 else fraction


@numba.njit(cache=True, nogil=True)
def _grown(array, used, more):  # pragma: no cover - compiled
    """A copy of ``array[:used]`` with room for at least ``2 * size + more`` items."""
    grown = np.empty(2 * array.size + more, dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


@numba.njit(cache=True, nogil=True)
def flip_coins(messages, randomizing, fractions, draws):  # pragma: no cover - compiled
    """``messages[randomizing] += draws < fractions`` (positions distinct), branch-free
    (the comparison is a coin flip to the branch predictor)."""
    for f in range(randomizing.size):
        at = np.uintp(randomizing[f])
        messages[at] += messages.dtype.type(draws[f] < fractions[f])


@numba.njit(cache=True, nogil=True)
def pack_byte_codes(codes, bits):  # pragma: no cover - compiled
    """:func:`pack_codes` of uint8 codes when ``bits`` is 2 or 4, on little-endian hosts:
    each output byte is one word of ``8 // bits`` codes folded by shifts (codes below
    ``2**bits``, as ``_wire.pack_codes`` checks), so the loop vectorizes."""
    per_byte = 8 // bits
    whole = codes.size // per_byte
    out = np.empty((codes.size * bits + 7) // 8, dtype=np.uint8)
    body = codes[: whole * per_byte]
    if bits == 2:
        quads = body.view(np.uint32)
        for j in range(whole):
            w = quads[j]
            out[j] = np.uint8((w | (w >> 6) | (w >> 12) | (w >> 18)) & 255)
    else:
        pairs = body.view(np.uint16)
        for j in range(whole):
            w = pairs[j]
            out[j] = np.uint8((w | (w >> 4)) & 255)
    if whole < out.size:
        byte = 0
        for t in range(codes.size - whole * per_byte):
            byte |= int(codes[whole * per_byte + t]) << (t * bits)
        out[whole] = np.uint8(byte)
    return out


@numba.njit(cache=True, nogil=True)
def pack_codes(codes, bits):  # pragma: no cover - compiled
    """``bits``-bit codes (bits <= 8) LSB first into bytes, as ``_wire.pack_codes``."""
    out = np.zeros((codes.size * bits + 7) // 8, dtype=np.uint8)
    buffer = np.uint64(0)
    filled = 0
    j = 0
    for i in range(codes.size):
        buffer |= np.uint64(codes[i]) << np.uint64(filled)
        filled += bits
        if filled >= 8:
            out[j] = np.uint8(buffer & np.uint64(255))
            buffer >>= np.uint64(8)
            filled -= 8
            j += 1
    if filled > 0:
        out[j] = np.uint8(buffer & np.uint64(255))
    return out


@numba.njit(cache=True, nogil=True)
def butterfly_passes(source, scratch, factor):  # pragma: no cover - compiled
    """``rotation._butterfly_passes`` fused per pass; returns 0 (``source``) or 1.

    Every output element is formed by the same additions and subtractions of the same
    operands as in the numpy passes, then multiplied by ``factor`` (in the last pass, as
    numpy's ``result *= factor`` after it; earlier passes multiply by 1, which is exact),
    so the bits are identical; only the memory traffic (one read and one write per pass
    instead of eight array operations, no pass of its own for the factor) changes.
    """
    return _butterfly_passes_from(source, scratch, factor, 0)


@numba.njit(cache=True, nogil=True)
def _butterfly_passes_from(source, scratch, factor, first_pass):  # pragma: no cover
    """:func:`butterfly_passes` from radix-4 pass ``first_pass`` on (the earlier ones
    done: their output in ``source`` for an even count, else ``scratch``).

    Row by row, every pass of a row before the next: a row and its scratch stay in L2
    across the passes instead of the whole array streaming through memory per pass (the
    same operations on the same operands, so the same bits). The passes are functions
    of two distinct 1-D rows, written out per direction: so they vectorize."""
    batch, n = source.shape
    log_n = 0
    while (1 << (log_n + 1)) <= n:
        log_n += 1
    one = source.dtype.type(1)
    passes = log_n // 2 + log_n % 2
    current = first_pass % 2
    for row in range(batch):
        current = first_pass % 2
        here, there = source[row], scratch[row]
        for p in range(first_pass, log_n // 2):
            f = factor if p == passes - 1 else one
            if current == 0:
                _radix4_pass(here, there, f)
            else:
                _radix4_pass(there, here, f)
            current = 1 - current
        if log_n % 2:
            if current == 0:
                _radix2_pass(here, there, factor)
            else:
                _radix2_pass(there, here, factor)
            current = 1 - current
    if passes == 0:
        for row in range(batch):
            for j in range(n):
                source[row, j] *= factor
    return current


@numba.njit(cache=True, nogil=True)
def _radix4_pass(read, write, f):  # pragma: no cover - compiled
    """One radix-4 butterfly pass of a row, from ``read`` to ``write``, times ``f``."""
    quarter = read.size // 4
    for j in range(quarter):
        a = read[j]
        b = read[quarter + j]
        c = read[2 * quarter + j]
        e = read[3 * quarter + j]
        sum_low, diff_low = a + b, a - b
        sum_high, diff_high = c + e, c - e
        write[4 * j] = (sum_low + sum_high) * f
        write[4 * j + 1] = (diff_low + diff_high) * f
        write[4 * j + 2] = (sum_low - sum_high) * f
        write[4 * j + 3] = (diff_low - diff_high) * f


@numba.njit(cache=True, nogil=True)
def _radix2_pass(read, write, f):  # pragma: no cover - compiled
    """The radix-2 butterfly pass of a row (odd ``log2`` width), times ``f``."""
    half = read.size // 2
    for j in range(half):
        a = read[j]
        b = read[half + j]
        write[2 * j] = (a + b) * f
        write[2 * j + 1] = (a - b) * f


# log2 of the blocks whose last butterfly levels run together: a block and its scratch
# (16 KiB in float32) stay in L1 across them
_BLOCK_LOG = 11


@numba.njit(cache=True, nogil=True)
def signed_butterflies(values, value_bits, signs, out, factor, square_sums):  # pragma: no cover
    """:func:`signed_chunk_peaks` into ``out`` (2-D, C order), then
    :func:`butterfly_passes`, and each row's :func:`row_square_sums` into ``square_sums``.

    The same levels in the same order with the same operands (the order of
    ``rotation._butterfly_level_groups``: the rounding depends on it, not on where the
    values lie), so the same bits; the padding is ``+0 * +1``, as the zeros written there.
    The sign flips and peaks are done inside the first level pair, read from ``values``
    and written in place (the flipped vector is never written). The top level pairs run
    in place on the whole row (in L2, no scratch) until the rest are levels inside
    blocks of ``2**_BLOCK_LOG`` values, transformed one by one with the constant-geometry
    passes in L1 (with a block of scratch); a block's squares are summed there too,
    while it is in L1.

    ``value_bits`` is ``values`` viewed as unsigned integers of its width: without the
    sign bit they order as the magnitudes (NaNs above infinity), so the peaks are integer
    maxima, which vectorize. Returns each row's largest magnitude bits (the caller views
    them as floats; above infinity's bits: a NaN).
    """
    rows, width = out.shape
    size = values.size
    kind = out.dtype.type  # int8 signs widen exactly
    one = kind(1)
    log_n = 0
    while (1 << (log_n + 1)) <= width:
        log_n += 1
    quarter = width // 4
    f = factor if log_n == 2 else one
    magnitude = value_bits.dtype.type(-1) >> value_bits.dtype.type(1)
    peaks = np.zeros(rows, dtype=value_bits.dtype)
    # the last chunk's copy (none when the vector fills its chunks: half a megabyte each
    # at 2**17-wide chunks, fresh pages every call in some allocator states)
    padding = width if rows * width != size else 0
    padded_values = np.zeros(padding, dtype=values.dtype)
    padded_signs = np.ones(padding, dtype=signs.dtype)
    padded_bits = np.zeros(padding, dtype=value_bits.dtype)
    block_log = log_n - 2  # the levels left to the blocks: the top pairs run in place
    while block_log > _BLOCK_LOG:
        block_log -= 2
    block = 1 << block_log
    scratch = np.empty(block, dtype=out.dtype)
    partial = np.empty(max(width // 128, 1), dtype=np.float64)
    for k in range(rows):
        start = k * width
        stop = min(start + width, size)
        if stop - start == width:
            v = values[start:stop]
            s = signs[start:stop]
            vb = value_bits[start:stop]
        else:  # the last chunk: zeros after the vector, flipped by +1
            padded_values[: stop - start] = values[start:stop]
            padded_signs[: stop - start] = signs[start:stop]
            padded_bits[: stop - start] = value_bits[start:stop]
            v = padded_values
            s = padded_signs
            vb = padded_bits
        row = out[k]
        # the four quarters as arrays of their own: so the loop vectorizes
        v0, v1, v2, v3 = _quarters(v)
        s0, s1, s2, s3 = _quarters(s)
        b0, b1, b2, b3 = _quarters(vb)
        w0, w1, w2, w3 = _quarters(row)
        peak = value_bits.dtype.type(0)
        for j in range(quarter):
            peak = max(
                peak,
                max(
                    max(b0[j] & magnitude, b1[j] & magnitude),
                    max(b2[j] & magnitude, b3[j] & magnitude),
                ),
            )
            a = v0[j] * kind(s0[j])
            b = v1[j] * kind(s1[j])
            c = v2[j] * kind(s2[j])
            e = v3[j] * kind(s3[j])
            sum_low, diff_low = a + b, a - b
            sum_high, diff_high = c + e, c - e
            w0[j] = (sum_low + sum_high) * f
            w1[j] = (diff_low + diff_high) * f
            w2[j] = (sum_low - sum_high) * f
            w3[j] = (diff_low - diff_high) * f
        peaks[k] = peak
        left = log_n - 2  # the levels below the pair just done
        while left > block_log:
            _in_place_radix4(row, 1 << (left - 2))
            left -= 2
        summed = block >= 128
        if left > 0:
            for first in range(0, width, block):
                _block_passes(row[first : first + block], scratch, factor)
                if summed:
                    for at in range(first, first + block, 128):
                        partial[at // 128] = _squares_of_128(row, at)
        if summed:
            square_sums[k] = _tree_sum(partial, width // 128)
        else:
            square_sums[k] = _pairwise_squares(row, width)
    return peaks


@numba.njit(cache=True, nogil=True, inline="always")
def _quarters(array):  # pragma: no cover - compiled
    """The four quarters of ``array`` as arrays of their own (loops over them vectorize;
    indexing one array at four offsets does not)."""
    quarter = array.size // 4
    return (
        array[:quarter],
        array[quarter : 2 * quarter],
        array[2 * quarter : 3 * quarter],
        array[3 * quarter : 4 * quarter],
    )


@numba.njit(cache=True, nogil=True)
def _in_place_radix4(row, q):  # pragma: no cover - compiled
    """The butterfly levels of the bits of ``q`` and ``2 * q`` (the lower first) over
    ``row``, in place (not the last levels: no factor)."""
    for start in range(0, row.size, 4 * q):
        first, second, third, fourth = _quarters(row[start : start + 4 * q])
        for j in range(q):
            a, b, c, e = first[j], second[j], third[j], fourth[j]
            sum_low, diff_low = a + b, a - b
            sum_high, diff_high = c + e, c - e
            first[j] = sum_low + sum_high
            second[j] = diff_low + diff_high
            third[j] = sum_low - sum_high
            fourth[j] = diff_low - diff_high


@numba.njit(cache=True, nogil=True)
def _block_passes(block, scratch, factor):  # pragma: no cover - compiled
    """:func:`butterfly_passes` of one block (1-D, a power of two >= 2 long), the result
    in ``block``; ``scratch`` as long."""
    log_n = 0
    while (1 << (log_n + 1)) <= block.size:
        log_n += 1
    passes = log_n // 2 + log_n % 2
    one = block.dtype.type(1)
    here, there = block, scratch
    for p in range(log_n // 2):
        _radix4_pass(here, there, factor if p == passes - 1 else one)
        here, there = there, here
    if log_n % 2:
        _radix2_pass(here, there, factor)
        here, there = there, here
    if passes % 2:
        block[:] = scratch


@numba.njit(cache=True, nogil=True)
def _tree_sum(partial, count):  # pragma: no cover - compiled
    """``partial[:count]`` (a power of two) summed as a perfect pairwise tree, level by
    level (``partial`` is overwritten)."""
    while count > 1:
        count //= 2
        for i in range(count):
            partial[i] = partial[2 * i] + partial[2 * i + 1]
    return partial[0]


@numba.njit(cache=True, nogil=True)
def signed_chunk_peaks(values, signs, chunks):  # pragma: no cover - compiled
    """``chunks.reshape(-1)[:n] = values * signs[:n]``, zeros after, and the largest
    ``|chunk|`` per row as float64, NaN if it holds one, as numpy's ``max``
    (``rotation.scaled_rotate``'s first two passes)."""
    rows, width = chunks.shape
    size = values.size
    peaks = np.zeros(rows, dtype=np.float64)
    for k in range(rows):
        start = k * width
        stop = min(start + width, size)
        row = chunks[k]
        peak = values.dtype.type(0)
        unordered = False  # numpy's max propagates NaN
        for j in range(max(stop - start, 0)):
            flipped = values[start + j] * values.dtype.type(signs[start + j])
            row[j] = flipped
            peak = max(peak, abs(flipped))
            unordered |= flipped != flipped
        for j in range(max(stop - start, 0), width):
            row[j] = 0
        peaks[k] = np.nan if unordered else peak
    return peaks


@numba.njit(cache=True, nogil=True)
def drop_positions(values, positions):  # pragma: no cover - compiled
    """``values`` without the entries at ``positions`` (strictly increasing, in range)."""
    out = np.empty(values.size - positions.size, dtype=values.dtype)
    start = 0
    for skipped, position in enumerate(positions):
        out[start - skipped : position - skipped] = values[start:position]
        start = position + 1
    out[start - positions.size :] = values[start:]
    return out


@numba.njit(cache=True, nogil=True)
def insert_zeros(values, positions, size):  # pragma: no cover - compiled
    """The inverse of :func:`drop_positions`: ``size`` entries, 0 at ``positions``."""
    out = np.empty(size, dtype=values.dtype)
    start = 0
    for inserted, position in enumerate(positions):
        out[start:position] = values[start - inserted : position - inserted]
        out[position] = 0
        start = position + 1
    out[start:] = values[start - positions.size :]
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _rans_update(state, h, entries, bucket_symbol):  # pragma: no cover - compiled
    """One rANS decode step before renormalization: ``(state, symbol)``. ``entries[h, s]``
    is ``cum << 16 | freq``; the symbol of a slot is found from its bucket's first symbol
    by a short forward scan (a 2**10-entry start table per model stays in cache where a
    full 2**14 slot table would not)."""
    slot = state & np.uint64((1 << _PROB_BITS) - 1)
    s = np.intp(bucket_symbol[h, slot >> np.uint64(_BUCKET_SHIFT)])
    while np.uint64(entries[h, s + 1] >> 16) <= slot:
        s += 1
    entry = np.uint64(entries[h, s])
    state = (entry & np.uint64(0xFFFF)) * (state >> np.uint64(_PROB_BITS)) + slot
    return state - (entry >> np.uint64(16)), s


@numba.njit(cache=True, nogil=True, inline="always")
def _rans_refill(state, padded, position, available):  # pragma: no cover - compiled
    """Renormalize without a branch: a word is read when the state fell below the range
    (past the end ``padded[available]`` is 0 and the caller reports the truncation)."""
    need = state < np.uint64(_STATE_LOW)
    word = np.uint64(padded[min(position, available)])
    refilled = (state << np.uint64(16)) | word
    return (refilled if need else state), position + np.intp(need)


@numba.njit(cache=True, nogil=True)
def rans_decode_part(  # pragma: no cover - compiled
    x, words, position, first, model_of, freq, cum, bucket_symbol
):
    """``_rans._decode_part_numpy`` for symbols ``first ..`` of a stream, updating the
    uint64 states ``x`` in place; returns ``(symbols, position, status)``.

    The same symbols and states: full rows of the 8 lanes keep their states in registers
    and decode all lanes before renormalizing them in lane order (the words are consumed
    in the same order, without a branch the predictor cannot learn at high rates).
    """
    count = model_of.size
    symbols = np.empty(count, dtype=np.uint8)
    available = words.size
    padded = np.zeros(available + 1, dtype=np.uint16)
    padded[:available] = words
    entries = np.zeros(cum.shape, dtype=np.uint32)  # cum << 16 | freq: one load per step
    for h in range(cum.shape[0]):
        for t in range(cum.shape[1]):
            frequency = np.uint32(freq[h, t]) if t < freq.shape[1] else np.uint32(0)
            entries[h, t] = (np.uint32(cum[h, t]) << np.uint32(16)) | frequency
    i = 0
    while i < count and (first + i) % _LANES != 0:  # up to the first full row
        lane = (first + i) % _LANES
        state, symbols[i] = _rans_update(x[lane], model_of[i], entries, bucket_symbol)
        x[lane], position = _rans_refill(state, padded, position, available)
        i += 1
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    x4, x5, x6, x7 = x[4], x[5], x[6], x[7]
    while i + _LANES <= count:
        x0, symbols[i + 0] = _rans_update(x0, model_of[i + 0], entries, bucket_symbol)
        x1, symbols[i + 1] = _rans_update(x1, model_of[i + 1], entries, bucket_symbol)
        x2, symbols[i + 2] = _rans_update(x2, model_of[i + 2], entries, bucket_symbol)
        x3, symbols[i + 3] = _rans_update(x3, model_of[i + 3], entries, bucket_symbol)
        x4, symbols[i + 4] = _rans_update(x4, model_of[i + 4], entries, bucket_symbol)
        x5, symbols[i + 5] = _rans_update(x5, model_of[i + 5], entries, bucket_symbol)
        x6, symbols[i + 6] = _rans_update(x6, model_of[i + 6], entries, bucket_symbol)
        x7, symbols[i + 7] = _rans_update(x7, model_of[i + 7], entries, bucket_symbol)
        x0, position = _rans_refill(x0, padded, position, available)
        x1, position = _rans_refill(x1, padded, position, available)
        x2, position = _rans_refill(x2, padded, position, available)
        x3, position = _rans_refill(x3, padded, position, available)
        x4, position = _rans_refill(x4, padded, position, available)
        x5, position = _rans_refill(x5, padded, position, available)
        x6, position = _rans_refill(x6, padded, position, available)
        x7, position = _rans_refill(x7, padded, position, available)
        i += _LANES
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    x[4], x[5], x[6], x[7] = x4, x5, x6, x7
    while i < count:  # the last partial row
        lane = (first + i) % _LANES
        state, symbols[i] = _rans_update(x[lane], model_of[i], entries, bucket_symbol)
        x[lane], position = _rans_refill(state, padded, position, available)
        i += 1
    if position > available:
        return symbols, available, 1
    return symbols, position, 0


@numba.njit(cache=True, nogil=True)
def _block_squares(row, start, n):  # pragma: no cover - compiled
    """numpy's pairwise sum of a block of at most 128 squares: 8 partial sums."""
    if n < 8:
        total = 0.0
        for i in range(n):
            value = np.float64(row[start + i])
            total += value * value
        return total
    v0, v1 = np.float64(row[start]), np.float64(row[start + 1])
    v2, v3 = np.float64(row[start + 2]), np.float64(row[start + 3])
    v4, v5 = np.float64(row[start + 4]), np.float64(row[start + 5])
    v6, v7 = np.float64(row[start + 6]), np.float64(row[start + 7])
    r0, r1, r2, r3 = v0 * v0, v1 * v1, v2 * v2, v3 * v3
    r4, r5, r6, r7 = v4 * v4, v5 * v5, v6 * v6, v7 * v7
    i = 8
    whole = n - n % 8
    while i < whole:
        v0, v1 = np.float64(row[start + i]), np.float64(row[start + i + 1])
        v2, v3 = np.float64(row[start + i + 2]), np.float64(row[start + i + 3])
        v4, v5 = np.float64(row[start + i + 4]), np.float64(row[start + i + 5])
        v6, v7 = np.float64(row[start + i + 6]), np.float64(row[start + i + 7])
        r0 += v0 * v0
        r1 += v1 * v1
        r2 += v2 * v2
        r3 += v3 * v3
        r4 += v4 * v4
        r5 += v5 * v5
        r6 += v6 * v6
        r7 += v7 * v7
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        value = np.float64(row[start + i])
        total += value * value
        i += 1
    return total


@numba.extending.intrinsic
def _squares_of_128(typingctx, row, start):  # pragma: no cover - compiled
    """:func:`_block_squares` of ``row[start:start + 128]`` (1-D, C-contiguous, float32
    or float64) with its 8 running sums as the 8 lanes of one vector: each lane is the
    same chain of IEEE additions (no fast-math flags, no fused multiply-add), so the
    same bits; numba leaves the scalar form unvectorized (4-5x slower)."""
    if not (
        isinstance(row, numba.types.Array)
        and row.ndim == 1
        and row.layout == "C"
        and row.dtype in (numba.types.float32, numba.types.float64)
    ):
        return None
    double = ir.DoubleType()
    lanes = ir.VectorType(double, 8)
    lane_index = ir.IntType(32)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        element = context.get_value_type(signature.args[0].dtype)
        eights = builder.bitcast(
            builder.gep(array.data, [args[1]]), ir.VectorType(element, 8).as_pointer()
        )
        align = context.get_abi_sizeof(element)
        sums = None
        for i in range(16):
            eight = builder.load(builder.gep(eights, [ir.Constant(ir.IntType(64), i)]), align=align)
            if element != double:
                eight = builder.fpext(eight, lanes)  # exact
            square = builder.fmul(eight, eight)
            sums = square if sums is None else builder.fadd(sums, square)
        r = [builder.extract_element(sums, ir.Constant(lane_index, j)) for j in range(8)]
        low = builder.fadd(builder.fadd(r[0], r[1]), builder.fadd(r[2], r[3]))
        high = builder.fadd(builder.fadd(r[4], r[5]), builder.fadd(r[6], r[7]))
        return builder.fadd(low, high)

    return numba.types.float64(row, numba.types.intp), codegen


@numba.njit(cache=True, nogil=True)
def _pairwise_squares(row, n):  # pragma: no cover - compiled
    """numpy's pairwise float64 sum of ``row[:n]`` squared as one tree (``codec._pairwise_sum``,
    numpy >= 2.3's ``add.reduce``): halves rounded down to a multiple of 8 until blocks of
    at most 128. An explicit stack, not recursion
    (numba's on-disk cache of recursive functions is not dependable)."""
    task_start = np.empty(128, dtype=np.intp)
    task_size = np.empty(128, dtype=np.intp)  # -1: add the last two partial sums
    partial = np.empty(64, dtype=np.float64)
    tasks, partials = 1, 0
    task_start[0], task_size[0] = 0, n
    while tasks:
        tasks -= 1
        start, size = task_start[tasks], task_size[tasks]
        if size < 0:
            partials -= 1
            partial[partials - 1] = partial[partials - 1] + partial[partials]
        elif size <= 128:
            partial[partials] = _block_squares(row, start, size)
            partials += 1
        else:
            half = size // 2
            half -= half % 8
            # popped in reverse: the left half, the right half, then their sum
            task_size[tasks] = -1
            task_start[tasks + 1], task_size[tasks + 1] = start + half, size - half
            task_start[tasks + 2], task_size[tasks + 2] = start, half
            tasks += 3
    return partial[0]


@numba.njit(cache=True, nogil=True)
def row_square_sums(rows):  # pragma: no cover - compiled
    """``codec._row_square_sums(rows)`` bit for bit (each row's squares summed as one
    pairwise tree), without the float64 temporary (squares of float32 are exact in
    float64; float64 squares round as numpy's do). ``rows``: C-contiguous."""
    out = np.empty(rows.shape[0], dtype=np.float64)
    width = rows.shape[1]
    if width >= 128 and width & (width - 1) == 0:
        # a power of two: numpy's halves are exact, a perfect tree over blocks of 128,
        # summed level by level (the same additions, without the task stack)
        partial = np.empty(width // 128, dtype=np.float64)
        for k in range(rows.shape[0]):
            row = rows[k]
            for block in range(partial.size):
                partial[block] = _squares_of_128(row, 128 * block)
            out[k] = _tree_sum(partial, partial.size)
        return out
    for k in range(rows.shape[0]):
        out[k] = _pairwise_squares(rows[k], width)
    return out


@numba.njit(cache=True, nogil=True)
def nearest_e8(x):  # pragma: no cover - compiled
    """``lattice.nearest_lattice_point`` for E8, one block (column of ``x``) at a time with
    the same float64 operations in the same order: returns ``(y, coset)``."""
    n, blocks = x.shape
    y = np.empty((n, blocks))
    coset = np.zeros(blocks, dtype=np.int64)
    r0 = np.empty(n)
    r1 = np.empty(n)
    for b in range(blocks):
        d0 = 0.0
        d1 = 0.0
        m0 = 0.0
        m1 = 0.0
        s0 = 0.0
        s1 = 0.0
        for j in range(n):
            v = x[j, b]
            a = np.floor(v + 0.5)
            c = np.floor(v)
            r0[j] = a
            r1[j] = c
            e0 = v - a
            e1 = v - 0.5 - c
            d0 += e0 * e0
            d1 += e1 * e1
            m0 = max(m0, abs(e0))
            m1 = max(m1, abs(e1))
            s0 += a
            s1 += c
        odd0 = s0 % 2 != 0
        odd1 = s1 % 2 != 0
        if odd0:
            d0 += 1.0 - 2.0 * m0
        if odd1:
            d1 += 1.0 - 2.0 * m1
        take = d1 < d0
        rounded = r1 if take else r0
        shift = 0.5 if take else 0.0
        for j in range(n):
            y[j, b] = rounded[j]
        if odd1 if take else odd0:
            worst = 0
            largest = -1.0
            for j in range(n):
                e = abs(x[j, b] - shift - rounded[j]) if take else abs(x[j, b] - rounded[j])
                if e > largest:
                    largest = e
                    worst = j
            picked = x[worst, b] - shift - rounded[worst] if take else x[worst, b] - rounded[worst]
            y[worst, b] += 1.0 if picked > 0 else -1.0
        coset[b] = 1 if take else 0
    return y, coset


@numba.njit(cache=True, nogil=True)
def nearest_dn(x):  # pragma: no cover - compiled
    """``lattice.nearest_dn``, one column at a time (the same float64 operations)."""
    n, blocks = x.shape
    y = np.empty((n, blocks))
    for b in range(blocks):
        total = 0.0
        for j in range(n):
            a = np.floor(x[j, b] + 0.5)
            y[j, b] = a
            total += a
        if total % 2 != 0:
            worst = 0
            largest = -1.0
            for j in range(n):
                e = abs(x[j, b] - y[j, b])
                if e > largest:
                    largest = e
                    worst = j
            picked = x[worst, b] - y[worst, b]
            y[worst, b] += 1.0 if picked > 0 else -1.0
    return y


# lattice decoder statuses (quicdesign.compressors.lattice reads them; 1 is _rans's
# TRUNCATED)
_LATTICE_TRUNCATED = 1
_LATTICE_BAD_PARITY = 4


@numba.njit(cache=True, nogil=True, inline="always")
def _binary_level(probability, levels):  # pragma: no cover - compiled
    """``_Coder.binary_rows`` without the row offset: ``min(uint16(p L), L - 1)``, 0 for
    NaN as numpy's cast gives (0/0 if a model's masses underflow)."""
    scaled = probability * levels
    if not scaled >= 0.0:
        return 0
    return min(np.intp(np.uint16(scaled)), levels - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _offset_group(shift, dither, bins):  # pragma: no cover - compiled
    """``CosetGeometry``'s offset and ``2 bin + parity of the floor`` of one coordinate."""
    shifted = shift - dither
    floor = np.floor(shifted)
    fraction = shifted - floor
    return fraction, 2 * np.intp(fraction * bins) + (np.intp(floor) & 1)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _coset_totals(dither, bins, class_mass, totals, scratch, at):  # pragma: no cover
    """``CosetGeometry.total_even`` of both E8 cosets of every block into ``totals``
    (shape ``(2, blocks)``) from the dither in columns, column by column: the indices in
    a loop that vectorizes, then the lookups and the suffix recurrence."""
    n, blocks = dither.shape
    w_odd = scratch[0]
    for c in range(2):
        total = totals[c]
        total[:] = 1.0
        w_odd[:] = 0.0
        for j in range(n - 1, -1, -1):
            column = dither[j]
            for b in range(blocks):
                at[b] = _offset_group(c * 0.5, column[b], bins)[1]
            for b in range(blocks):
                even = class_mass[at[b]]
                odd = class_mass[at[b] ^ 1]
                w_even_next = total[b]
                w_odd_next = w_odd[b]
                total[b] = even * w_even_next + odd * w_odd_next
                w_odd[b] = even * w_odd_next + odd * w_even_next


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lattice_geometry(  # pragma: no cover - compiled
    dither, coset, bins, class_mass, levels, group, level_if, scratch
):
    """``CosetGeometry(model, dither, coset).with_suffix()`` and both parity levels of
    every block, column by column (the blocks of a column are independent, so the loops
    pipeline and the arithmetic ones vectorize): fills ``group`` (``2 bin + parity of the
    floor``) and ``level_if`` (``[required parity, column, block]``, columns ``0..n-2``)
    and overwrites ``dither`` (in columns) with the offsets; ``scratch`` has shape ``(4,
    blocks)``."""
    n, blocks = group.shape
    total = scratch[0]
    w_odd = scratch[1]
    even = scratch[2]
    odd = scratch[3]
    w_odd[:] = 0.0
    total[:] = 1.0
    for j in range(n - 1, -1, -1):
        column = dither[j]
        row = group[j]
        for b in range(blocks):
            # the dither is not needed again: its place takes the offset
            column[b], row[b] = _offset_group(coset[b] * 0.5, column[b], bins)
        for b in range(blocks):
            even[b] = class_mass[row[b]]
            odd[b] = class_mass[row[b] ^ 1]
        if j < n - 1:
            _parity_levels(even, odd, total, w_odd, levels, level_if[0, j], level_if[1, j])
        for b in range(blocks):
            w_even_next = total[b]
            w_odd_next = w_odd[b]
            total[b] = even[b] * w_even_next + odd[b] * w_odd_next
            w_odd[b] = even[b] * w_odd_next + odd[b] * w_even_next


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _parity_levels(even, odd, w_even, w_odd, levels, if_even, if_odd):  # pragma: no cover
    """``CosetGeometry.probability_odd`` of one column as model levels, if an even
    (``if_even``) or an odd (``if_odd``) sum is still required of it and the rest."""
    for b in range(even.size):
        odd_mass = odd[b] * w_odd[b]
        if_even[b] = _binary_level(odd_mass / (odd_mass + even[b] * w_even[b]), levels)
        odd_mass = odd[b] * w_even[b]
        if_odd[b] = _binary_level(odd_mass / (odd_mass + even[b] * w_odd[b]), levels)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def lattice_decode(  # pragma: no cover - compiled
    uniforms,
    cosets,
    scale,
    bins,
    class_mass,
    k_min,
    num_symbols,
    first_binary,
    levels,
    x,
    words,
    freq,
    cum,
    bucket_symbol,
    escapes,
    max_escape,
    k_out,
    coset_out,
    unit_out,
    group,
    level_if,
    required,
    coset_level,
    totals,
    scratch,
    dither,
    indices,
):
    """``DitheredLatticeStage._decode`` and the unit values of ``read_side`` in one pass
    over the stream, with the same float64 operations in the same order.

    ``uniforms`` are the shared uniforms (the dither halved) in client order (block
    ``b``'s coordinate ``j`` at ``b n + j``, ``n = k_out.shape[0]``), ``class_mass``
    flattened, ``x`` the uint64 coder states (updated). Fills ``k_out`` (int32, shape
    ``(n, blocks)``), ``coset_out`` (uint8, zeros for D4) and ``unit_out`` (``scale (k +
    offset)`` in client order). Returns ``(position, status, escapes found, a coset
    over 1, a bad escape)``; status 0, 1 (stream truncated) or 4 (a parity over 1), after
    which the outputs are partial.

    The stream holds segments of ``blocks`` symbols: the coset bits (E8), the parities of
    coordinates ``0..n-2``, then ``k`` of every coordinate. The rANS step is written out
    in the loop of the two-symbol rows (``_Coder``'s coset and parity bits, whose symbol
    is ``slot >= cum[h, 1]``, the lookup's answer without its table, and whose frequencies
    are ``cum[h, 1]`` and ``2**14 - cum[h, 1]``) and in that of the
    class rows: a helper taking the arrays would cost reference counting per symbol.

    The rest are work arrays of ``blocks`` columns, reused across calls (a server decodes
    every client alike): ``group`` (int16, ``n`` rows),
    ``level_if`` (uint8, ``(2, n, blocks)``: the parity bits' model levels if an even or
    an odd sum is still required), ``required`` (uint8), ``coset_level`` (int32),
    ``totals`` (2 rows), ``scratch`` (4 rows), ``dither`` (``n`` rows: the dither in
    columns, as the numpy code's, then the offsets) and ``indices`` (int32).
    """
    n, blocks = k_out.shape
    required[:] = 0
    for b in range(blocks):
        for j in range(n):
            dither[j, b] = uniforms[b * n + j] * 2.0  # exact
    if cosets == 2:
        # P(c = 1 | w) = Z_1 / (Z_0 + Z_1) with Z_c the total weight of coset c
        _coset_totals(dither, bins, class_mass, totals, scratch, indices)
        for b in range(blocks):
            coset_level[b] = _binary_level(totals[1, b] / (totals[0, b] + totals[1, b]), levels)
    mask = np.uint64((1 << _PROB_BITS) - 1)
    available = words.size
    escape = num_symbols // 2
    position = 0
    found = 0
    coset_over = False
    bad_escape = False
    index = 0
    for segment in range(0 if cosets == 2 else 1, 2 * n):
        # segment 0: coset bits; 1..n-1: parities of column segment - 1; n..2n-1: k of
        # column segment - n
        column = segment - 1 if segment < n else segment - n
        if segment == 1:  # every block's coset is known
            _lattice_geometry(dither, coset_out, bins, class_mass, levels, group, level_if, scratch)
        parity_over = False
        if segment < n:
            # two-symbol rows (the coset and parity bits): the symbol is the slot's side
            # of cum[h, 1], no lookup table
            for b in range(blocks):
                if segment == 0:
                    h = first_binary + coset_level[b]
                else:
                    h = first_binary + level_if[required[b], column, b]
                lane = index & (_LANES - 1)
                index += 1
                state = x[lane]
                slot = state & mask
                split = np.uint64(cum[h, 1])
                one = np.uint64(slot >= split)
                symbol = np.intp(one)
                # frequency split or 2**14 - split, start 0 or split: selects, not loads
                # that wait for the symbol
                frequency = split + one * (np.uint64(1 << _PROB_BITS) - split - split)
                state = frequency * (state >> np.uint64(_PROB_BITS)) + slot - one * split
                if state < np.uint64(_STATE_LOW):
                    if position >= available:
                        x[lane] = state
                        return position, _LATTICE_TRUNCATED, found, coset_over, bad_escape
                    state = (state << np.uint64(16)) | np.uint64(words[position])
                    position += 1
                x[lane] = state
                if segment == 0:
                    coset_over |= symbol > 1
                    coset_out[b] = symbol
                else:
                    parity_over |= symbol > 1
                    required[b] ^= symbol & 1
                    # the group becomes 2 bin + parity of k (y's parity plus the floor's)
                    group[column, b] ^= symbol & 1
        else:
            # the class rows of k: rans_decode_part's step
            for b in range(blocks):
                if column == n - 1:
                    group[column, b] ^= required[b]  # the block's sum is even
                h = group[column, b]
                lane = index & (_LANES - 1)
                index += 1
                state = x[lane]
                slot = state & mask
                symbol = np.intp(bucket_symbol[h, slot >> np.uint64(_BUCKET_SHIFT)])
                while np.uint64(cum[h, symbol + 1]) <= slot:
                    symbol += 1
                state = np.uint64(freq[h, symbol]) * (state >> np.uint64(_PROB_BITS)) + slot
                state -= np.uint64(cum[h, symbol])
                if state < np.uint64(_STATE_LOW):
                    if position >= available:
                        x[lane] = state
                        return position, _LATTICE_TRUNCATED, found, coset_over, bad_escape
                    state = (state << np.uint64(16)) | np.uint64(words[position])
                    position += 1
                x[lane] = state
                k_parity = h & 1
                k = k_min + k_parity + 2 * symbol
                if symbol == escape:
                    if found < escapes.size:
                        k = escapes[found]
                        bad_escape |= (
                            abs(k) > max_escape
                            or (k_min <= k < k_min + num_symbols)
                            or (k & 1) != k_parity
                        )
                    found += 1
                k_out[column, b] = k
                fraction = dither[column, b]  # now the offset
                unit_out[b * n + column] = scale * (k + fraction)
        if parity_over:
            return position, _LATTICE_BAD_PARITY, found, coset_over, bad_escape
    return position, 0, found, coset_over, bad_escape


@numba.njit(cache=True, nogil=True, error_model="numpy")
def lattice_code_models(  # pragma: no cover - compiled
    uniforms,
    y,
    coset,
    cosets,
    bins,
    class_mass,
    levels,
    first_binary,
    k_min,
    num_symbols,
    symbols,
    rows,
    k_out,
    escapes,
    group,
    level_if,
    totals,
    scratch,
    dither,
    indices,
):
    """The encoder's half of ``lattice_decode``: for the nearest points ``y`` (float64,
    ``(n, blocks)``) and their ``coset`` bits, the stream's ``symbols`` (uint8: the
    coset bits (E8), the parities of columns ``0..n-2``, then every ``k`` as its class
    symbol or the escape) and their model ``rows`` (uint16), ``k = y + floor``
    (``k_out``, int32: escapes beyond its range are refused by the caller) and the
    escaped values in stream order (``escapes``, int64; their count is returned), as
    ``DitheredLatticeStage._code`` computes them; work arrays as ``lattice_decode``'s.
    """
    n, blocks = y.shape
    for b in range(blocks):
        for j in range(n):
            dither[j, b] = uniforms[b * n + j] * 2.0  # exact
    base = 0
    if cosets == 2:
        _coset_totals(dither, bins, class_mass, totals, scratch, indices)
        for b in range(blocks):
            p_coset = totals[1, b] / (totals[0, b] + totals[1, b])
            rows[b] = first_binary + _binary_level(p_coset, levels)
            symbols[b] = coset[b]
        base = blocks
    _lattice_geometry(dither, coset, bins, class_mass, levels, group, level_if, scratch)
    required = indices  # the parity still required of columns j..n-1, per block
    required[:] = 0
    for j in range(n - 1):
        for b in range(blocks):
            at = base + j * blocks + b
            parity = np.intp(y[j, b]) & 1
            rows[at] = first_binary + level_if[required[b], j, b]
            symbols[at] = parity
            required[b] ^= parity
    base += (n - 1) * blocks
    escape = num_symbols // 2
    found = 0
    for j in range(n):
        for b in range(blocks):
            at = base + j * blocks + b
            shifted = coset[b] * 0.5 - uniforms[b * n + j] * 2.0
            point = np.intp(y[j, b])
            k = point + np.intp(np.floor(shifted))
            k_out[j, b] = k
            k_parity = k & 1
            rows[at] = group[j, b] ^ (point & 1)  # 2 bin + parity of k
            symbol = (k - k_min - k_parity) >> 1
            if symbol < 0 or symbol >= escape:
                escapes[found] = k
                found += 1
                symbol = escape
            symbols[at] = symbol
    return found


def draw_stream_bytes(key, out) -> None:
    """Fill ``out`` (contiguous uint8, a multiple of 8 bytes) with the Philox ``key``'s
    stream bytes: ``quicdesign.randomness.key_stream_bytes`` into a given array."""
    generator = np.random.Philox(key=key)  # alive while the kernel draws from it
    interface = generator.ctypes
    next_word = ctypes.cast(interface.next_uint64, ctypes.c_void_p).value
    _draw_stream(out, next_word, interface.state_address)


@numba.njit(cache=True, nogil=True)
def _draw_stream(out, next_word, state):  # pragma: no cover - compiled
    _draw_bytes(out, next_word, state, out.size)
