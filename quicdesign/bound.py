"""Global lower bound on the vNMSE of every unbiased per-coordinate scheme (numpy only).

A table can carry a *proof* that no unbiased per-coordinate scheme with ``K = 2**b``
messages per inside coordinate — any amount of shared randomness, any sender, any
private coins — reaches a vNMSE below a stated value on the table's value distribution
and tail interval. The proof is a multiplier ``rho`` for the unbiasedness constraint,
piecewise constant on cells ``[e_i, e_{i+1}]`` covering ``[lower, upper]``. Lagrangian
duality gives (``y = rho / 2``, cell mass ``w_i`` and partial moments ``M1_i``, ``M2_i``)

    L(rho) = sum rho_i M1_i - sum M2_i - sum w_i y_i**2
             + min_{c in R^K} sum_i w_i min_x (c_x - y_i)**2,

and the minimum is weighted 1-D k-means of the points ``y_i``, solved exactly here by a
dynamic program over contiguous clusters. ``L(rho) / E[Z**2]`` is a lower bound on the
vNMSE; see ``docs/table-format.md`` (section *global_bound*) and
``/papers/global-bound.md`` for the derivation.

This module is the one implementation of the evaluation: the design layer
(``solvers.bound``) raises ``rho`` with it and ``quicdesign tables verify`` re-evaluates
shipped proofs with it, in well under a second per table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TableError

__all__ = [
    "BoundEvaluation",
    "BoundCheck",
    "FLOAT_MARGIN_RELATIVE",
    "MAX_BOUND_CELLS",
    "check_global_bound",
    "entropy_constrained_1d",
    "evaluate_rate_penalized",
    "evaluate_multipliers",
    "kmeans_1d",
    "standard_normal_cell_moments",
]

#: Most cells a shipped proof may have (checked before anything is allocated).
MAX_BOUND_CELLS = 1 << 16
#: Most cells of a rate-penalized proof (its DP is quadratic in the cells).
MAX_RATE_PENALIZED_CELLS = 4096
#: ``kind`` of a fixed-rate proof and of a rate-penalized (entropy-coded) floor.
FIXED_RATE_KIND = "lagrangian-dual/piecewise-constant-multiplier/kmeans-dp"
RATE_PENALIZED_KIND = "lagrangian-dual/rate-penalized/entropy-constrained-dp"
#: Largest accepted ``|rho|`` in a shipped proof.
MAX_MULTIPLIER = 1e6
#: Float-safety margin: the certified value is ``L - FLOAT_MARGIN_RELATIVE * S`` where
#: ``S = sum |rho_i M1_i| + sum M2_i + 2 sum w_i y_i**2`` bounds the magnitude of every
#: term. float64 rounding in the moments, prefix sums and DP is below ``1e3 * n * eps * S``
#: (``< 1e-11 S`` for ``n <= 2**16``), so ``1e-9 S`` is a wide, documented safety factor.
FLOAT_MARGIN_RELATIVE = 1e-9
#: Relative agreement required between a stored and a re-evaluated bound.
RECHECK_TOLERANCE = 1e-9


def standard_normal_cell_moments(edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mass and first/second partial moments of ``N(0, 1)`` on each cell.

    Parameters
    ----------
    edges : ndarray, shape (n + 1,)
        Increasing finite cell edges.

    Returns
    -------
    mass, first, second : ndarray, shape (n,)
        ``E[1; cell]``, ``E[Z; cell]``, ``E[Z**2; cell]``.
    """
    edges = np.asarray(edges, dtype=np.float64)
    # erfc of the negative side keeps the upper tail accurate (no 1 - cdf cancellation).
    erfc = np.frompyfunc(math.erfc, 1, 1)
    cdf = 0.5 * erfc(-edges / math.sqrt(2.0)).astype(np.float64)
    pdf = np.exp(-0.5 * edges * edges) / math.sqrt(2.0 * math.pi)
    mass = np.diff(cdf)
    first = -np.diff(pdf)
    second = mass - np.diff(edges * pdf)
    return mass, first, second


def _cluster_cost(prefix_w, prefix_s, prefix_q, start, stop):
    """Weighted squared error of the points ``start..stop-1`` around their mean."""
    weight = prefix_w[stop] - prefix_w[start]
    total = prefix_s[stop] - prefix_s[start]
    square = prefix_q[stop] - prefix_q[start]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(weight > 0, total * total / weight, 0.0)
    return np.maximum(square - spread, 0.0)


def kmeans_1d(points, weights, clusters: int):
    """Exact weighted 1-D k-means: least ``sum w_i (c_{x(i)} - y_i)**2`` over ``c``, ``x``.

    Optimal clusters are contiguous in sorted order and the cluster cost is a Monge
    array, so each layer of the dynamic program ``D_k(j) = min_i D_{k-1}(i) + cost(i, j)``
    is solved by divide and conquer over monotone argmins: ``O(K n log n)``, vectorized
    one recursion depth at a time.

    Parameters
    ----------
    points, weights : ndarray, shape (n,)
        Points (any order) and non-negative weights.
    clusters : int
        ``K``, the largest number of clusters.

    Returns
    -------
    cost : float
        The minimal weighted squared error.
    labels : ndarray of int64, shape (n,)
        Cluster of every point (in the caller's order), clusters numbered by position.
    centers : ndarray, shape (K,)
        Weighted means of the clusters (0 for empty ones).
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(points, kind="stable")
    y, w = points[order], weights[order]
    n = y.size
    prefix_w = np.concatenate(([0.0], np.cumsum(w)))
    prefix_s = np.concatenate(([0.0], np.cumsum(w * y)))
    prefix_q = np.concatenate(([0.0], np.cumsum(w * y * y)))
    best = _cluster_cost(prefix_w, prefix_s, prefix_q, np.zeros(n + 1, np.int64), np.arange(n + 1))
    splits = np.zeros((clusters, n + 1), dtype=np.int64)
    for layer in range(1, clusters):
        best, splits[layer] = _dp_layer(best, prefix_w, prefix_s, prefix_q)
    # Walk the splits back from the last point.
    bounds = [n]
    for layer in range(clusters - 1, 0, -1):
        bounds.append(int(splits[layer, bounds[-1]]))
    bounds.append(0)
    bounds = np.array(bounds[::-1])
    labels_sorted = np.repeat(np.arange(clusters), np.diff(bounds))
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    mass = np.diff(prefix_w[bounds])
    with np.errstate(divide="ignore", invalid="ignore"):
        centers = np.where(mass > 0, np.diff(prefix_s[bounds]) / mass, 0.0)
    return float(best[n]), labels, centers


def _dp_layer(previous, prefix_w, prefix_s, prefix_q):
    """One DP layer by divide and conquer, all segments of one recursion depth at once.

    Returns the new values ``D(j) = min_{i <= j} previous(i) + cost(i, j)`` and the
    (leftmost among equals) minimizing ``i`` for ``j = 0..n``.
    """
    size = previous.size
    value = np.empty(size)
    argbest = np.empty(size, dtype=np.int64)
    # Segments of columns [lo, hi) whose optimum lies in [opt_lo, opt_hi].
    lo, hi = np.array([0]), np.array([size])
    opt_lo, opt_hi = np.array([0]), np.array([size - 1])
    while lo.size:
        mid = (lo + hi) // 2
        first, last = opt_lo, np.minimum(opt_hi, mid)
        counts = last - first + 1
        segment = np.repeat(np.arange(mid.size), counts)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        candidate = first[segment] + (np.arange(segment.size) - starts[segment])
        column = mid[segment]
        total = previous[candidate] + _cluster_cost(prefix_w, prefix_s, prefix_q, candidate, column)
        minimum = np.minimum.reduceat(total, starts)
        hits = np.flatnonzero(total <= minimum[segment])
        first_hit = hits[np.unique(segment[hits], return_index=True)[1]]
        value[mid] = minimum
        argbest[mid] = candidate[first_hit]
        chosen = argbest[mid]
        left = mid > lo
        right = mid + 1 < hi
        lo, hi, opt_lo, opt_hi = (
            np.concatenate((lo[left], mid[right] + 1)),
            np.concatenate((mid[left], hi[right])),
            np.concatenate((opt_lo[left], chosen[right])),
            np.concatenate((chosen[left], opt_hi[right])),
        )
    return value, argbest


def entropy_constrained_1d(points, weights, penalty: float):
    """Exact entropy-constrained scalar quantization of weighted points.

    Minimizes ``sum_c [sum_{i in c} w_i (y_i - mean_c)**2 + penalty * W_c * (-log2(W_c / W))]``
    over partitions into clusters (``W_c`` cluster weight, ``W`` total weight), i.e. the
    squared error plus ``penalty * W * H`` with ``H`` the cluster entropy in bits. Optimal
    clusters are contiguous in sorted order (each point picks the level minimizing
    ``(c - y)**2 + code length``), so an ``O(n**2)`` dynamic program is exact.

    Returns
    -------
    cost : float
    labels : ndarray of int64, shape (n,)
    centers : ndarray, shape (clusters,)
    entropy : float
        ``H`` of the optimal partition, in bits.
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(points, kind="stable")
    y, w = points[order], weights[order]
    n = y.size
    total_w = float(w.sum())
    pw = np.concatenate(([0.0], np.cumsum(w)))
    ps = np.concatenate(([0.0], np.cumsum(w * y)))
    pq = np.concatenate(([0.0], np.cumsum(w * y * y)))
    best = np.zeros(n + 1)
    split = np.zeros(n + 1, dtype=np.int64)
    for stop in range(1, n + 1):
        start = np.arange(stop)
        mass = pw[stop] - pw[start]
        positive = mass > 0
        safe = np.where(positive, mass, 1.0)
        sse = np.maximum(pq[stop] - pq[start] - (ps[stop] - ps[start]) ** 2 / safe, 0.0)
        rate = np.where(positive, -mass * np.log2(safe / total_w), 0.0)
        total = best[start] + sse + penalty * rate
        k = int(np.argmin(total))
        best[stop], split[stop] = total[k], k
    bounds = [n]
    while bounds[-1] > 0:
        bounds.append(int(split[bounds[-1]]))
    bounds = np.array(bounds[::-1])
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.repeat(np.arange(bounds.size - 1), np.diff(bounds))
    cluster_w = np.diff(pw[bounds])
    centers = np.diff(ps[bounds]) / cluster_w
    share = cluster_w / total_w
    entropy = float(-(share * np.log2(share)).sum())
    return float(best[n]), labels, centers, entropy


def evaluate_rate_penalized(rho, penalty: float, rate_bits: float, moments) -> float:
    """Certified floor ``L_lambda(rho) - lambda R`` for schemes of entropy rate ``<= R``.

    For every ``lambda >= 0`` and ``rho`` each unbiased per-coordinate scheme whose
    message entropy per inside coordinate is at most ``R`` has
    ``vNMSE >= L_lambda(rho) - lambda R``; the pricing step of ``L_lambda`` is
    :func:`entropy_constrained_1d` of ``rho / 2`` (standard-normal moments, ``E[Z^2] = 1``).

    Returns
    -------
    float
        The floor with the float-safety margin subtracted.
    """
    rho = np.asarray(rho, dtype=np.float64)
    mass, first, second = (np.asarray(m, dtype=np.float64) for m in moments)
    target = rho / 2
    pricing = entropy_constrained_1d(target, mass, penalty / float(mass.sum()))[0]
    spread = float(mass @ (target * target))
    value = float(rho @ first) - float(second.sum()) - spread + pricing - penalty * rate_bits
    scale = float(np.sum(np.abs(rho * first)) + np.sum(np.abs(second)) + 2 * spread)
    return value - FLOAT_MARGIN_RELATIVE * (scale + abs(penalty * rate_bits))


@dataclass(frozen=True)
class BoundEvaluation:
    """``L(rho)`` for a piecewise-constant multiplier, with what proves it.

    Attributes
    ----------
    value : float
        ``L(rho) / E[Z**2]``: a lower bound on the vNMSE (before the float margin).
    certified : float
        ``value - margin``: what a table may claim.
    margin : float
        The float-safety margin (see :data:`FLOAT_MARGIN_RELATIVE`).
    subgradient : ndarray, shape (n,)
        ``dL/drho_i = M1_i - w_i c_{x(i)}`` (normalized like ``value``); with ``value``
        it is an exact affine minorant of ``L`` (``L`` is concave).
    levels : ndarray, shape (K,)
        The optimal levels ``c`` of the pricing problem (the best deterministic
        quantizer against ``rho``).
    """

    value: float
    certified: float
    margin: float
    subgradient: np.ndarray
    levels: np.ndarray


def evaluate_multipliers(
    rho, moments, messages: int, second_moment: float = 1.0
) -> BoundEvaluation:
    """Evaluate the Lagrangian bound ``L(rho)`` exactly.

    Parameters
    ----------
    rho : ndarray, shape (n,)
        Multiplier of unbiasedness on each cell.
    moments : tuple of ndarray
        ``(mass, first, second)`` partial moments of the value distribution on each
        cell (e.g. :func:`standard_normal_cell_moments`).
    messages : int
        ``K = 2**b``.
    second_moment : float
        ``E[Z**2]`` of the whole distribution (normalizes to vNMSE).

    Returns
    -------
    BoundEvaluation
    """
    rho = np.asarray(rho, dtype=np.float64)
    mass, first, second = (np.asarray(m, dtype=np.float64) for m in moments)
    target = rho / 2
    kmeans, labels, levels = kmeans_1d(target, mass, int(messages))
    linear = float(np.dot(rho, first))
    spread = float(np.dot(mass, target * target))
    value = linear - float(np.sum(second)) - spread + kmeans
    scale = float(np.sum(np.abs(rho * first)) + np.sum(np.abs(second)) + 2 * spread)
    margin = FLOAT_MARGIN_RELATIVE * scale
    subgradient = (first - mass * levels[labels]) / second_moment
    return BoundEvaluation(
        value=value / second_moment,
        certified=(value - margin) / second_moment,
        margin=margin / second_moment,
        subgradient=subgradient,
        levels=levels,
    )


@dataclass(frozen=True)
class BoundCheck:
    """Outcome of :func:`check_global_bound` on a table's stored proof.

    Attributes
    ----------
    stored : float
        The bound recorded in the manifest.
    recomputed : float
        The certified value re-evaluated from the shipped arrays.
    vnmse : float or None
        The table's recorded vNMSE.
    relative_gap : float or None
        ``(vnmse - recomputed) / recomputed``: the table is certified within this
        fraction of the best possible per-coordinate scheme.
    cells : int
        Number of cells of the multiplier.
    """

    stored: float
    recomputed: float
    vnmse: float | None
    relative_gap: float | None
    cells: int


def check_global_bound(table) -> BoundCheck | None:
    """Re-evaluate a table's shipped lower-bound proof (numpy only, < 1 s).

    Parameters
    ----------
    table : quicdesign.Table

    Returns
    -------
    BoundCheck or None
        ``None`` when the table carries no ``global_bound`` section.

    Raises
    ------
    TableError
        If the proof is malformed, its distribution cannot be re-evaluated here, the
        stored value does not re-evaluate, or it exceeds the table's own vNMSE.
    """
    section = table.manifest.get("global_bound")
    if section is None:
        return None
    edges, rho = table.bound_arrays()
    if not isinstance(section, dict):
        raise TableError("global_bound must be an object")
    distribution = section.get("distribution")
    if distribution != {"kind": "standard_normal"}:
        raise TableError(
            f"global_bound: the runtime verifier re-evaluates standard-normal proofs only, "
            f"got distribution {distribution!r}"
        )
    if section.get("kind") not in (FIXED_RATE_KIND, RATE_PENALIZED_KIND):
        raise TableError(f"global_bound: unknown kind {section.get('kind')!r}")
    if section.get("kind") == FIXED_RATE_KIND and section.get("bits") != table.bits:
        raise TableError(f"global_bound: proof is for bits={section.get('bits')!r}")
    stored = section.get("value")
    if not isinstance(stored, (int, float)) or not math.isfinite(stored):
        raise TableError(f"global_bound: value {stored!r} is not a finite number")
    _check_proof_arrays(edges, rho, table.lower, table.upper)
    moments = standard_normal_cell_moments(edges)
    if section.get("kind") == RATE_PENALIZED_KIND:
        recomputed = _recheck_rate_penalized(table, section, rho, moments)
    else:
        recomputed = evaluate_multipliers(rho, moments, table.num_messages, 1.0).certified
    if not abs(recomputed - stored) <= RECHECK_TOLERANCE * max(abs(stored), 1e-300):
        raise TableError(
            f"global_bound: stored value {stored!r} does not re-evaluate "
            f"(the multipliers give {recomputed!r})"
        )
    vnmse = table.vnmse
    if vnmse is not None and stored > vnmse:
        raise TableError(
            f"global_bound: stored bound {stored!r} exceeds the table's own vNMSE {vnmse!r}"
        )
    gap = None if vnmse is None or recomputed <= 0 else (vnmse - recomputed) / recomputed
    return BoundCheck(
        stored=float(stored),
        recomputed=recomputed,
        vnmse=vnmse,
        relative_gap=gap,
        cells=int(rho.size),
    )


def _recheck_rate_penalized(table, section, rho, moments) -> float:
    """The floor of an entropy-coded table at its own recorded entropy rate."""
    penalty, rate = section.get("lambda"), section.get("rate_bits")
    recorded_rate = table.manifest.get("coding", {}).get("entropy_bits")
    for name, value in (("lambda", penalty), ("rate_bits", rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TableError(f"global_bound: {name} {value!r} is not a number")
        if not (math.isfinite(value) and value >= 0):
            raise TableError(f"global_bound: {name} {value!r} must be finite and >= 0")
    if recorded_rate is None or rate < recorded_rate:
        raise TableError(
            f"global_bound: floor stated at rate {rate!r} below the table's entropy "
            f"{recorded_rate!r} bits"
        )
    if rho.size > MAX_RATE_PENALIZED_CELLS:
        raise TableError(f"global_bound: more than {MAX_RATE_PENALIZED_CELLS} cells")
    return evaluate_rate_penalized(rho, penalty, rate, moments)


def _check_proof_arrays(edges, rho, lower, upper) -> None:
    if edges.ndim != 1 or rho.ndim != 1 or edges.size != rho.size + 1 or rho.size < 1:
        raise TableError(
            f"global_bound: need n + 1 edges for n multipliers, got {edges.shape}, {rho.shape}"
        )
    if not (np.all(np.isfinite(edges)) and np.all(np.isfinite(rho))):
        raise TableError("global_bound: edges and multipliers must be finite")
    if np.any(np.diff(edges) <= 0):
        raise TableError("global_bound: cell edges must be strictly increasing")
    if edges[0] != lower or edges[-1] != upper:
        raise TableError(
            f"global_bound: cells must span exactly [{lower!r}, {upper!r}], "
            f"got [{edges[0]!r}, {edges[-1]!r}]"
        )
    if np.max(np.abs(rho)) > MAX_MULTIPLIER:
        raise TableError(f"global_bound: multipliers above {MAX_MULTIPLIER:g} in magnitude")
