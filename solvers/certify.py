"""Certification of the closed-form sender with a standard LP solver (cvxpy + HiGHS).

For a fixed receiver ``R``, the sender problem on a grid of ``z`` values is a linear
program: variables ``P[q, h, x] >= 0`` with ``sum_x P = 1``, unbiasedness
``mean_h sum_x P R = z_q`` and objective ``sum_q w_q mean_h sum_x P (z_q - R)^2``. Its
optimum must equal the closed form at the same points; the gap is the certificate. The
same LP accepts extra linear constraints (symmetry, caps on message probabilities, ...),
which produces senders the closed form does not cover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from quicdesign.errors import ParameterError
from quicdesign.table import Table

from .distributions import StandardNormal, ValueDistribution, as_distribution

__all__ = [
    "SenderLP",
    "Certificate",
    "certify",
    "solve_sender_lp",
    "symmetric_sender",
    "cap_message_probability",
]

_LP_VARIABLE_BUDGET = 60_000


@dataclass
class SenderLP:
    """The discretized sender LP handed to user constraint builders.

    Attributes
    ----------
    probabilities : cvxpy.Variable, shape (m * H, K)
        Row ``q * H + h`` is the sender distribution ``P(. | h, z_q)``.
    grid : ndarray, shape (m,)
        The ``z`` values.
    receiver : ndarray, shape (H, K)
    """

    probabilities: object
    grid: np.ndarray
    receiver: np.ndarray

    @property
    def num_shared(self) -> int:
        """``H``."""
        return self.receiver.shape[0]

    def at(self, q: int, h: int):
        """The cvxpy expression ``P(. | h, z_q)`` (a length-K row)."""
        return self.probabilities[q * self.num_shared + h, :]


def symmetric_sender(lp: SenderLP) -> list:
    """Require ``P(x | h, z) = P(K-1-x | H-1-h, -z)`` (needs a symmetric grid)."""
    if not np.allclose(lp.grid, -lp.grid[::-1]):
        raise ParameterError("symmetric_sender needs a grid symmetric around 0")
    num_shared = lp.num_shared
    m = lp.grid.size
    rows = np.arange(m * num_shared)
    q, h = np.divmod(rows, num_shared)
    mirrored = (m - 1 - q) * num_shared + (num_shared - 1 - h)
    return [lp.probabilities == lp.probabilities[mirrored, ::-1]]


def cap_message_probability(cap: float, messages=None) -> Callable[[SenderLP], list]:
    """Constraint builder: ``P(x | z) <= cap`` at every ``z`` for the given messages.

    Parameters
    ----------
    cap : float
        Upper bound in ``(0, 1]``.
    messages : sequence of int, optional
        Which messages are capped (all by default). The end messages usually must have
        probability 1 at the ends of the support, so capping them is infeasible there.
    """
    if not 0 < cap <= 1:
        raise ParameterError(f"cap must be in (0, 1], got {cap}")

    def build(lp: SenderLP) -> list:
        import cvxpy as cp

        num_shared, m = lp.num_shared, lp.grid.size
        columns = list(range(lp.receiver.shape[1])) if messages is None else list(messages)
        averaging = sp.kron(sp.eye(m), np.full((1, num_shared), 1.0 / num_shared))
        return [cp.Constant(averaging) @ lp.probabilities[:, columns] <= cap]

    return build


@dataclass
class Certificate:
    """Comparison of the LP optimum with the closed-form sender on the same grid.

    Attributes
    ----------
    ok : bool
        Solved to optimality and ``gap <= tolerance`` (always judged without extra
        constraints; with them the gap is the price of the constraints).
    lp_objective, closed_form_objective, gap : float
        Weighted objectives and ``lp - closed form``.
    max_residual : float
        Largest violation of the LP's constraints by the returned LP solution.
    """

    ok: bool
    lp_objective: float
    closed_form_objective: float
    gap: float
    relative_gap: float
    max_residual: float
    grid_points: int
    variables: int
    solver: str
    solver_version: str
    cvxpy_version: str
    status: str
    wall_time_s: float
    constrained: bool
    tolerance: float
    sender: np.ndarray | None = None

    def as_dict(self) -> dict:
        """JSON-able summary (without the sender array)."""
        return {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in self.__dict__.items()
            if k != "sender"
        }


def _default_grid_size(num_shared, num_messages):
    return int(np.clip(_LP_VARIABLE_BUDGET // (num_shared * num_messages), 16, 257))


def _grid(lower, upper, points, distribution: ValueDistribution):
    grid = np.linspace(lower, upper, points)
    edges = np.concatenate(([lower], (grid[1:] + grid[:-1]) / 2, [upper]))
    weights = np.diff(distribution.partial_moments(edges)[0])
    return grid, weights / distribution.second_moment()


def solve_sender_lp(
    table: Table,
    distribution=None,
    *,
    grid_points: int | None = None,
    constraints: Sequence[Callable[[SenderLP], list]] = (),
    solver: str = "HIGHS",
    tolerance: float = 1e-7,
) -> Certificate:
    """Solve the discretized sender LP for a table's receiver with cvxpy.

    Parameters
    ----------
    table : quicdesign.Table
    distribution : optional
        Weights of the grid points (standard normal by default).
    grid_points : int, optional
        Number of ``z`` values (uniform on the support); chosen to keep the LP near
        60k variables by default.
    constraints : sequence of callables
        Each takes a :class:`SenderLP` and returns a list of cvxpy constraints.
    solver : str
        A cvxpy solver name; HiGHS by default.
    tolerance : float
        Largest accepted gap for an unconstrained certificate.

    Returns
    -------
    Certificate
        ``sender`` holds the LP solution, shape ``(m, H, K)``.
    """
    import cvxpy as cp

    try:
        import highspy

        highs_version = getattr(highspy, "__version__", None) or highspy.Highs().version()
    except Exception:  # noqa: BLE001 - only used for provenance
        highs_version = "unknown"

    dist = as_distribution(distribution)
    receiver = table.receiver
    num_shared, num_messages = receiver.shape
    points = grid_points or _default_grid_size(num_shared, num_messages)
    if points < 2:
        raise ParameterError(f"grid_points must be >= 2, got {points}")
    lower, upper = table.support
    grid, weights = _grid(lower, upper, points, dist)

    began = time.perf_counter()
    probs = cp.Variable((points * num_shared, num_messages), nonneg=True)
    unbias = sp.kron(sp.eye(points), np.full((1, num_shared), 1.0 / num_shared))
    # Expected value per (q, h) row is P @ R[h]; rows are then averaged over h per q.
    row_values = np.tile(receiver, (points, 1))
    squared = (grid.repeat(num_shared)[:, None] - row_values) ** 2
    cost = squared * (weights.repeat(num_shared) / num_shared)[:, None]
    # Without extra constraints the LP separates over grid points, so any positive point
    # weights give the same solution; equal ones keep tail points (weights ~1e-6) from
    # drowning in HiGHS's tolerances. Coupling constraints need the true weights.
    solve_cost = squared / (num_shared * points) if not constraints else cost
    lp = SenderLP(probs, grid, receiver)
    cons = [
        cp.sum(probs, axis=1) == 1,
        cp.Constant(unbias) @ cp.sum(cp.multiply(probs, row_values), axis=1) == grid,
    ]
    for build in constraints:
        cons.extend(build(lp))
    problem = cp.Problem(cp.Minimize(cp.sum(cp.multiply(solve_cost, probs))), cons)
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise ParameterError(f"LP solver {solver} failed: {exc}") from None
    wall = time.perf_counter() - began

    closed = float(np.sum(weights * table.sender.mse(grid)))
    if probs.value is None:
        lp_value = float("nan")
        residual = float("inf")
        sender = None
    else:
        solution = probs.value
        lp_value = float(np.sum(cost * solution))
        residual = max(
            float(np.max(np.abs(solution.sum(axis=1) - 1))),
            float(np.max(np.abs(unbias @ (solution * row_values).sum(axis=1) - grid))),
            float(max(0.0, -solution.min())),
        )
        sender = solution.reshape(points, num_shared, num_messages)
    gap = lp_value - closed
    ok = (
        problem.status == cp.OPTIMAL
        and (bool(constraints) or abs(gap) <= tolerance * max(closed, 1e-12) + 1e-12)
        and residual <= 1e-6
    )
    return Certificate(
        ok=bool(ok),
        lp_objective=lp_value,
        closed_form_objective=closed,
        gap=float(gap),
        relative_gap=float(gap / closed) if closed > 0 else float("nan"),
        max_residual=residual,
        grid_points=int(points),
        variables=int(probs.size),
        solver=f"cvxpy/{solver}",
        solver_version=str(highs_version) if solver.upper() == "HIGHS" else "unknown",
        cvxpy_version=cp.__version__,
        status=str(problem.status),
        wall_time_s=round(wall, 4),
        constrained=bool(constraints),
        tolerance=tolerance,
        sender=sender,
    )


def certify(table: Table, distribution=None, *, grid_points: int | None = None) -> Certificate:
    """Certify that a table's closed-form sender is LP-optimal (HiGHS through cvxpy).

    Parameters
    ----------
    table : quicdesign.Table
    distribution : optional
        Grid weights (standard normal by default).
    grid_points : int, optional
        Number of ``z`` values.

    Returns
    -------
    Certificate
    """
    return solve_sender_lp(table, distribution or StandardNormal(), grid_points=grid_points)
