"""numba kernels; each mirrors a numpy code path exactly (same operations, same order)."""

from __future__ import annotations

import numba

__all__ = ["gather_accumulate"]


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
