"""Designs: quality against the official tables, certification, custom distributions."""

import numpy as np
import pytest
from scipy import stats

import solvers
from quicdesign import ParameterError
from quicdesign.reference import QUIC_FL_VNMSE, STOCHASTIC_ROUNDING_VNMSE, values
from solvers.certify import cap_message_probability, solve_sender_lp, symmetric_sender

OFFICIAL = values(QUIC_FL_VNMSE)
STOCHASTIC_ROUNDING = values(STOCHASTIC_ROUNDING_VNMSE)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_no_shared_randomness_reproduces_optimized_stochastic_rounding(bits):
    result = solvers.design(bits, 0, certify=False)
    assert result.vnmse == pytest.approx(STOCHASTIC_ROUNDING[bits], rel=2e-4)


@pytest.mark.parametrize("bits, shared_bits", sorted(OFFICIAL))
def test_design_beats_official_tables_and_is_certified(bits, shared_bits):
    result = solvers.design(bits, shared_bits)
    assert result.success and result.status == 0
    assert result.vnmse < OFFICIAL[bits, shared_bits]
    assert result.table.vnmse == pytest.approx(result.vnmse, rel=1e-12)
    assert result.certificate["ok"]
    assert abs(result.certificate["gap"]) < 1e-7 * result.certificate["closed_form_objective"]
    assert result.verification["ok"] and result.verification["max_bias"] < 1e-9
    manifest = result.table.manifest
    assert manifest["design"]["certificate"]["solver"] == "cvxpy/HIGHS"
    assert manifest["quality"]["vnmse"] == result.vnmse


def test_more_shared_bits_never_hurt_with_a_warm_start():
    coarse = solvers.design(2, 2, certify=False)
    fine = solvers.design(2, 3, warm_start=coarse.table, certify=False)
    assert fine.vnmse <= coarse.vnmse


def test_lp_with_extra_constraints_costs_at_least_the_closed_form():
    table = solvers.design(2, 2, certify=False).table
    free = solve_sender_lp(table, grid_points=41)
    capped = solve_sender_lp(
        table, grid_points=41, constraints=[cap_message_probability(0.4, messages=[1, 2])]
    )
    assert free.ok and abs(free.gap) < 1e-9
    assert capped.status == "optimal"
    assert capped.lp_objective > free.lp_objective + 1e-6  # the cap binds somewhere
    per_message = capped.sender.mean(axis=1)  # (m, K): average over h
    assert per_message[:, 1:3].max() <= 0.4 + 1e-7
    assert free.sender.mean(axis=1)[:, 1:3].max() > 0.4


def test_symmetric_sender_constraint_is_free_for_a_symmetric_table():
    table = solvers.design(1, 2, certify=False).table
    assert solvers.verify(table).symmetric
    result = solve_sender_lp(table, grid_points=21, constraints=[symmetric_sender])
    assert result.status == "optimal"
    assert abs(result.gap) < 1e-9


def test_custom_scipy_and_empirical_distributions():
    heavy = solvers.design(2, 3, distribution=stats.t(df=5), certify=False)
    assert heavy.success and heavy.verification["ok"]
    lower, upper = heavy.table.support
    assert upper == pytest.approx(stats.t(df=5).isf(1 / 1024))
    sample = np.random.default_rng(0).standard_normal(50_000)
    empirical = solvers.design(2, 3, distribution=sample, certify=False)
    normal = solvers.design(2, 3, certify=False)
    assert empirical.verification["ok"]
    assert empirical.table.vnmse == pytest.approx(normal.vnmse, rel=0.03)


def test_threshold_instead_of_tail_probability():
    result = solvers.design(1, 2, threshold=2.5, certify=False)
    assert result.table.threshold == 2.5
    assert result.table.tail_prob == pytest.approx(2 * stats.norm.sf(2.5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0, "shared_bits": 2}, "bits"),
        ({"bits": 9, "shared_bits": 2}, "bits"),
        ({"bits": 2, "shared_bits": 20}, "shared_bits"),
        ({"bits": 2, "shared_bits": 2, "tail_prob": 0}, "tail_prob"),
        ({"bits": 2, "shared_bits": 2, "tail_prob": 1.5}, "tail_prob"),
        ({"bits": 2.0, "shared_bits": 2}, "integer"),
        ({"bits": 2, "shared_bits": 2, "distribution": "normal"}, "distribution"),
    ],
)
def test_invalid_parameters_raise_parameter_error(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        solvers.design(**kwargs)


def test_result_reports_starts_and_timing():
    result = solvers.design(1, 1, starts=3, certify=False)
    assert len(result.starts) == 3
    assert result.nit > 0 and result.wall_time > 0
    assert result.vnmse == min(s["vnmse"] for s in result.starts)


def test_basin_hops_never_lose_the_best_start():
    plain = solvers.design(2, 3, certify=False)
    hopped = solvers.design(2, 3, certify=False, hops=3)
    assert [s["label"] for s in hopped.starts][-3:] == ["hop0", "hop1", "hop2"]
    assert hopped.vnmse <= plain.vnmse
