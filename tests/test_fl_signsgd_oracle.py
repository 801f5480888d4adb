"""signSGD-FV's oracle baseline, the agreement diagnostic and the real-data experiment."""

import numpy as np
import pytest

from quicdesign.errors import ParameterError
from quicdesign.fl import NoisyQuadratic, run_signsgd, split_batch_sizes
from quicdesign.fl.experiments import run_experiment


class _NoTruth:
    """A problem that hides its exact gradient (as every real deployment does)."""

    def __init__(self, problem):
        self._problem = problem
        self.dim, self.num_clients = problem.dim, problem.num_clients

    def gradients(self, *args):
        return self._problem.gradients(*args)

    def initial_point(self, seed=0):
        return self._problem.initial_point(seed)

    def metrics(self, point):
        return self._problem.metrics(point)


def test_truth_agreement_counts_the_exact_sign_and_the_oracle_weights_use_it():
    problem = NoisyQuadratic(60, 15, seed=0)
    # worker 14 computes the exact gradient (batch 0): it always agrees with the truth
    batches = np.array([1] * 14 + [0])
    history = run_signsgd(
        problem, "fv-oracle", rounds=40, step_size=1e-2, batch_size=batches, warmup=5, seed=0
    )
    truth = history.extras["truth_state"].agreement_rates()
    assert truth[14] == 1.0
    # batch-1 workers near x_0 (gradient ~ N(0, 1) per coordinate, noise sd 4): flip
    # probability E[Phi(-|g| / 4)] ~ 0.44; 40 * 60 counts each, sd ~ 0.01
    assert np.all((truth[:14] > 0.5) & (truth[:14] < 0.62)), truth
    weights = history.extras["weights"]
    assert weights[14] == 10.0  # the clipped LLR of a perfect worker
    assert np.all(weights[:14] < 0.5)
    # FV learns from the vote instead: the exact worker is not singled out that way
    fv = run_signsgd(
        problem,
        "fv",
        rounds=40,
        step_size=1e-2,
        batch_size=batches,
        warmup=5,
        seed=0,
        track_truth=True,
    )
    assert fv.extras["weights"][14] < 3.0
    assert np.array_equal(fv.extras["truth_state"].agreement_rates()[14], 1.0)


def test_the_oracle_and_the_diagnostic_refuse_a_problem_without_its_exact_gradient():
    hidden = _NoTruth(NoisyQuadratic(10, 3, seed=0))
    for options in ({"rule": "fv-oracle"}, {"rule": "fv", "track_truth": True}):
        with pytest.raises(ParameterError, match="full_gradient"):
            run_signsgd(hidden, rounds=2, step_size=1e-2, batch_size=4, **options)
    history = run_signsgd(hidden, "fv", rounds=2, step_size=1e-2, batch_size=4)
    assert history.extras["truth_state"] is None


@pytest.mark.slow
def test_digits_fv_loses_to_mv_while_the_oracle_wins():
    result = run_experiment("signsgd-digits", seeds=(0,), rounds=400, workers=1)
    rows = {(row["split"], row["rule"]): row for row in result.summary}
    assert len(rows) == 12
    # equal batches: the learned weights stay within 1/M of each other, FV is MV
    assert rows["15x8", "fv-pooled"]["test_accuracy"] == rows["15x8", "mv"]["test_accuracy"]
    # seeds 0-3 at 400 rounds, 12x1+3x36 tail losses: mv 0.470-0.490, fv 0.588-0.607
    # (ratio 1.21-1.25), oracle 0.345-0.396 (ratio 0.73-0.81)
    mv, fv, oracle = (rows["12x1+3x36", rule] for rule in ("mv", "fv-pooled", "fv-oracle"))
    assert 0.42 < mv["tail_loss"] < 0.54, mv
    assert 1.1 < fv["tail_loss"] / mv["tail_loss"] < 1.4, (fv, mv)
    assert 0.6 < oracle["tail_loss"] / mv["tail_loss"] < 0.9, (oracle, mv)
    # the oracle reaches 90 % test accuracy first (seeds 0-3: 162-318 vs 224-378 or never)
    assert oracle["rounds_to_test_accuracy_0.9"] < 330, oracle
    # why: a batch-1 worker agrees with the vote (0.71-0.72) far more than with the
    # truth (0.48-0.49); the batch-36 worker the other way round (by 0.05-0.07)
    assert 0.15 < fv["agree_vote_first"] - fv["agree_truth_first"] < 0.3, fv
    assert 0.02 < fv["agree_truth_last"] - fv["agree_vote_last"] < 0.12, fv
    # so FV's weights invert the batch order, and the oracle's do not
    assert fv["w_first"] > 2 * fv["w_last"] > 0, fv
    assert -0.12 < oracle["w_first"] < 0.05 and 0.3 < oracle["w_last"] < 0.7, oracle


def test_digits_batch_modes_are_the_papers_scaled_to_120_samples():
    from quicdesign.fl.experiments import _DIGITS_SPLITS

    # the paper's 960 = 15x64 = 9x4+6x154 = 12x4+3x304 = 14x4+1x904, small batches -> 1
    expected = {
        "15x8": [8] * 15,
        "9x1+6x18.5": [1] * 9 + [19, 19, 19, 18, 18, 18],
        "12x1+3x36": [1] * 12 + [36] * 3,
        "14x1+1x106": [1] * 14 + [106],
    }
    assert set(_DIGITS_SPLITS) == set(expected)
    for name, params in _DIGITS_SPLITS.items():
        assert list(split_batch_sizes(120, 15, **params)) == expected[name]
