"""Solver-independent verification of a table: the battery every shipped table passes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from quicdesign.table import Table

from .distributions import StandardNormal
from .objective import evaluate

__all__ = ["VerificationReport", "verify", "TOLERANCE"]

#: Largest violation accepted for unbiasedness and the simplex (float64 arithmetic).
TOLERANCE = 1e-9


@dataclass
class VerificationReport:
    """Maximum violations found by :func:`verify`.

    Attributes
    ----------
    ok : bool
        All hard checks pass within :data:`TOLERANCE`.
    grid_points : int
        Number of checked ``z`` values (a uniform grid plus every breakpoint).
    max_bias : float
        ``max |E[Z_hat | z] - z|`` over the grid.
    max_simplex_violation : float
        ``max |sum_x P(x | h, z) - 1|`` and negativity of probabilities.
    max_mse_mismatch : float
        Largest difference between the per-point error from the probabilities and the
        closed form.
    monotone, finite, covers_support : bool
        Rows non-decreasing in ``x``; all entries finite; the sender is unbiased on the
        whole support.
    recomputed_vnmse : float
        The exact objective on the standard normal.
    recorded_vnmse : float or None
        What the manifest claims.
    symmetric, blocks_sorted, adjacent_messages : bool
        Structural properties of the known optimal tables (reported, not required).
    failures : tuple of str
        Names of the failed hard checks (``finite``, ``monotone``, ``covers_support``,
        ``vnmse_record``, ``bias``, ``simplex``, ``mse``); empty exactly when ``ok``.
    """

    ok: bool
    grid_points: int
    max_bias: float
    max_simplex_violation: float
    max_mse_mismatch: float
    monotone: bool
    finite: bool
    covers_support: bool
    recomputed_vnmse: float
    recorded_vnmse: float | None
    vnmse_matches_record: bool
    symmetric: bool
    blocks_sorted: bool
    adjacent_messages: bool
    failures: tuple = ()

    def as_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {
            k: (bool(v) if isinstance(v, (bool, np.bool_)) else list(v) if k == "failures" else v)
            for k, v in asdict(self).items()
        }


def verify(table: Table, *, grid_points: int = 10001, chunk: int = 2048) -> VerificationReport:
    """Re-check a table's unbiasedness and probability constraints on a fine grid.

    Parameters
    ----------
    table : quicdesign.Table
        The table to check (whatever produced it).
    grid_points : int
        Uniform grid size on ``[lower, upper]``; every breakpoint is added.
    chunk : int
        Points processed at once (bounds memory at ``chunk * H * K`` floats).

    Returns
    -------
    VerificationReport
    """
    receiver = table.receiver
    rule = table.sender
    lower, upper = table.support
    finite = bool(np.all(np.isfinite(receiver)))
    monotone = bool(np.all(np.diff(receiver, axis=1) >= 0))
    start, end = rule.support
    slack = TOLERANCE * (upper - lower)
    covers = bool(start <= lower + slack and end >= upper - slack)

    inside = rule.breakpoints[(rule.breakpoints >= lower) & (rule.breakpoints <= upper)]
    grid = np.unique(np.concatenate([np.linspace(lower, upper, grid_points), inside]))
    num_shared = table.num_shared
    bias = simplex = mse_gap = 0.0
    for begin in range(0, grid.size, chunk):
        z = grid[begin : begin + chunk]
        probs = rule.message_probabilities(z)
        simplex = max(
            simplex, float(np.max(np.abs(probs.sum(axis=2) - 1.0))), float(max(0.0, -probs.min()))
        )
        mean = np.einsum("nhx,hx->n", probs, receiver) / num_shared
        bias = max(bias, float(np.max(np.abs(mean - z))))
        second = np.einsum("nhx,hx->n", probs, receiver**2) / num_shared
        mse_gap = max(mse_gap, float(np.max(np.abs((second - z**2) - rule.mse(z)))))

    recomputed = evaluate(receiver, StandardNormal(), lower, upper, gradient=False, rule=rule).vnmse
    recorded = table.vnmse
    matches = recorded is None or abs(recorded - recomputed) <= 1e-9 * max(1.0, recomputed)
    scale = max(1.0, float(np.max(np.abs(receiver))))
    checks = {
        "finite": finite,
        "monotone": monotone,
        "covers_support": covers,
        "vnmse_record": matches,
        "bias": bias <= TOLERANCE * scale,
        "simplex": simplex <= TOLERANCE,
        "mse": mse_gap <= TOLERANCE * scale**2,
    }
    failures = tuple(name for name, passed in checks.items() if not passed)
    ok = not failures
    flipped = -receiver[::-1, ::-1]
    symmetric = bool(np.allclose(receiver, flipped, atol=1e-6 * scale))
    flat = receiver.T.ravel()
    blocks_sorted = bool(np.all(np.diff(flat) >= -1e-12 * scale))
    levels = rule.level_table() if rule.num_events * num_shared <= 1 << 22 else None
    adjacent = bool(levels is None or np.all(np.ptp(levels.astype(np.int64), axis=1) <= 1))
    return VerificationReport(
        ok=bool(ok),
        grid_points=int(grid.size),
        max_bias=bias,
        max_simplex_violation=simplex,
        max_mse_mismatch=mse_gap,
        monotone=monotone,
        finite=finite,
        covers_support=covers,
        recomputed_vnmse=recomputed,
        recorded_vnmse=recorded,
        vnmse_matches_record=bool(matches),
        symmetric=symmetric,
        blocks_sorted=blocks_sorted,
        adjacent_messages=adjacent,
        failures=failures,
    )
