"""Every guard that vouches for design quality, fed a bad object, must refuse it.

The LP certificate (solver-independent KKT check, a standard LP battery with infeasible
and unbounded problems), ``verify``, the success flags of ``design`` and of the
entropy-coded design, and the table loader's quality check (``quicdesign tables verify``).
"""

import numpy as np
import pytest
import scipy.sparse as sp

import quicdesign
import solvers
from quicdesign import SenderRule, Table
from quicdesign.cli import main as cli_main
from solvers.certify import (
    cap_message_probability,
    check_lp_solution,
    sender_objective,
    solve_sender_lp,
    solve_standard_lp,
)

# -- a standard LP battery (min c x, A x = b, x >= 0), optima by hand ----------------------
# Transport: ship 1 unit from each of 2 sources to 2 sinks needing 1.5 and 0.5, cost
# matrix [[1, 3], [2, 1]] over x = (x11, x12, x21, x22): send x11 = 1, x21 = 0.5,
# x22 = 0.5 at cost 1 + 1 + 0.5 = 2.5.
TRANSPORT = (
    np.array([1.0, 3.0, 2.0, 1.0]),
    np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=float),
    np.array([1.0, 1.0, 1.5, 0.5]),
    2.5,
)
# Diet on the simplex: min 3a + b + 2c with a + b + c = 1 -> all weight on b, cost 1.
SIMPLEX = (np.array([3.0, 1.0, 2.0]), np.ones((1, 3)), np.array([1.0]), 1.0)
# x1 + x2 = -1 has no non-negative solution.
INFEASIBLE = (np.array([1.0, 1.0]), np.ones((1, 2)), np.array([-1.0]), None)
# min -x1 with x1 - x2 = 0: x1 = x2 = t for any t >= 0, objective -t unbounded below.
UNBOUNDED = (np.array([-1.0, 0.0]), np.array([[1.0, -1.0]]), np.array([0.0]), None)


@pytest.mark.parametrize(
    "problem, status",
    [
        (TRANSPORT, "optimal"),
        (SIMPLEX, "optimal"),
        (INFEASIBLE, "infeasible"),
        (UNBOUNDED, "unbounded"),
    ],  # fmt: skip
    ids=["transport", "simplex", "infeasible", "unbounded"],
)
def test_standard_lp_battery(problem, status):
    c, A, b, optimum = problem
    found, x, check = solve_standard_lp(c, sp.csr_matrix(A), b)
    assert found.startswith(status)
    if optimum is None:
        assert x is None and not check.ok
    else:
        assert check.ok, check
        assert check.primal_objective == pytest.approx(optimum, abs=1e-9)
        assert check.dual_objective == pytest.approx(optimum, abs=1e-9)


def _transport_answer():
    c, A, b, _ = TRANSPORT
    _, x, _ = solve_standard_lp(c, sp.csr_matrix(A), b)
    # Duals by hand: reduced costs c - A^T y vanish on the basis x11, x21, x22:
    # y1 + y3 = 1, y2 + y3 = 2, y2 + y4 = 1; with y3 = 0, y = (1, 2, 0, -1), and
    # b @ y = 1 + 2 + 0 - 0.5 = 2.5, the primal optimum.
    return c, A, b, x, np.array([1.0, 2.0, 0.0, -1.0])


def test_kkt_check_accepts_the_optimum_with_its_duals():
    c, A, b, x, y = _transport_answer()
    check = check_lp_solution(c, A, b, x, y)
    assert check.ok, check


@pytest.mark.parametrize(
    "corrupt, failing",
    [
        (lambda x, y: (x + np.array([0.1, 0, 0, 0]), y), "primal_residual"),
        (lambda x, y: (x, y + np.array([0, 0, 0, 2.5])), "dual_residual"),
        # Feasible but not optimal: move 0.5 unit along the costly x12 route.
        (lambda x, y: (x + np.array([-0.5, 0.5, 0.5, -0.5]), y), "complementarity"),
        (lambda x, y: (None, y), "primal_residual"),
    ],
    ids=["infeasible-primal", "infeasible-dual", "suboptimal-primal", "no-answer"],
)
def test_kkt_check_refuses_a_wrong_answer(corrupt, failing):
    c, A, b, x, y = _transport_answer()
    x, y = corrupt(x, y)
    check = check_lp_solution(c, A, b, x, y)
    assert not check.ok
    assert getattr(check, failing) > 1e-3


def test_kkt_check_refuses_dual_infeasibility_alone():
    """min x2 s.t. x1 - x2 = 0: x = (0, 0) is optimal, so any y has zero gap and zero
    complementarity; y = 0.5 gives reduced costs (-0.5, 1.5): only dual feasibility fails."""
    c, A, b = np.array([0.0, 1.0]), np.array([[1.0, -1.0]]), np.array([0.0])
    assert check_lp_solution(c, A, b, np.zeros(2), np.array([-0.5])).ok  # y = -0.5 is fine
    check = check_lp_solution(c, A, b, np.zeros(2), np.array([0.5]))
    assert check.duality_gap == 0 and check.complementarity == 0
    assert check.dual_residual == pytest.approx(0.5) and not check.ok


def test_kkt_check_refuses_primal_infeasibility_alone():
    """min 0 s.t. x1 + x2 = 1 with y = 0: x = (0.5, 0.4) has zero gap and complementarity
    but misses the constraint by 0.1."""
    c, A, b = np.zeros(2), np.ones((1, 2)), np.array([1.0])
    assert check_lp_solution(c, A, b, np.array([0.5, 0.5]), np.zeros(1)).ok
    check = check_lp_solution(c, A, b, np.array([0.5, 0.4]), np.zeros(1))
    assert check.duality_gap == 0 and check.dual_residual == 0
    assert check.primal_residual == pytest.approx(0.1) and not check.ok


# -- the sender LP certificate -----------------------------------------------------------
def _scaled_rule(scale):
    """A SenderRule class built on ``scale * R`` that still reports ``R`` as its receiver:
    the sender no longer matches the receiver (biased by ``1 - 1/scale``)."""

    class ScaledRule(SenderRule):
        def __init__(self, receiver):
            receiver = np.array(receiver, dtype=np.float64)
            super().__init__(scale * receiver)
            receiver.setflags(write=False)
            self.receiver = receiver

    return ScaledRule


def _mismatched(table, scale=1.01):
    """A copy of ``table`` whose sender rule comes from the perturbed receiver ``scale R``."""
    bad = Table(
        table.receiver,
        bits=table.bits,
        shared_bits=table.shared_bits,
        tail_prob=table.tail_prob,
        lower=table.lower,
        upper=table.upper,
        manifest=table.manifest,
    )
    bad._sender = _scaled_rule(scale)(table.receiver)
    return bad


@pytest.fixture(scope="module")
def b2_table():
    return quicdesign.load_table(2)


def test_certificate_accepts_the_shipped_table_with_kkt_evidence(b2_table):
    certificate = solvers.certify(b2_table, grid_points=41)
    assert certificate.ok
    kkt = certificate.kkt
    assert kkt["ok"] and kkt["dual_residual"] < 1e-9 and kkt["duality_gap"] < 1e-9
    # The LP optimum recomputed from its sender probabilities is the closed form's.
    assert abs(certificate.gap) < 1e-9 * certificate.closed_form_objective


def test_certificate_refuses_a_sender_that_does_not_match_its_receiver(b2_table):
    certificate = solvers.certify(_mismatched(b2_table), grid_points=41)
    assert certificate.status == "optimal"
    assert not certificate.ok
    assert abs(certificate.relative_gap) > 1e-4


def test_certificate_refuses_an_infeasible_lp(b2_table):
    # No message may have probability above 0.2, but the 4 probabilities must sum to 1.
    certificate = solve_sender_lp(
        b2_table, grid_points=17, constraints=[cap_message_probability(0.2)]
    )
    assert certificate.status.startswith("infeasible")
    assert not certificate.ok and certificate.sender is None


def test_certificate_does_not_take_the_solvers_word(b2_table, monkeypatch):
    """The solver says optimal but hands back a wrong sender: the KKT check refuses it."""
    import cvxpy as cp

    solve = cp.Problem.solve

    def lying_solve(problem, *args, **kwargs):
        value = solve(problem, *args, **kwargs)
        variable = problem.variables()[0]
        # Mix in 5 % of the uniform sender: still on the simplex, no longer unbiased.
        variable.value = 0.95 * variable.value + 0.05 / b2_table.num_messages
        return value

    monkeypatch.setattr(cp.Problem, "solve", lying_solve)
    certificate = solvers.certify(b2_table, grid_points=41)
    assert certificate.status == "optimal"
    assert not certificate.ok
    assert not certificate.kkt["ok"] and certificate.kkt["primal_residual"] > 1e-3


def test_certificate_refuses_a_wrong_dual_even_when_the_primal_is_right(b2_table, monkeypatch):
    """Optimal status, the right sender (gap 0), but multipliers 10 % off: only the KKT
    check (dual feasibility and duality gap) can notice."""
    import cvxpy as cp

    solve = cp.Problem.solve

    def lying_solve(problem, *args, **kwargs):
        value = solve(problem, *args, **kwargs)
        for constraint in problem.constraints:
            constraint.dual_variables[0].value = 1.1 * constraint.dual_value
        return value

    monkeypatch.setattr(cp.Problem, "solve", lying_solve)
    certificate = solvers.certify(b2_table, grid_points=41)
    assert certificate.status == "optimal"
    assert abs(certificate.gap) < 1e-9 * certificate.closed_form_objective
    assert not certificate.kkt["ok"] and certificate.kkt["duality_gap"] > 1e-3
    assert not certificate.ok


def test_constrained_optimum_below_the_closed_form_is_refused(b2_table):
    """Constraints can only cost: an LP optimum below the unconstrained closed form is
    wrong. Fed a sender whose claimed error is 10 % too high, it must be refused."""

    class Pessimistic(SenderRule):
        def mse(self, values):
            return 1.1 * super().mse(values)

    bad = _mismatched(b2_table, scale=1.0)
    bad._sender = Pessimistic(b2_table.receiver)
    capped = solve_sender_lp(
        bad, grid_points=41, constraints=[cap_message_probability(0.9, messages=[1, 2])]
    )
    assert capped.status == "optimal" and capped.gap < 0
    assert not capped.ok


def test_sender_objective_is_the_mean_squared_error_of_the_sender(b2_table):
    grid = np.linspace(-1, 1, 5)
    probs = b2_table.sender.message_probabilities(grid)
    weights = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    expected = float(np.sum(weights * b2_table.sender.mse(grid)))
    assert sender_objective(probs, b2_table.receiver, grid, weights) == pytest.approx(
        expected, rel=1e-12
    )


# -- verify ------------------------------------------------------------------------------
def test_verify_refuses_a_biased_sender(b2_table):
    good = solvers.verify(b2_table, grid_points=501)
    assert good.ok and good.failures == () and good.max_bias < 1e-12
    report = solvers.verify(_mismatched(b2_table), grid_points=501)
    assert not report.ok
    assert "bias" in report.failures and "mse" in report.failures
    # z / 1.01 instead of z: the bias reaches about 1 % of the threshold.
    assert report.max_bias == pytest.approx(b2_table.threshold * (1 - 1 / 1.01), rel=0.05)


def test_verify_refuses_a_recorded_vnmse_that_lies(b2_table):
    lying = b2_table.with_manifest(quality={"vnmse": 0.9 * b2_table.vnmse})
    report = solvers.verify(lying, grid_points=501)
    assert not report.ok and not report.vnmse_matches_record
    assert report.failures == ("vnmse_record",)
    assert report.recomputed_vnmse == pytest.approx(b2_table.vnmse, rel=1e-9)


def test_table_loader_quality_check_refuses_a_lying_vnmse(b2_table, tmp_path, capsys):
    """A table saved with a false vNMSE has valid checksums and loads; the loader's quality
    check (``quicdesign tables verify``) must still fail it."""
    honest = b2_table.save(tmp_path / "honest")
    liar = b2_table.with_manifest(quality={"vnmse": 0.5 * b2_table.vnmse}).save(tmp_path / "liar")
    assert Table.load(liar).vnmse == pytest.approx(0.5 * b2_table.vnmse)
    assert cli_main(["tables", "verify", "--path", str(honest)]) == 0
    assert " ok " in capsys.readouterr().out
    assert cli_main(["tables", "verify", "--path", str(liar)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "failed: vnmse_record" in out


# -- success flags of the design entry points --------------------------------------------
def test_design_reports_success_for_a_sound_design():
    result = solvers.design(1, 1, starts=1)
    assert result.success and result.status == 0
    assert result.verification["ok"] and result.certificate["ok"]


def test_design_reports_failure_when_its_sender_is_biased(monkeypatch):
    monkeypatch.setattr(quicdesign.table, "SenderRule", _scaled_rule(1.01))
    result = solvers.design(1, 1, starts=1)
    assert not result.success and result.status == 2
    assert "failed" in result.message
    assert not result.verification["ok"] and not result.certificate["ok"]


def test_entropy_coded_design_reports_success_and_failure(monkeypatch):
    sound = solvers.design_entropy_coded(delta=1.0, shared_bits=2)
    assert sound.success and sound.status == 0
    monkeypatch.setattr(quicdesign.table, "SenderRule", _scaled_rule(1.01))
    biased = solvers.design_entropy_coded(delta=1.0, shared_bits=2)
    assert not biased.success and biased.status == 2
    assert not biased.verification["ok"] and not biased.certificate["ok"]
