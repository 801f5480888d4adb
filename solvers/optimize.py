"""Outer optimization over the receiver table R with a scipy quasi-Newton method.

The free parameters are an unconstrained ``(H, K)`` array ``theta``. Each row is sorted
(the receiver may relabel messages, since it knows ``h``) and the whole table is mapped
by the one affine map that puts the bottom-row mean at ``lower`` and the top-row mean at
``upper``; that makes every iterate an exactly unbiased design on ``[lower, upper]``
without constraints, and keeps rows sorted. The objective is piecewise smooth and not
convex, so the caller runs several starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from .distributions import ValueDistribution
from .objective import evaluate

__all__ = ["normalize_receiver", "starting_points", "refine", "LocalSolution"]


def normalize_receiver(theta: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Sort rows and map ``theta`` affinely so the end-row means are ``lower`` and ``upper``."""
    sorted_rows = np.sort(theta, axis=1)
    start, end = sorted_rows[:, 0].mean(), sorted_rows[:, -1].mean()
    return lower + (sorted_rows - start) * ((upper - lower) / (end - start))


def _objective(flat, shape, distribution, lower, upper):
    theta = flat.reshape(shape)
    order = np.argsort(theta, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(theta, order, axis=1)
    start, end = sorted_rows[:, 0].mean(), sorted_rows[:, -1].mean()
    span = end - start
    if not span > 1e-12 * (upper - lower):
        return np.inf, np.zeros_like(flat)
    scale = (upper - lower) / span
    receiver = lower + (sorted_rows - start) * scale
    value = evaluate(receiver, distribution, lower, upper)
    grad = value.gradient
    coupling = np.sum(grad * (receiver - lower)) / span
    grad_sorted = grad * scale
    num_shared = shape[0]
    grad_sorted[:, 0] += (-scale * grad.sum() + coupling) / num_shared
    grad_sorted[:, -1] += -coupling / num_shared
    grad_theta = np.empty_like(grad_sorted)
    np.put_along_axis(grad_theta, order, grad_sorted, axis=1)
    return value.vnmse, grad_theta.ravel()


@dataclass
class LocalSolution:
    """One local optimization run."""

    receiver: np.ndarray
    vnmse: float
    iterations: int
    evaluations: int
    success: bool
    message: str
    start: str


def refine(
    start: np.ndarray,
    distribution: ValueDistribution,
    lower: float,
    upper: float,
    *,
    max_iter: int = 3000,
    restarts: int = 3,
    tol: float = 1e-13,
    label: str = "",
) -> LocalSolution:
    """Run L-BFGS-B from ``start``; restart it while it keeps improving.

    Restarting clears the quasi-Newton memory, which helps on a piecewise-smooth
    objective where curvature pairs across kinks mislead the model.
    """
    theta = normalize_receiver(np.asarray(start, dtype=np.float64), lower, upper)
    shape = theta.shape
    best_value = evaluate(theta, distribution, lower, upper, gradient=False).vnmse
    iterations = evaluations = 0
    success, message = True, "no iteration needed"
    for _ in range(max(restarts, 1)):
        result = optimize.minimize(
            _objective,
            theta.ravel(),
            args=(shape, distribution, lower, upper),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-10, "maxcor": 30},
        )
        iterations += int(result.nit)
        evaluations += int(result.nfev)
        candidate = normalize_receiver(result.x.reshape(shape), lower, upper)
        value = evaluate(candidate, distribution, lower, upper, gradient=False).vnmse
        improved = value < best_value * (1 - 1e-9)
        if value <= best_value:
            theta, best_value = candidate, value
            success, message = bool(result.success), str(result.message)
        if not improved:
            break
    return LocalSolution(theta, float(best_value), iterations, evaluations, success, message, label)


def starting_points(
    num_shared: int,
    num_messages: int,
    lower: float,
    upper: float,
    *,
    count: int,
    rng: np.random.Generator,
) -> list[tuple[str, np.ndarray]]:
    """Structured starting tables, then jittered copies of them.

    The structured starts give every message a block of ``H`` consecutive values in the
    x-major order (the structure of the best known tables): a dithered uniform grid, and
    grids from normal quantiles at a few widths.
    """
    size = num_shared * num_messages
    positions = (np.arange(size) + 0.5) / size

    def blocks(values):
        return values.reshape(num_messages, num_shared).T.copy()

    starts = [("dithered-uniform", blocks(positions))]
    for width in (1.0, 1.3, 1.7):
        starts.append((f"normal-quantiles-{width}", blocks(width * special.ndtri(positions))))
    base = list(starts)
    index = 0
    while len(starts) < count:
        name, table = base[index % len(base)]
        spread = np.ptp(table) / size
        jitter = rng.normal(scale=spread, size=table.shape)
        starts.append((f"{name}+jitter{index}", table + jitter))
        index += 1
    return [(name, normalize_receiver(table, lower, upper)) for name, table in starts[:count]]
