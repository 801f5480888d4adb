"""numba kernels; each mirrors a numpy code path exactly (same operations, same order)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["gather_accumulate", "sender_levels", "pack_codes"]


@numba.njit(cache=True, nogil=True)
def gather_accumulate(accumulator, tables, indices):  # pragma: no cover - compiled
    """``accumulator[i] += tables[c, indices[c, i]]`` for ``c = 0, 1, ...`` in order.

    One pass over the accumulator for a block of clients. Per coordinate the additions
    happen in client order, exactly as a sequence of ``accumulator += decoded_c`` numpy
    adds, so the float64 sums are bit-identical to the numpy path.
    """
    clients, size = indices.shape
    for i in range(size):
        total = accumulator[i]
        for c in range(clients):
            total += tables[c, indices[c, i]]
        accumulator[i] = total


@numba.njit(cache=True, nogil=True)
def _search_event(breakpoints, value, last_open):  # pragma: no cover - compiled
    """``clip(searchsorted(breakpoints, value, side="right") - 1, 0, last_open)``."""
    low, high = 0, breakpoints.size
    while low < high:
        middle = (low + high) >> 1
        if value < breakpoints[middle]:
            high = middle
        else:
            low = middle + 1
    return min(max(low - 1, 0), last_open)


@numba.njit(cache=True, nogil=True)
def sender_levels(
    values, shared, low, per_unit, first, dirty, level_table, event_shared, breakpoints, last_open
):  # pragma: no cover - compiled
    """One pass of :meth:`SenderRule.sample` before the coin flips.

    ``low`` and ``per_unit`` have the dtype of ``values`` (float32 or float64), so the
    bucket index is rounded exactly as numpy's ``(values - low) * per_unit``. Returns the
    deterministic levels, the randomizing positions in increasing order (their count) and
    the event randomizing at each of them.
    """
    size = values.size
    messages = np.empty(size, dtype=level_table.dtype)
    randomizing = np.empty(size, dtype=np.intp)
    events = np.empty(size, dtype=np.intp)
    top = first.size - 1
    num_shared = level_table.shape[1]
    count = 0
    for i in range(size):
        value = values[i]
        position = (value - low) * per_unit
        # numpy's clip(position, 0, top), then truncation to intp; NaN takes bucket 0
        # (numpy would fail on it) so no index ever leaves the tables
        bucket = 0
        if position > top:
            bucket = top
        elif position >= 0:
            bucket = np.intp(position)
        if dirty[bucket]:
            event = _search_event(breakpoints, np.float64(value), last_open)
        else:
            event = np.intp(first[bucket])
        h = shared[i]
        if h < 0 or h >= num_shared:
            raise IndexError("a shared value is outside [0, H)")
        messages[i] = level_table[event, h]
        if event_shared[event] == h:
            randomizing[count] = i
            events[count] = event
            count += 1
    return messages, randomizing[:count], events[:count]


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
