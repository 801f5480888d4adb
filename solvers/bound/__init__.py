"""Certified lower bounds on the vNMSE of every unbiased per-coordinate scheme.

``L(rho)`` (see :mod:`quicdesign.bound`, which evaluates it exactly) is a lower bound for
*every* multiplier ``rho``; this module finds good ones. It starts from a design's own
multipliers (on each piece of the closed-form sender, the slope of the randomizing event)
and raises ``L`` with a proximal bundle method: every evaluation gives an exact affine
minorant of the concave ``L``; the next trial point maximizes the bundle model minus a
mass-weighted proximal term, a small QP over the simplex of minorant weights solved with
cvxpy. Multipliers stay odd-symmetric on symmetric cells and symmetric laws (``L`` is
concave and reflection-invariant there, so symmetrizing never lowers it).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np

from quicdesign.bound import (
    FIXED_RATE_KIND,
    FLOAT_MARGIN_RELATIVE,
    RATE_PENALIZED_KIND,
    entropy_constrained_1d,
    evaluate_multipliers,
    evaluate_rate_penalized,
    kmeans_1d,
    standard_normal_cell_moments,
)
from quicdesign.errors import ParameterError
from quicdesign.table import Table

from ..design import DesignSpec
from ..distributions import StandardNormal, ValueDistribution, as_distribution
from ..objective import evaluate as evaluate_table

__all__ = [
    "LowerBound",
    "attach_bound",
    "attach_floor",
    "cell_moments",
    "design_multipliers",
    "entropy_floor",
    "larger_design",
    "lower_bound",
    "BOUND_KIND",
    "BOUND_STATEMENT",
]

BOUND_KIND = FIXED_RATE_KIND
BOUND_STATEMENT = (
    "No unbiased per-coordinate scheme sending 2**bits messages for each coordinate inside "
    "[lower, upper] (tails sent exactly) - whatever its shared randomness, sender or private "
    "coins - has vNMSE below value on this distribution. Vector schemes and other tail "
    "probabilities are not covered."
)


@dataclass
class LowerBound:
    """Outcome of :func:`lower_bound`.

    Attributes
    ----------
    bound : float
        Certified lower bound on the vNMSE (float-safety margin already subtracted).
    start_bound : float
        The bound of the starting multipliers.
    vnmse : float or None
        vNMSE of the table the bound was compared to.
    relative_gap : float or None
        ``(vnmse - bound) / bound``.
    edges : ndarray, shape (n + 1,)
        Cell edges spanning ``[lower, upper]``.
    multipliers : ndarray, shape (n,)
        ``rho`` on each cell: with ``edges`` the proof of ``bound``.
    bits, lower, upper, tail_prob : parameters of the bound.
    evaluations : int
        Number of exact DP evaluations.
    seconds : float
        Wall time of the ascent.
    history : list of float
        Bound after each serious step.
    """

    bound: float
    start_bound: float
    vnmse: float | None
    relative_gap: float | None
    edges: np.ndarray
    multipliers: np.ndarray
    bits: int
    lower: float
    upper: float
    tail_prob: float
    distribution: dict
    evaluations: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)

    def section(self) -> dict:
        """The manifest ``global_bound`` section for this proof."""
        return {
            "kind": BOUND_KIND,
            "statement": BOUND_STATEMENT,
            "value": self.bound,
            "relative_gap": self.relative_gap,
            "bits": self.bits,
            "distribution": self.distribution,
            "tail_prob": self.tail_prob,
            "lower": self.lower,
            "upper": self.upper,
            "cells": int(self.multipliers.size),
            "float_margin": (
                f"certified = L(rho) - {FLOAT_MARGIN_RELATIVE:g} * (sum|rho M1| + sum M2 "
                "+ 2 sum w y^2), see quicdesign.bound"
            ),
            "ascent": {
                "method": "proximal bundle (cvxpy QP), odd-symmetric multipliers",
                "start_bound": self.start_bound,
                "evaluations": self.evaluations,
                "wall_time_s": round(self.seconds, 2),
            },
        }


def cell_moments(distribution: ValueDistribution, edges):
    """``(mass, first, second)`` on each cell; closed form for the standard normal."""
    if isinstance(distribution, StandardNormal):
        return standard_normal_cell_moments(edges)
    m0, m1, m2 = distribution.partial_moments(np.asarray(edges, dtype=np.float64))
    return np.diff(m0), np.diff(m1), np.diff(m2)


def design_multipliers(table: Table, refine: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A design's own multipliers: the event slope on each piece of its sender.

    Parameters
    ----------
    table : Table
    refine : int
        Split every piece into this many equal cells (more freedom for the ascent).

    Returns
    -------
    edges, multipliers : ndarray
    """
    rule = table.sender
    points = np.clip(rule.breakpoints, table.lower, table.upper)
    keep = np.diff(points) > 0
    left, right = points[:-1][keep], points[1:][keep]
    slopes = rule.slopes[keep]
    refine = max(int(refine), 1)
    steps = np.arange(refine) / refine
    edges = (left[:, None] + (right - left)[:, None] * steps[None, :]).ravel()
    edges = np.append(edges, right[-1])
    edges[0], edges[-1] = table.lower, table.upper
    return edges, np.repeat(slopes, refine)


def _reflection(edges) -> np.ndarray | None:
    """Permutation mapping each cell to its mirror image, if the cells are symmetric."""
    if np.allclose(edges, -edges[::-1], rtol=0, atol=1e-12 * np.max(np.abs(edges))):
        return np.arange(edges.size - 2, -1, -1)
    return None


def _symmetrize(edges):
    """Mirror the cells of the upper half so the grid is exactly symmetric."""
    upper = edges[edges > 0]
    return np.concatenate((-upper[::-1], [0.0], upper)) if upper.size else edges


def lower_bound(
    source,
    *,
    seconds: float = 30.0,
    refine: int = 1,
    start=None,
    distribution=None,
    progress=None,
    max_evaluations: int = 100000,
) -> LowerBound:
    """Certified lower bound on the vNMSE of every unbiased per-coordinate scheme.

    Parameters
    ----------
    source : Table or DesignSpec
        A table (its bits, support and multipliers are used; its vNMSE is the comparison)
        or a spec (a table is designed for it first).
    seconds : float
        Time budget of the ascent (0: evaluate the start only).
    refine : int
        Split each piece of the design's sender into this many cells.
    start : Table or tuple of ndarray or int, optional
        Where the ascent starts instead of the table's own multipliers: another table
        with the same bits and support (its multipliers), ``(edges, multipliers)``, or a
        number of shared bits ``l'`` larger than the table's — a design with ``2**l'``
        rows is then refined from the table (duplicated rows) and its multipliers used
        (larger designs give better starts).
    distribution : optional
        Value distribution (default: the spec's, or standard normal for a table).
    progress : callable, optional
        Called as ``progress(evaluations, bound)`` after every serious step.
    max_evaluations : int
        Cap on DP evaluations.

    Returns
    -------
    LowerBound
    """
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ParameterError(f"seconds must be a finite non-negative number, got {seconds!r}")
    table, dist = _resolve_source(source, distribution)
    if isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        start = larger_design(table, dist, int(start))
    if isinstance(start, Table):
        if (start.bits, start.lower, start.upper) != (table.bits, table.lower, table.upper):
            raise ParameterError("a start table must have the same bits and support")
        start_table, start = start, None
    else:
        start_table = table
    if start is None:
        edges, rho = design_multipliers(start_table, refine)
    else:
        edges, rho = (np.array(a, dtype=np.float64) for a in start)
        if edges[0] != table.lower or edges[-1] != table.upper or edges.size != rho.size + 1:
            raise ParameterError("start cells must span the table's [lower, upper]")
    symmetric = (
        isinstance(dist, StandardNormal) and math.isclose(-table.lower, table.upper)
    ) or getattr(dist, "symmetric", False)
    if symmetric and edges.size > 2 and not np.any(edges == 0.0):
        # Make the grid exactly symmetric, then take the odd part of rho.
        centers = (edges[:-1] + edges[1:]) / 2
        edges = _symmetrize(edges)
        edges[0], edges[-1] = table.lower, table.upper
        new_centers = (edges[:-1] + edges[1:]) / 2
        rho = np.interp(new_centers, centers, rho)
    mirror = _reflection(edges) if symmetric else None
    if mirror is not None:
        rho = (rho - rho[mirror]) / 2
    moments = cell_moments(dist, edges)
    norm = dist.second_moment()
    messages = table.num_messages
    began = time.perf_counter()

    def evaluate(multipliers):
        evaluation = evaluate_multipliers(multipliers, moments, messages, norm)
        gradient = evaluation.subgradient
        if mirror is not None:
            gradient = (gradient - gradient[mirror]) / 2
        return evaluation.value, gradient

    # Cells without mass (empirical laws) do not enter L: never move their multiplier.
    mass = moments[0]
    inverse_mass = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0)
    ascent = _ProximalBundle(evaluate, inverse_mass)
    best_rho, best = ascent.run(rho, seconds, max_evaluations, progress)
    evaluation = evaluate_multipliers(best_rho, moments, messages, norm)
    # The table's vNMSE on the bound's own distribution (manifests record the normal's).
    vnmse = evaluate_table(table.receiver, dist, table.lower, table.upper, gradient=False).vnmse
    bound = evaluation.certified
    return LowerBound(
        bound=bound,
        start_bound=ascent.start_value,
        vnmse=vnmse,
        relative_gap=None if vnmse is None else (vnmse - bound) / bound,
        edges=edges,
        multipliers=best_rho,
        bits=table.bits,
        lower=table.lower,
        upper=table.upper,
        tail_prob=table.tail_prob,
        distribution=dist.description,
        evaluations=ascent.evaluations,
        seconds=time.perf_counter() - began,
        history=ascent.history,
    )


def larger_design(table: Table, dist=None, shared_bits: int = 10) -> Table:
    """Refine a design with ``2**shared_bits`` rows (up to 12) from ``table``.

    The rows of ``table`` are duplicated (same objective) and L-BFGS-B refines them; used
    for better starting multipliers and to look beyond the design layer's ``l <= 8``.
    """
    from ..optimize import refine

    dist = as_distribution(dist)
    if not table.shared_bits <= shared_bits <= 12:
        raise ParameterError(f"start shared bits must be in [{table.shared_bits}, 12]")
    rows = np.repeat(table.receiver, 1 << (shared_bits - table.shared_bits), axis=0)
    solution = refine(rows, dist, table.lower, table.upper, max_iter=3000, label="start")
    return Table(
        solution.receiver,
        bits=table.bits,
        shared_bits=shared_bits,
        tail_prob=table.tail_prob,
        lower=table.lower,
        upper=table.upper,
    )


def _resolve_source(source, distribution):
    if isinstance(source, Table):
        return source, as_distribution(distribution)
    if isinstance(source, DesignSpec):
        from ..design import _design_spec

        dist = source.distribution if distribution is None else as_distribution(distribution)
        result = _design_spec(
            source, starts=2, max_iter=3000, warm_start=None, certify=False, seed=0, n_jobs=1
        )
        return result.table, dist
    raise ParameterError(f"source must be a Table or a DesignSpec, got {type(source).__name__}")


class _ProximalBundle:
    """Proximal bundle ascent of a concave function in a diagonal metric.

    The trial point maximizes ``min_j (alpha_j + g_j . x) - (u/2)|x - center|_W^2``; its
    dual is a QP over the simplex of minorant weights ``lambda``:
    ``min sum lambda_j (alpha_j + g_j . center) + |sum lambda_j g_j|^2_{W^-1} / (2u)``,
    and the trial point is ``center + W^-1 sum lambda_j g_j / u``. For ``L(rho)`` the
    metric is the cell mass, so steps are large where little mass is at stake.

    Parameters
    ----------
    evaluate : callable
        ``x -> (value, supergradient)``.
    inverse_metric : ndarray
        ``W^-1`` (diagonal).
    project : callable, optional
        Maps a trial point into the domain (e.g. ``lambda >= 0``).
    """

    _MAX_CUTS = 80
    _SERIOUS = 0.1
    _SHRINK = 0.8
    _GROW = 1.2

    def __init__(self, evaluate, inverse_metric, project=None):
        self.function = evaluate
        self.inverse_mass = inverse_metric
        self.project = project
        self.evaluations = 0
        self.history = []
        self.start_value = float("nan")

    def _evaluate(self, x):
        self.evaluations += 1
        return self.function(x)

    def run(self, rho, seconds, max_evaluations, progress):
        deadline = time.perf_counter() + seconds
        center = rho.copy()
        value, gradient = self._evaluate(center)
        self.start_value = value
        self.history.append(value)
        cuts = [(value - gradient @ center, gradient)]
        # Initial prox weight: a step of about one unit of rho in the W-metric.
        weight = max(math.sqrt(gradient @ (self.inverse_mass * gradient)), 1e-12)
        while time.perf_counter() < deadline and self.evaluations < max_evaluations:
            alphas = np.array([a for a, _ in cuts])
            grads = np.array([g for _, g in cuts])
            lambdas = self._solve_dual(alphas + grads @ center, grads, weight)
            direction = self.inverse_mass * (lambdas @ grads) / weight
            trial = center + direction
            if self.project is not None:
                trial = self.project(trial)
            model = float(np.min(alphas + grads @ trial))
            predicted = model - value
            if predicted <= 1e-15 * max(abs(value), 1.0):
                break
            trial_value, trial_gradient = self._evaluate(trial)
            keep = lambdas > 1e-10
            cuts = [c for c, k in zip(cuts, keep, strict=True) if k]
            if len(cuts) >= self._MAX_CUTS:
                # Aggregate cut keeps the model valid with a short bundle.
                aggregate = (lambdas @ alphas, lambdas @ grads)
                cuts = [aggregate] + cuts[-(self._MAX_CUTS // 2) :]
            cuts.append((trial_value - trial_gradient @ trial, trial_gradient))
            if trial_value - value >= self._SERIOUS * predicted:
                center, value = trial, trial_value
                self.history.append(value)
                weight *= self._SHRINK
                if progress is not None:
                    progress(self.evaluations, value)
            else:
                weight *= self._GROW
        return center, value

    def _solve_dual(self, offsets, grads, weight):
        count = offsets.size
        if count == 1:
            return np.ones(1)
        scaled = grads * np.sqrt(self.inverse_mass)[None, :]
        gram = scaled @ scaled.T
        # Normalize for the solver; a tiny ridge keeps the Gram matrix numerically PSD.
        scale = max(np.max(np.abs(gram)), 1e-300)
        gram = gram / scale + 1e-12 * np.eye(count)
        lam = cp.Variable(count, nonneg=True)
        objective = cp.Minimize(
            (offsets / (scale / weight)) @ lam + 0.5 * cp.quad_form(lam, cp.psd_wrap(gram))
        )
        problem = cp.Problem(objective, [cp.sum(lam) == 1])
        with warnings.catch_warnings():
            # "Solution may be inaccurate" is harmless: any simplex point gives a valid
            # trial, and only exact DP values decide serious steps.
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            try:
                problem.solve(
                    solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
                )
            except cp.SolverError:
                problem.solve(solver=cp.OSQP, eps_abs=1e-10, eps_rel=1e-10, max_iter=20000)
        if lam.value is None:
            raise ParameterError(f"bundle QP failed: {problem.status}")
        values = np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0)
        return values / values.sum()


def attach_bound(table: Table, result: LowerBound) -> Table:
    """Return ``table`` carrying the proof of ``result`` (manifest section and arrays)."""
    if (result.bits, result.lower, result.upper) != (table.bits, table.lower, table.upper):
        raise ParameterError("the bound was computed for other bits or another support")
    vnmse = table.vnmse
    section = result.section()
    section["relative_gap"] = None if vnmse is None else (vnmse - result.bound) / result.bound
    return table.with_global_bound(section, result.edges, result.multipliers)


def entropy_floor(
    rate_bits: float,
    tail_prob: float = 1e-6,
    *,
    cells: int = 400,
    seconds: float = 20.0,
) -> dict:
    """Certified floor of the variance of unbiased scalar schemes at an entropy rate.

    For every multiplier ``rho`` and ``lambda >= 0`` each unbiased per-coordinate scheme
    whose message entropy (per inside coordinate) is ``R`` satisfies
    ``vNMSE >= L_lambda(rho) - lambda R``, where the pricing step of ``L_lambda`` is
    entropy-constrained scalar quantization of ``rho / 2`` (an exact DP over contiguous
    cells). ``rho`` starts from the EDEN-type linear multiplier and the pair
    ``(rho, lambda)`` is raised by a supergradient method.

    Returns
    -------
    dict
        ``floor`` (certified), ``lambda``, ``rate_bits``, ``tail_prob``, ``cells``.
    """
    dist = StandardNormal()
    lower, upper = dist.tail_interval(tail_prob)
    edges = np.linspace(lower, upper, int(cells) + 1)
    mass, first, second = standard_normal_cell_moments(edges)
    inside = float(mass.sum())
    centers = first / mass
    mirror = np.arange(edges.size - 2, -1, -1)

    def evaluate(point):
        rho, lam = point[:-1], point[-1]
        target = rho / 2
        pricing, labels, levels, entropy = entropy_constrained_1d(target, mass, lam / inside)
        value = rho @ first - second.sum() - mass @ (target * target) + pricing - lam * rate_bits
        grad_rho = first - mass * levels[labels]
        gradient = np.append((grad_rho - grad_rho[mirror]) / 2, entropy - rate_bits)
        return float(value), gradient

    def project(point):
        point = point.copy()
        point[-1] = max(point[-1], 0.0)
        return point

    # Start: the uniform-quantizer heuristic (step d with d^2/12 at the rate, y ~ z).
    lam = 2 * 4.0 ** (-rate_bits) * math.log(2) * 1.2
    rho = 2 * centers * (1 + 4.0 ** (-rate_bits))
    metric = np.append(1.0 / mass, 1.0)
    ascent = _ProximalBundle(evaluate, metric, project)
    point, value = ascent.run(np.append(rho, lam), seconds, 100000, None)
    rho, lam = point[:-1], point[-1]
    return {
        "floor": evaluate_rate_penalized(rho, lam, rate_bits, (mass, first, second)),
        "lambda": float(lam),
        "rate_bits": float(rate_bits),
        "tail_prob": float(tail_prob),
        "cells": int(cells),
        "multipliers": rho,
        "edges": edges,
    }


# One exact k-means DP exists (quicdesign.bound); re-exported for the design layer's users.
kmeans = kmeans_1d


def attach_floor(table: Table, floor: dict) -> Table:
    """Return an entropy-coded ``table`` carrying the certified scalar floor at its rate.

    ``floor`` is the result of :func:`entropy_floor` computed at (at least) the table's
    recorded entropy rate on the table's support.
    """
    edges = np.asarray(floor["edges"], dtype=np.float64)
    if edges[0] != table.lower or edges[-1] != table.upper:
        raise ParameterError("the floor was computed on another support")
    # Re-evaluate with the verifier's own code so the stored value re-checks exactly.
    value = evaluate_rate_penalized(
        floor["multipliers"],
        floor["lambda"],
        floor["rate_bits"],
        standard_normal_cell_moments(edges),
    )
    floor = {**floor, "floor": value}
    vnmse = table.vnmse
    section = {
        "kind": RATE_PENALIZED_KIND,
        "statement": (
            "No unbiased per-coordinate scheme whose messages carry at most rate_bits of "
            "entropy per coordinate inside [lower, upper] (tails sent exactly) has vNMSE "
            "below value on this distribution, whatever its shared randomness. Vector "
            "(lattice) schemes are not covered."
        ),
        "value": float(floor["floor"]),
        "relative_gap": None if vnmse is None else (vnmse - floor["floor"]) / floor["floor"],
        "rate_bits": float(floor["rate_bits"]),
        "lambda": float(floor["lambda"]),
        "distribution": {"kind": "standard_normal"},
        "tail_prob": table.tail_prob,
        "lower": table.lower,
        "upper": table.upper,
        "cells": int(edges.size - 1),
        "float_margin": (
            f"floor = L_lambda(rho) - lambda R - {FLOAT_MARGIN_RELATIVE:g} * (sum|rho M1| "
            "+ sum M2 + 2 sum w y^2 + lambda R), see quicdesign.bound"
        ),
    }
    return table.with_global_bound(section, edges, floor["multipliers"])


def certify_collection(
    folder,
    *,
    seconds: float = 60.0,
    refine: int = 1,
    start_shared_bits=None,
    bits=None,
    log=print,
) -> None:
    """Attach bounds to every table of a collection and rewrite its index.

    The bound depends only on ``(bits, support, distribution)``, so one proof serves all
    tables of a bit width: it is computed from the table with the most shared bits (the
    best start) and attached to each of them.
    """
    from pathlib import Path

    from quicdesign.table import _read_index, list_tables, load_table, write_index

    folder = Path(folder)
    defaults = {int(k): v for k, v in _read_index(folder)["defaults"].items()}
    tables = [
        (entry["directory"], load_table(entry["bits"], entry["shared_bits"], path=folder))
        for entry in list_tables(folder)
    ]
    for width in sorted({t.bits for _, t in tables}):
        if bits is not None and width not in bits:
            continue
        group = [(d, t) for d, t in tables if t.bits == width]
        _, best = max(group, key=lambda item: item[1].shared_bits)
        began = time.perf_counter()
        start = None
        if start_shared_bits is not None and start_shared_bits > best.shared_bits:
            start = start_shared_bits
        proof = lower_bound(best, seconds=seconds, refine=refine, start=start)
        for directory, table in group:
            if (table.lower, table.upper) != (best.lower, best.upper):
                continue
            certified = attach_bound(table, proof)
            certified.save(folder / directory)
            gap = certified.manifest["global_bound"]["relative_gap"]
            log(
                f"b={width} l={table.shared_bits}: vNMSE {table.vnmse:.7g} bound "
                f"{proof.bound:.7g} within {100 * gap:.3f}% "
                f"({proof.evaluations} DP evaluations, {time.perf_counter() - began:.0f} s)"
            )
    write_index(folder, defaults)
