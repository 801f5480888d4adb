"""The optimal unbiased sender rule for a receiver table R.

This module is the one implementation of the rule; the design layer (objective,
gradient, verification) and the runtime encoder both build on :class:`SenderRule`.

For a fixed receiver table ``R`` of shape ``(H, K)`` (rows sorted increasingly in the
message ``x``) and a value ``z``, the sender must pick, for every shared value ``h``, a
distribution over messages so that the decoded value is unbiased,
``mean_h E[R(h, X)] = z``, with the least ``mean_h E[R(h, X)^2]``. By the Lagrangian every
``h`` sends the level nearest a common target, so the solution is a greedy over the
``H (K - 1)`` "events" (``h`` moves from level ``j`` to ``j + 1``) sorted by their slope
``R(h, j) + R(h, j + 1)``. Each event raises the mean by ``(R(h, j+1) - R(h, j)) / H``;
the cumulative sums are the breakpoints ``t_0 <= t_1 <= ... <= t_E``. On the piece
``[t_{k-1}, t_k]`` events ``1..k-1`` have fired and event ``k``'s ``h`` randomizes between
its two adjacent levels; every other ``h`` is deterministic.
"""

from __future__ import annotations

import numpy as np

from ._kernels import compiled_kernels
from ._workspace import work_array
from .errors import InputDTypeError, InputVectorError, TableError

__all__ = ["SenderRule"]

# Marks a dirty bucket in the per-bucket mover table: above every h (the level table
# caps H * H at 2**25 entries, so H < 2**13).
_DIRTY_BUCKET = 1 << 16

# Above this many entries the (pieces x H) level table is not materialized.
_MAX_LEVEL_TABLE_ENTRIES = 1 << 25


# The compiled sender's state table: at most about this many bytes (a quarter of L2: the
# tiles' streams and the rest of the encode share it), and at least this many buckets.
# At b = 8 (H = 8) half the buckets of a 512 KiB table, twice the dirty values: 0.1 ms
# less per 2**20 encode, their steps being cheap (``kernels._tile_flagged``).
_MAX_STATE_TABLE_BYTES = 1 << 18
_MIN_STATE_BUCKETS = 64


def _bucketable(num_buckets, low, high) -> bool:
    """Whether ``num_buckets`` uniform buckets over ``[low, high]`` have a finite scale."""
    span = high - low
    return bool(
        span > 0 and np.isfinite(num_buckets / span) and np.isfinite(num_buckets * abs(low) / span)
    )


def _bucket_margin(num_buckets, low, high, per_unit) -> float:
    """How far beyond a bucket's edges a value computed into it may lie (value units)."""
    # float32 index error: ~1e-7 relative on each of |value - low| and the product.
    return (1e-3 + 4e-7 * (num_buckets + (abs(low) + abs(high)) * per_unit)) / per_unit


# Values per step of the numpy sender (its temporaries stay in L2).
_NUMPY_TILE = 1 << 17


def piece_tables(breakpoints):
    """Per piece ``e``: its first breakpoint, its width ``t[e + 1] - t[e]`` and whether
    any piece is empty (the tables :func:`piece_fractions` reads)."""
    width = breakpoints[1:] - breakpoints[:-1]
    return breakpoints[:-1], width, bool(np.any(~(width > 0)))


def piece_fractions(values, event, start, width, has_empty) -> np.ndarray:
    """Where each value lies on its event's piece, clipped to ``[0, 1]``; 1 on an empty
    piece (the probability that the event has fired)."""
    widths = width[event]
    # a subnormal width can overflow the quotient: inf, clipped to 1 (as compiled)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fraction = values - start[event]
        fraction /= widths
    if has_empty:
        fraction[~(widths > 0)] = 1.0
    np.clip(fraction, 0.0, 1.0, out=fraction)
    # -0.0 at a piece starting at 0 gives -0.0, which np.clip keeps from numpy 2.1 on and
    # turns into +0.0 before: + 0.0 makes it +0.0 on every numpy, as the compiled sender
    fraction += 0.0
    return fraction


def _check_row_sizes(rows, factors, shared) -> None:
    """The row samplers' arrays as they index them (the compiled pass has no bounds
    checks): 2-D float rows, one factor per row, one ``h`` per value."""
    if not isinstance(rows, np.ndarray) or rows.dtype not in (np.float32, np.float64):
        raise InputDTypeError(
            f"rows must be a float32 or float64 array, got {getattr(rows, 'dtype', type(rows))}"
        )
    if rows.ndim != 2 or np.shape(factors) != rows.shape[:1] or np.size(shared) != rows.size:
        raise InputVectorError(
            f"rows must be 2-D with one factor per row and one shared value per value, "
            f"got {rows.shape}, {np.shape(factors)} and {np.size(shared)}"
        )


def _outside(values, lower, upper) -> np.ndarray:
    """Where ``values`` lie outside ``[lower, upper]``, compared as the codec compares."""
    return np.abs(values) > upper if lower == -upper else (values < lower) | (values > upper)


class SenderRule:
    """Closed-form optimal sender for a receiver table.

    Parameters
    ----------
    receiver : array_like, shape (H, K)
        Receiver table ``R[h, x]``; every row must be finite and non-decreasing in ``x``.

    Attributes
    ----------
    event_shared : ndarray of int64, shape (E,)
        The ``h`` of each event, in firing order.
    event_level : ndarray of int64, shape (E,)
        The level ``j`` the event's ``h`` leaves (it moves to ``j + 1``).
    slopes : ndarray, shape (E,)
        ``R(h, j) + R(h, j + 1)`` of each event, non-decreasing.
    breakpoints : ndarray, shape (E + 1,)
        ``t_0 .. t_E``: the unbiased mean after ``0 .. E`` events.
    second_moments : ndarray, shape (E + 1,)
        ``mean_h R(h, level_h)^2`` after ``0 .. E`` events.
    """

    def __init__(self, receiver):
        receiver = np.array(receiver, dtype=np.float64)
        if receiver.ndim != 2 or receiver.shape[0] < 1 or receiver.shape[1] < 2:
            raise TableError(
                f"receiver table must have shape (H >= 1, K >= 2), got {receiver.shape}"
            )
        if not np.all(np.isfinite(receiver)):
            raise TableError("receiver table contains non-finite values")
        if np.any(np.diff(receiver, axis=1) < 0):
            raise TableError("receiver table rows must be non-decreasing in the message x")
        receiver.setflags(write=False)
        self.receiver = receiver
        num_shared, num_messages = receiver.shape
        self.num_shared = num_shared
        self.num_messages = num_messages

        slopes = receiver[:, :-1] + receiver[:, 1:]
        # Stable sort on the h-major flattening keeps each h's events in level order on ties.
        order = np.argsort(slopes, axis=None, kind="stable")
        self.event_shared = order // (num_messages - 1)
        self.event_level = order % (num_messages - 1)
        self.slopes = slopes.ravel()[order]
        low = receiver[self.event_shared, self.event_level]
        high = receiver[self.event_shared, self.event_level + 1]
        self.breakpoints = np.concatenate(
            ([receiver[:, 0].mean()], receiver[:, 0].mean() + np.cumsum((high - low) / num_shared))
        )
        start_second = np.mean(receiver[:, 0] ** 2)
        self.second_moments = np.concatenate(
            ([start_second], start_second + np.cumsum((high**2 - low**2) / num_shared))
        )
        # Position of each event (h, j) in firing order, shape (H, K - 1).
        self.event_position = np.empty(order.size, dtype=np.int64)
        self.event_position[order] = np.arange(order.size)
        self.event_position = self.event_position.reshape(num_shared, num_messages - 1)
        self._level_table = None
        self._bucket_cache = None
        self._state_cache = None
        self._windows = None
        self._flagged_cache = None
        self._pieces_cache = None
        self._numpy_windows = None
        self._build_locator()

    @property
    def num_events(self) -> int:
        """Number of events ``E = H (K - 1)``."""
        return self.event_shared.size

    @property
    def support(self) -> tuple[float, float]:
        """The interval ``[t_0, t_E]`` on which the rule is unbiased."""
        return float(self.breakpoints[0]), float(self.breakpoints[-1])

    def level_table(self) -> np.ndarray:
        """Levels before each event: ``table[k, h]`` is the level of ``h`` after ``k`` events.

        Returns
        -------
        ndarray of uint8 or uint16, shape (E, H)
        """
        if self._level_table is None:
            events, num_shared = self.num_events, self.num_shared
            if events * num_shared > _MAX_LEVEL_TABLE_ENTRIES:
                raise TableError(
                    f"level table of {events} x {num_shared} entries is too large to build"
                )
            dtype = np.uint8 if self.num_messages <= 256 else np.uint16
            fired = np.zeros((events, num_shared), dtype=dtype)
            fired[np.arange(1, events), self.event_shared[:-1]] = 1
            self._level_table = np.cumsum(fired, axis=0, dtype=dtype)
        return self._level_table

    def _build_locator(self):
        """Uniform buckets over the support mapping values to pieces in O(1).

        ``np.searchsorted`` costs ~70 ns per value (branchy binary search); a bucket
        lookup is a multiply and a gather. A bucket is "clean" when no breakpoint lies in
        it even after widening it by more than the rounding error of the bucket index
        (computed in float32 for float32 input); values in other buckets fall back to
        searchsorted.
        """
        t = self.breakpoints
        open_pieces = np.flatnonzero(np.diff(t) > 0)
        self._last_open = int(open_pieces[-1]) if open_pieces.size else 0
        low, high = float(t[0]), float(t[-1])
        span = high - low
        num_buckets = int(min(1 << 16, max(1024, 1 << int(np.ceil(np.log2(64 * t.size))))))
        if not _bucketable(num_buckets, low, high):
            self._locator = (low, 0.0, np.zeros(1, np.int32), np.zeros(1, bool))
            self._dirty = np.ones(1, bool)
            return
        per_unit = num_buckets / span
        edges = low + np.arange(num_buckets + 1) / per_unit
        margin = _bucket_margin(num_buckets, low, high, per_unit)
        first = np.searchsorted(t, edges[:-1], side="right") - 1
        inner_low = np.searchsorted(t, edges[:-1] - margin, side="left")
        inner_high = np.searchsorted(t, edges[1:] + margin, side="right")
        clean = inner_high == inner_low
        first = np.clip(first, 0, self._last_open).astype(np.int32)
        self._locator = (low, per_unit, first, clean)
        self._dirty = ~clean

    def _buckets(self, values):
        """``(values, bucket, dirty)``: float32/64 values, intp buckets, and the
        positions whose bucket holds a breakpoint (they need a binary search)."""
        values, bucket = self._bucket_index(values)
        return values, bucket, np.flatnonzero(self._dirty[bucket])

    def _bucket_index(self, values):
        """``(values, bucket)``: float32/64 values and their intp buckets."""
        low, per_unit, first, _ = self._locator
        values = np.asarray(values)
        if values.dtype != np.float32:
            values = values.astype(np.float64, copy=False)
        bucket = values - values.dtype.type(low)
        bucket *= values.dtype.type(per_unit)
        np.clip(bucket, 0, first.size - 1, out=bucket)
        # intp indices gather several times faster than int32 ones in numpy.
        return values, bucket.astype(np.intp)

    def _search(self, values) -> np.ndarray:
        found = np.searchsorted(self.breakpoints, values, side="right") - 1
        return np.clip(found, 0, self._last_open)

    def locate(self, values) -> np.ndarray:
        """Index of the event randomizing at each value (values inside the support).

        Returns
        -------
        ndarray of int32
        """
        values, bucket, dirty = self._buckets(values)
        event = self._locator[2][bucket]
        if dirty.size:
            event[dirty] = self._search(values[dirty])
        return event

    def _fraction(self, values, event) -> np.ndarray:
        if self._pieces_cache is None:
            self._pieces_cache = piece_tables(self.breakpoints)
        return piece_fractions(values, event, *self._pieces_cache)

    def pieces(self, values) -> tuple[np.ndarray, np.ndarray]:
        """Locate values on the pieces of the rule.

        Parameters
        ----------
        values : ndarray
            Points inside :attr:`support`.

        Returns
        -------
        event : ndarray of int64
            0-based index of the event that randomizes at each value.
        fraction : ndarray of float64
            Probability that this event has fired, in ``[0, 1]``.
        """
        values = np.asarray(values, dtype=np.float64)
        event = self.locate(values)
        return event, self._fraction(values, event)

    def message_probabilities(self, values) -> np.ndarray:
        """Full sender distribution ``P(x | h, z)``.

        Parameters
        ----------
        values : ndarray, shape (n,)
            Points inside :attr:`support`.

        Returns
        -------
        ndarray, shape (n, H, K)
        """
        event, fraction = self.pieces(values)
        levels = self.level_table()[event]  # (n, H)
        probs = np.zeros((event.size, self.num_shared, self.num_messages))
        rows = np.arange(event.size)[:, None]
        probs[rows, np.arange(self.num_shared)[None, :], levels] = 1.0
        moving_h = self.event_shared[event]
        moving_level = self.event_level[event]
        probs[np.arange(event.size), moving_h, moving_level] = 1.0 - fraction
        probs[np.arange(event.size), moving_h, moving_level + 1] = fraction
        return probs

    def sample(self, values, shared, uniforms=None, rng=None) -> np.ndarray:
        """Draw messages for values inside the support.

        Parameters
        ----------
        values : ndarray of float, shape (n,)
            Points; values outside :attr:`support` are treated as its nearest end.
        shared : ndarray of int, shape (n,)
            Shared random values ``h`` in ``[0, H)``.
        uniforms : ndarray of float, shape (n,), optional
            Private uniforms in ``[0, 1)``; only entries at randomizing positions are used.
        rng : numpy.random.Generator, optional
            Used to draw the private uniforms needed when ``uniforms`` is not given.

        Returns
        -------
        ndarray of uint8 (uint16 when K > 256), shape (n,)

        Raises
        ------
        InputDTypeError
            If ``values`` is not real or ``shared`` not integer.
        InputVectorError
            If the shapes differ or are not 1-D, an ``h`` is outside ``[0, H)`` or a value
            is NaN (the compiled sender reads ``shared`` unchecked).
        """
        values, shared = self._checked_sample_input(values, shared, uniforms)
        kernels = compiled_kernels()
        if kernels is not None:
            messages, randomizing, fraction = self._sample_compiled(kernels, values, shared)
        else:
            values, messages, randomizing, event = self._levels(values, shared)
            fraction = self._fraction(values[randomizing].astype(np.float64), event)
        if randomizing.size:
            self._flip_coins(messages, randomizing, fraction, uniforms, rng)
        return messages

    def _checked_sample_input(self, values, shared, uniforms):
        """``(values, shared)`` as arrays, checked as :meth:`sample` documents."""
        values, shared = np.asarray(values), np.asarray(shared)
        if values.dtype.kind not in "iuf":
            raise InputDTypeError(f"values must be real numbers, got {values.dtype}")
        if shared.dtype.kind not in "iu":
            raise InputDTypeError(f"shared values must be integers, got {shared.dtype}")
        if values.ndim != 1 or shared.shape != values.shape:
            raise InputVectorError(
                f"values and shared must be 1-D of one length, got {values.shape} and "
                f"{shared.shape}"
            )
        if uniforms is not None and np.shape(uniforms) != values.shape:
            raise InputVectorError(f"uniforms must have shape {values.shape}")
        if shared.size and not (0 <= shared.min() and shared.max() < self.num_shared):
            raise InputVectorError(f"a shared value is outside [0, {self.num_shared})")
        if values.dtype.kind == "f" and values.size and np.isnan(np.min(values)):
            raise InputVectorError("values must not be NaN")
        return values, shared

    @staticmethod
    def _flip_coins(messages, randomizing, fraction, uniforms, rng):
        """Raise the randomizing positions' levels by one with probability ``fraction``."""
        if uniforms is None:
            if rng is None:
                rng = np.random.default_rng()
            draws = rng.random(randomizing.size)
        else:
            draws = np.asarray(uniforms)[randomizing]
        messages[randomizing] += (draws < fraction).astype(messages.dtype)

    def sample_rows(self, kernels, rows, factors, bounds, shared, rng, workspace=None):
        """Compiled: :meth:`sample` of ``z = (rows * factors[:, None]).reshape(-1)`` and
        the positions of ``z`` outside ``bounds``, without materializing ``z``.

        Parameters
        ----------
        kernels : module
            The compiled kernels.
        rows : ndarray of float32 or float64, shape (k, m)
            C-contiguous.
        factors : ndarray, shape (k,)
            In the dtype of ``rows``.
        bounds : tuple of float
            ``(lower, upper)``: ``z`` outside them is reported (compared as numpy
            compares an array of ``z`` with these scalars).
        shared : ndarray of int, shape (k * m,)
            Shared values ``h``.
        rng : numpy.random.Generator
            Draws the private uniforms (the same draws as :meth:`sample`).
        workspace : quicdesign._workspace.Workspace, optional
            Work arrays for the levels, the randomizing positions and the draws (fresh
            arrays without); the returned arrays may then be views of it.

        Returns
        -------
        messages : ndarray
            As :meth:`sample` returns for ``z``.
        outside : ndarray of intp
            Increasing positions of ``z`` outside ``bounds``.
        outside_values : ndarray
            ``z`` there, in the dtype of ``rows``.
        """
        _check_row_sizes(rows, factors, shared)
        compare = np.result_type(rows.dtype, *bounds)  # numpy's loop for ``z < lower``
        messages, randomizing, fraction, outside, outside_values = self._states_compiled(
            kernels,
            rows,
            factors,
            compare.type(bounds[0]),
            compare.type(bounds[1]),
            shared,
            workspace,
        )
        if randomizing.size:
            # numpy's draws (the same stream as sample's), applied in one compiled pass
            # a little spare room: the count varies from call to call
            spare = randomizing.size + randomizing.size // 8 + 1024
            draws = work_array(workspace, "sender draws", spare, np.float64)[: randomizing.size]
            kernels.flip_coins(messages, randomizing, fraction, rng.random(out=draws))
        return messages, outside, outside_values

    def _states_compiled(self, kernels, rows, factors, lower, upper, shared, workspace=None):
        """``kernels.sender_states`` of ``rows * factors[:, None]`` with this rule's tables
        (its output and work arrays from ``workspace`` when given)."""
        low, per_unit, *tables = self._state_tables()
        kind = rows.dtype.type
        size = rows.size
        work = kernels.sender_work_size(size, self.num_shared)
        return kernels.sender_states(
            rows,
            factors,
            lower,
            upper,
            np.ascontiguousarray(shared.reshape(-1)),
            kind(low),
            kind(per_unit),
            self.num_shared,
            *tables,
            work_array(workspace, "sender levels", size, self.level_table().dtype),
            work_array(workspace, "sender randomizing", work, np.intp),
            work_array(workspace, "sender fractions", work, np.float64),
        )

    def _sample_compiled(self, kernels, values, shared):
        """The deterministic levels, the randomizing positions and their fractions of
        :meth:`sample` in one compiled pass (bit-identical, ``tests/test_kernels.py``)."""
        values = np.ascontiguousarray(values).reshape(1, -1)
        if values.dtype != np.float32:
            values = np.ascontiguousarray(values, dtype=np.float64)
        kind = values.dtype.type
        infinite = kind(np.inf)
        messages, randomizing, fraction, _, _ = self._states_compiled(
            kernels, values, np.ones(1, dtype=kind), -infinite, infinite, shared
        )
        return messages, randomizing, fraction

    def _state_tables(self):
        """For the compiled sender (``kernels.sender_states``): ``(low, per_unit, states,
        next_threshold, steps, piece_bounds)``, built once.

        ``h``'s state ``s = 2 level + moving`` is nondecreasing in the value. Per bucket
        (widened by the index's rounding error, as the locator's) and ``h``: the state at
        its low end and whether it changes inside (few do: only ``h``'s own breakpoints
        change it, so the buckets can be few and the table small). Per ``(h, s)``: the
        breakpoint at which ``s`` is left and the state entered there (``steps``: ``s``
        and that state side by side), so a dirty entry is finished exactly by comparisons.
        Per ``(h, level)``: the start and the width of the piece on which ``h`` randomizes
        (``piece_bounds``, the event's breakpoint and the difference of its two).
        """
        if self._state_cache is None:
            t, last = self.breakpoints, self._last_open
            num_shared, num_messages = self.num_shared, self.num_messages
            dtype = next(
                d
                for d in (np.uint8, np.uint16, np.uint32)
                if num_messages <= 1 + (np.iinfo(d).max >> 2)
            )
            low, high = float(t[0]), float(t[-1])
            # ~16 buckets per breakpoint: a value's entry is dirty with probability
            # about 2 / (16 H), so the table is small for large H
            limit = _MAX_STATE_TABLE_BYTES // (num_shared * np.dtype(dtype).itemsize)
            num_buckets = min(16 * t.size, limit)
            num_buckets = max(_MIN_STATE_BUCKETS, 1 << max(0, int(num_buckets - 1).bit_length()))
            if _bucketable(num_buckets, low, high):
                per_unit = num_buckets / (high - low)
                edges = low + np.arange(num_buckets + 1) / per_unit
                margin = _bucket_margin(num_buckets, low, high, per_unit)
                below = np.searchsorted(t, edges[:-1] - margin, side="right") - 1
                above = np.searchsorted(t, edges[1:] + margin, side="right") - 1
            else:  # one bucket holding every value
                per_unit, below, above = 0.0, np.zeros(1, np.intp), np.full(1, last)
            below, above = np.clip(below, 0, last), np.clip(above, 0, last)
            num_states = 2 * num_messages
            states = np.empty((below.size, num_shared), dtype=dtype)
            next_threshold = np.empty((num_shared, num_states), dtype=np.float64)
            steps = np.empty((num_shared, num_states, 2), dtype=np.intp)
            every = np.arange(num_states)
            levels = self.level_table()
            for h in range(num_shared):  # one h at a time: O(E) memory
                # h's state after each reachable event count
                state = 2 * levels[: last + 1, h].astype(np.intp)
                state += self.event_shared[: last + 1] == h
                start = state[below]
                dirty = state[above] != start
                states[:, h] = (start >> 1 << 2) | (dirty << 1) | (start & 1)
                # the first reachable event with a larger state than s
                leave = np.searchsorted(state, every, side="right")
                ends = leave > last
                at = np.minimum(leave, last)
                # NaN where s is never left: no value (not even +inf) passes it, so the
                # kernel's steps always raise s and end
                next_threshold[h] = np.where(ends, np.nan, np.where(leave == 0, -np.inf, t[at]))
                steps[h, :, 0] = every
                steps[h, :, 1] = np.where(ends, every, state[at])
            event = self.event_position.reshape(-1)
            start, width, _ = piece_tables(t)
            piece_bounds = np.stack([start[event], width[event]], axis=1)
            self._state_cache = (
                low,
                per_unit,
                states.reshape(-1),
                next_threshold.reshape(-1),
                steps.reshape(-1),
                piece_bounds.reshape(-1),
            )
        return self._state_cache

    def sample_rows_numpy(self, rows, factors, bounds, shared, rng, workspace=None):
        """:meth:`sample_rows` in numpy, the same bits (``tests/test_sender.py``).

        Tiles of a row are scaled, bucketed and looked up in the flagged per-bucket
        table (one gather per value answers level, mover and dirty); only the flagged
        values (a few percent) are revisited, tile by tile (the coin flips' uniforms
        drawn tile by tile are the same sequence). The table index ``bucket * H + h`` is
        formed in the values' float type (exact below ``2**24``) from the bucket of
        :meth:`_bucket_index`. Values outside ``bounds`` lie in the end buckets, which
        are dirty, so they are found among the flagged ones. Needs ``H`` a power of two
        and finite values, ``shared`` in ``[0, H)``; for other tables :meth:`sample` on
        the materialized ``z`` is used. The tiles' temporaries come from ``workspace``
        (:mod:`quicdesign._workspace`) if given.
        """
        _check_row_sizes(rows, factors, shared)
        num_shared = self.num_shared
        low, per_unit, first, _ = self._locator
        kind = rows.dtype.type
        if (
            num_shared & (num_shared - 1)
            or first.size * num_shared > 1 << 24  # bucket * H + h exact in float32
            or not (self._dirty[0] and self._dirty[-1])
            or not per_unit < np.finfo(kind).max / 2
        ):
            return self._sample_rows_reference(rows, factors, bounds, shared, rng)
        table, shift = self._flagged_bucket_levels()
        level_mask = (1 << shift) - 1
        num_rows, width = rows.shape
        messages = np.empty(rows.size, dtype=self.level_table().dtype)
        shared = shared.reshape(-1)
        tile = min(width, _NUMPY_TILE)
        z = work_array(workspace, "sender z", tile, rows.dtype)
        position = work_array(workspace, "sender position", tile, rows.dtype)
        index = work_array(workspace, "sender index", tile, np.intp)
        entry = work_array(workspace, "sender entry", tile, table.dtype)
        flagged = work_array(workspace, "sender flagged", tile, bool)
        lower, upper = bounds
        # values outside bounds that reach the support's ends lie in its dirty end
        # buckets; bounds inside the support (entropy tables) need their own comparison
        ends_only = lower <= self.breakpoints[0] and upper >= self.breakpoints[-1]
        outside = []
        for row_index in range(num_rows):
            row, factor = rows[row_index], factors[row_index]
            for start in range(0, width, tile):
                count = min(tile, width - start)
                offset = row_index * width + start
                z_tile, at, where, looked = (
                    z[:count],
                    position[:count],
                    index[:count],
                    entry[:count],
                )
                np.multiply(row[start : start + count], factor, out=z_tile)
                np.subtract(z_tile, kind(low), out=at)
                at *= kind(per_unit)
                np.clip(at, 0, first.size - 1, out=at)
                np.floor(at, out=at)  # the bucket of _bucket_index, then bucket * H + h,
                at *= num_shared  # exact in the float type (below 2**24)
                np.add(at, shared[offset : offset + count], out=at)
                np.copyto(where, at, casting="unsafe")
                np.take(table, where, out=looked)
                np.bitwise_and(
                    looked, level_mask, out=messages[offset : offset + count], casting="unsafe"
                )
                local = np.flatnonzero(np.greater(looked, level_mask, out=flagged[:count]))
                if local.size:
                    bucket = where[local] >> (num_shared.bit_length() - 1)
                    split = self._finish_flagged(
                        messages,
                        local + offset,
                        z_tile[local],
                        looked[local] >> shift,
                        bucket,
                        shared,
                        bounds,
                        rng,
                    )
                    if ends_only:
                        outside.append(split)
                if not ends_only:
                    beyond = np.flatnonzero(_outside(z_tile, lower, upper))
                    outside.append((beyond + offset, z_tile[beyond]))
        if not outside:
            return messages, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=rows.dtype)
        positions, values = (np.concatenate(part) for part in zip(*outside, strict=True))
        return messages, positions, values

    def _finish_flagged(self, messages, positions, values, flags, bucket, shared, bounds, rng):
        """The flagged values of a tile of :meth:`sample_rows_numpy` (``flags``: bit 0
        the mover, bit 1 dirty): search the dirty ones, flip the movers' coins, and
        return the positions and values outside ``bounds`` (all in dirty end buckets)."""
        first, *_ = self._numpy_window_tables()
        event = first[bucket]
        moving = (flags & 1).astype(bool)
        dirty = np.flatnonzero(flags >= 2)
        dirty_values = values[dirty]
        if dirty.size:
            dirty_positions = positions[dirty]
            h = shared[dirty_positions]
            found = self._windowed_search(dirty_values.astype(np.float64), bucket[dirty])
            event[dirty] = found
            messages[dirty_positions] = self.level_table()[found, h]
            moving[dirty] = self.event_shared[found] == h
        chosen = np.flatnonzero(moving)
        if chosen.size:
            fraction = self._fraction(values[chosen].astype(np.float64), event[chosen])
            self._flip_coins(messages, positions[chosen], fraction, None, rng)
        outside = _outside(dirty_values, *bounds)
        return positions[dirty[outside]], dirty_values[outside]

    def _numpy_window_tables(self):
        """For the numpy sender, built once: the first event of every bucket (in the
        narrowest unsigned type), and compact search windows of the dirty buckets
        (small tables stay in cache): a bucket's slot, then per slot the count of
        breakpoints below its window plus one, the window's bounds (infinite where open)
        and its inner breakpoints (infinite past the window). Slot 0 is every clean
        bucket's: its bounds contain no value, so its values are searched in full."""
        if self._numpy_windows is None:
            t = self.breakpoints
            dirty = np.flatnonzero(self._dirty)
            windows = np.concatenate([[[0, 0]], self._search_windows()[dirty]])
            start, stop = windows[:, 0], windows[:, 1]
            below = np.where(start == 0, -np.inf, t[start])
            above = np.where(stop == t.size, np.inf, t[np.minimum(stop, t.size - 1)])
            below[0], above[0] = np.inf, -np.inf
            steps = range(1, int(np.max(stop - start, initial=1)))
            probes = [
                np.where(start + step < stop, t[np.minimum(start + step, t.size - 1)], np.inf)
                for step in steps
            ]
            slot = np.zeros(self._dirty.size, dtype=np.min_scalar_type(dirty.size))
            slot[dirty] = np.arange(1, dirty.size + 1)
            first = self._locator[2].astype(np.min_scalar_type(max(self.num_events, 1)))
            self._numpy_windows = (first, slot, start + 1, below, above, probes)
        return self._numpy_windows

    def _windowed_search(self, values, bucket) -> np.ndarray:
        """:meth:`_search` of float64 values whose buckets are known: the breakpoints
        of each dirty bucket's window are counted (as the compiled ``_search_event``),
        and values outside their window are searched in full."""
        _, slots, base, below, above, probes = self._numpy_window_tables()
        slot = slots[bucket]
        count = base[slot]
        for probe in probes:
            count += probe[slot] <= values
        outside = np.flatnonzero(~((below[slot] <= values) & (values < above[slot])))
        if outside.size:
            count[outside] = np.searchsorted(self.breakpoints, values[outside], side="right")
        return np.clip(count - 1, 0, self._last_open, out=count)

    def _sample_rows_reference(self, rows, factors, bounds, shared, rng):
        """:meth:`sample_rows` by :meth:`sample` on the materialized ``z``."""
        z = (rows * factors[:, None]).reshape(-1)
        outside = np.flatnonzero(_outside(z, *bounds))
        return self.sample(z, shared.reshape(-1), rng=rng), outside, z[outside]

    def _flagged_bucket_levels(self):
        """For the numpy sender: ``(table, shift)`` with ``table[bucket * H + h]`` the
        level of ``h`` in a clean bucket, bit ``shift`` set if the bucket's event moves
        ``h``, bit ``shift + 1`` if the bucket is dirty; built once (one byte per entry
        when ``K <= 64``)."""
        if self._flagged_cache is None:
            first = self._locator[2]
            shift, dtype = (
                next(
                    (shift, dtype)
                    for limit, shift, dtype in ((64, 6, np.uint8), (256, 8, np.uint16))
                    if self.num_messages <= limit
                )
                if self.num_messages <= 256
                else (16, np.uint32)
            )
            levels = self.level_table()[first].astype(dtype)
            moves = self.event_shared[first][:, None] == np.arange(self.num_shared)[None, :]
            levels |= moves.astype(dtype) << dtype(shift)
            levels |= (self._dirty.astype(dtype) << dtype(shift + 1))[:, None]
            self._flagged_cache = (levels.reshape(-1), shift)
        return self._flagged_cache

    def _search_windows(self):
        """Per bucket ``(start, stop)``: the breakpoints bracketing the bucket's edges."""
        if self._windows is None:
            low, per_unit, first, _ = self._locator
            t = self.breakpoints
            windows = np.empty((first.size, 2), dtype=np.intp)
            if per_unit > 0:
                edges = low + np.arange(first.size + 1) / per_unit
                windows[:, 0] = np.maximum(np.searchsorted(t, edges[:-1], side="right") - 1, 0)
                windows[:, 1] = np.searchsorted(t, edges[1:], side="right")
            else:
                windows[:] = (0, t.size)
            self._windows = windows
        return self._windows

    def _levels(self, values, shared):
        """Deterministic levels, the randomizing positions and their events (numpy)."""
        values, bucket = self._bucket_index(values)
        levels, movers = self._bucket_tables()
        # one gather answers both "is h the bucket's mover" and "is the bucket dirty"
        mover_or_dirty = movers[bucket]
        moving = mover_or_dirty == shared
        dirty = np.flatnonzero(mover_or_dirty >= _DIRTY_BUCKET)
        # Clean buckets fix every h's level: index (bucket, h), built in place.
        flat = bucket
        flat *= self.num_shared
        flat += shared
        messages = levels[flat]
        event_of_dirty = None
        if dirty.size:
            event_of_dirty = self._search(values[dirty])
            messages[dirty] = self.level_table()[event_of_dirty, shared[dirty]]
            moving[dirty] = self.event_shared[event_of_dirty] == shared[dirty]
        randomizing = np.flatnonzero(moving)
        moving_bucket = flat[randomizing] // self.num_shared
        event = self._locator[2][moving_bucket]
        if event_of_dirty is not None:
            # Positions both dirty and randomizing take their exact event; only they
            # (a few percent) are looked up in the sorted dirty positions.
            is_dirty = self._dirty[moving_bucket]
            event[is_dirty] = event_of_dirty[np.searchsorted(dirty, randomizing[is_dirty])]
        return values, messages, randomizing, event

    def _bucket_tables(self):
        """Per-bucket level of every h (flattened) and the randomizing h, or
        :data:`_DIRTY_BUCKET` plus it where a breakpoint lies in the bucket; built once."""
        if self._bucket_cache is None:
            first = self._locator[2]
            levels = self.level_table()[first].reshape(-1)
            movers = self.event_shared[first] + _DIRTY_BUCKET * self._dirty
            movers = movers.astype(np.int32)
            self._bucket_cache = (levels, movers)
        return self._bucket_cache

    def mean_square(self, values) -> np.ndarray:
        """``mean_h E[R(h, X)^2 | z]``, linear on each piece."""
        event, fraction = self.pieces(values)
        m = self.second_moments
        return m[event] + fraction * (m[event + 1] - m[event])

    def mse(self, values) -> np.ndarray:
        """Expected squared error of the unbiased estimate at each value."""
        values = np.asarray(values, dtype=np.float64)
        return self.mean_square(values) - values**2
