"""Certification of the closed-form sender with a standard LP solver (cvxpy + HiGHS).

For a fixed receiver ``R``, the sender problem on a grid of ``z`` values is a linear
program: variables ``P[q, h, x] >= 0`` with ``sum_x P = 1``, unbiasedness
``mean_h sum_x P R = z_q`` and objective ``sum_q w_q mean_h sum_x P (z_q - R)^2``. Its
optimum must equal the closed form at the same points; the gap is the certificate. The
same LP accepts extra linear constraints (symmetry, caps on message probabilities, ...),
which produces senders the closed form does not cover.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from quicdesign.errors import ParameterError
from quicdesign.table import Table

from .distributions import StandardNormal, ValueDistribution, as_distribution

__all__ = [
    "SenderLP",
    "Certificate",
    "LPCheck",
    "certify",
    "check_lp_solution",
    "sender_objective",
    "solve_standard_lp",
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
    kkt : dict or None
        :class:`LPCheck` of the unconstrained LP (duals, complementarity, gap).
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
    kkt: dict | None = field(default=None, repr=False)
    sender: np.ndarray | None = field(default=None, repr=False)

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


@dataclass
class LPCheck:
    """Solver-independent check of an answer to ``min c @ x  s.t.  A x = b,  x >= 0``.

    Computed from ``(c, A, b)`` and the returned primal ``x`` and dual ``y`` with numpy only,
    so a solver that reports "optimal" for a wrong answer is caught (cvxpy's solver tests
    check every back-end the same way).

    Attributes
    ----------
    primal_objective, dual_objective : float
        ``c @ x`` and ``b @ y``, recomputed.
    primal_residual : float
        ``max(|A x - b|, max(0, -x))``: primal feasibility.
    dual_residual : float
        ``max(0, -min(c - A^T y))``: dual feasibility (reduced costs non-negative).
    complementarity : float
        ``|x @ (c - A^T y)|``: complementary slackness.
    duality_gap : float
        ``|c @ x - b @ y|``.
    ok : bool
        All four within ``tolerance`` (relative to the scale of the data).
    """

    primal_objective: float
    dual_objective: float
    primal_residual: float
    dual_residual: float
    complementarity: float
    duality_gap: float
    tolerance: float
    ok: bool


def check_lp_solution(c, A, b, x, y, *, tolerance: float = 1e-6) -> LPCheck:
    """Check the KKT conditions of a standard-form LP answer (see :class:`LPCheck`).

    Parameters
    ----------
    c : ndarray, shape (n,)
    A : sparse matrix or ndarray, shape (r, n)
    b : ndarray, shape (r,)
    x : ndarray, shape (n,) or None
        Primal answer; ``None`` (no answer) fails every check.
    y : ndarray, shape (r,) or None
        Equality multipliers, sign convention ``c - A^T y >= 0``.
    tolerance : float
        Residuals are accepted up to ``tolerance`` times the scale of ``c`` (dual side),
        ``b`` (primal side) and the objective (gap and complementarity).
    """
    c = np.asarray(c, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if x is None or y is None:
        nan = float("nan")
        return LPCheck(nan, nan, float("inf"), float("inf"), float("inf"), float("inf"),
                       tolerance, False)  # fmt: skip
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    primal = float(c @ x)
    dual = float(b @ y)
    reduced = c - np.asarray(A.T @ y).ravel()
    primal_residual = max(float(np.max(np.abs(A @ x - b))), float(max(0.0, -x.min())))
    dual_residual = float(max(0.0, -reduced.min()))
    complementarity = abs(float(np.maximum(x, 0.0) @ reduced))
    gap = abs(primal - dual)
    objective_scale = max(1.0, abs(primal), abs(dual))
    ok = (
        all(np.isfinite([primal, dual]))
        and primal_residual <= tolerance * max(1.0, float(np.max(np.abs(b))))
        and dual_residual <= tolerance * max(1.0, float(np.max(np.abs(c))))
        and complementarity <= tolerance * objective_scale
        and gap <= tolerance * objective_scale
    )
    return LPCheck(primal, dual, primal_residual, dual_residual, complementarity, gap,
                   tolerance, bool(ok))  # fmt: skip


@functools.cache
def _silence_highs_banner() -> None:
    """Swallow the copyright banner HiGHS writes to fd 1 once per process.

    The banner comes from C on the first ``Highs()`` and ignores ``output_flag``; it
    interleaves with tables and progress lines in logs.
    """
    try:
        import highspy
    except ModuleNotFoundError:
        return
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def solve_standard_lp(c, A, b, *, solver: str = "HIGHS", tolerance: float = 1e-6):
    """Solve ``min c @ x  s.t.  A x = b,  x >= 0`` with cvxpy and check the answer.

    Returns
    -------
    status : str
        cvxpy's status (``optimal``, ``infeasible``, ``unbounded``, ...).
    x : ndarray or None
    check : LPCheck
        ``check.ok`` is False unless the status is optimal *and* the KKT conditions hold.
    """
    import cvxpy as cp

    x = cp.Variable(len(c), nonneg=True)
    equality = cp.Constant(A) @ x == b
    problem = cp.Problem(cp.Minimize(np.asarray(c) @ x), [equality])
    _silence_highs_banner()
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise ParameterError(f"LP solver {solver} failed: {exc}") from None
    primal = x.value if problem.status == cp.OPTIMAL else None
    # cvxpy reports multipliers of ``A x == b`` with the opposite sign.
    dual = None if equality.dual_value is None or primal is None else -equality.dual_value
    check = check_lp_solution(c, A, b, primal, dual, tolerance=tolerance)
    if problem.status != cp.OPTIMAL:
        check.ok = False
    return str(problem.status), primal, check


def sender_objective(sender, receiver, grid, weights) -> float:
    """``sum_q w_q mean_h sum_x P(x | h, z_q) (z_q - R[h, x])^2`` for ``sender`` (m, H, K).

    Written from the definition, independently of the LP's cost matrix.
    """
    squared = (grid[:, None, None] - receiver[None, :, :]) ** 2
    return float(np.einsum("q,qhx,qhx->", weights, sender, squared) / receiver.shape[0])


def _sender_lp_standard_form(receiver, grid):
    """``A`` and ``b`` of the sender LP in the variable ``vec(P)`` (row-major ``(m*H, K)``)."""
    num_shared, num_messages = receiver.shape
    points = grid.size
    rows = points * num_shared
    simplex = sp.kron(sp.eye(rows), np.ones((1, num_messages)))
    unbiased = sp.kron(sp.eye(points), (receiver / num_shared).reshape(1, -1))
    A = sp.vstack([simplex, unbiased]).tocsr()
    return A, np.concatenate([np.ones(rows), grid])


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

    The answer is not taken on the solver's word: without extra constraints the
    certificate also requires the KKT conditions (primal and dual feasibility,
    complementary slackness, zero duality gap; :func:`check_lp_solution`) and compares
    the LP optimum, recomputed from the sender probabilities, with the closed form. With
    extra constraints it requires their feasibility and an optimum no better than the
    closed form (which is the unconstrained optimum).

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
        Largest accepted relative gap for an unconstrained certificate.

    Returns
    -------
    Certificate
        ``sender`` holds the LP solution, shape ``(m, H, K)``.
    """
    import cvxpy as cp

    _silence_highs_banner()
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
    A, b = _sender_lp_standard_form(receiver, grid)
    squared = (grid.repeat(num_shared)[:, None] - np.tile(receiver, (points, 1))) ** 2
    # Without extra constraints the LP separates over grid points, so any positive point
    # weights give the same solution; equal ones keep tail points (weights ~1e-6) from
    # drowning in HiGHS's tolerances. Coupling constraints need the true weights.
    point_weights = np.full(points, 1.0 / points) if not constraints else weights
    c = (squared * (point_weights.repeat(num_shared) / num_shared)[:, None]).ravel()

    began = time.perf_counter()
    kkt = None
    if not constraints:
        status, solution, kkt = solve_standard_lp(c, A, b, solver=solver)
        violation = 0.0
    else:
        x = cp.Variable(c.size, nonneg=True)
        probs = cp.reshape(x, (points * num_shared, num_messages), order="C")
        extra = [con for build in constraints for con in build(SenderLP(probs, grid, receiver))]
        problem = cp.Problem(cp.Minimize(c @ x), [cp.Constant(A) @ x == b, *extra])
        _silence_highs_banner()
        try:
            problem.solve(solver=solver)
        except cp.error.SolverError as exc:
            raise ParameterError(f"LP solver {solver} failed: {exc}") from None
        status = str(problem.status)
        solution = x.value if problem.status == cp.OPTIMAL else None
        violation = (
            max((float(np.max(con.violation())) for con in extra), default=0.0)
            if solution is not None
            else float("inf")
        )
    wall = time.perf_counter() - began

    closed = float(np.sum(weights * table.sender.mse(grid)))
    if solution is None:
        lp_value, residual, sender = float("nan"), float("inf"), None
    else:
        sender = solution.reshape(points, num_shared, num_messages)
        lp_value = sender_objective(sender, receiver, grid, weights)
        residual = max(
            float(np.max(np.abs(A @ solution - b))), float(max(0.0, -solution.min())), violation
        )
    gap = lp_value - closed
    slack = tolerance * max(closed, 1e-12) + 1e-12
    if constraints:
        # Extra constraints can only cost: an optimum below the closed form is wrong.
        judged = gap >= -slack
    else:
        judged = abs(gap) <= slack and kkt is not None and kkt.ok
    ok = status == cp.OPTIMAL and judged and residual <= 1e-6
    return Certificate(
        ok=bool(ok),
        lp_objective=lp_value,
        closed_form_objective=closed,
        gap=float(gap),
        relative_gap=float(gap / closed) if closed > 0 else float("nan"),
        max_residual=residual,
        grid_points=int(points),
        variables=int(c.size),
        solver=f"cvxpy/{solver}",
        solver_version=str(highs_version) if solver.upper() == "HIGHS" else "unknown",
        cvxpy_version=cp.__version__,
        status=status,
        wall_time_s=round(wall, 4),
        constrained=bool(constraints),
        tolerance=tolerance,
        kkt=None if kkt is None else kkt.__dict__.copy(),
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
