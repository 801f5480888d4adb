"""signSGD-MV and signSGD-FV: wire codecs, decoding theory and training claims."""

import numpy as np
import pytest

from quicdesign.errors import ParameterError, PayloadError
from quicdesign.fl import (
    NoisyQuadratic,
    VoteWeights,
    decode_signs,
    decode_vote,
    decoding_error,
    decoding_error_monte_carlo,
    encode_signs,
    encode_vote,
    hoeffding_bound,
    llr_weights,
    normal_sign_error,
    run_signsgd,
    split_batch_sizes,
    weighted_vote,
)

SPLITS = {
    "14x1+1x226": split_batch_sizes(240, 15, num_small=14, small_size=1),
    "12x1+3x76": split_batch_sizes(240, 15, num_small=12, small_size=1),
    "15x16": split_batch_sizes(240, 15),
}


def test_batch_splits_keep_the_total():
    assert list(split_batch_sizes(960, 15, num_small=9, small_size=4)) == [4] * 9 + [154] * 6
    for sizes in SPLITS.values():
        assert sizes.sum() == 240 and sizes.size == 15
    with pytest.raises(ParameterError):
        split_batch_sizes(10, 15, num_small=14, small_size=1)


def test_sign_payloads_are_one_bit_per_coordinate():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 37))
    grads[0, 3] = 0.0  # sent as +1
    payloads = encode_signs(grads)
    # the envelope (21 bytes, as for every payload) and one bit per coordinate
    assert [len(p) for p in payloads] == [21 + 5] * 4
    signs = decode_signs(payloads, 37)
    expected = np.where(grads < 0, -1, 1)
    assert np.array_equal(signs, expected)
    with pytest.raises(PayloadError):
        decode_signs([payloads[0][:-1]], 37)


def test_vote_payload_carries_ties_only_under_the_zero_rule():
    signs = np.array([[1, 1, -1, 1], [-1, 1, -1, -1]], dtype=np.int8)
    decoded = weighted_vote(signs)  # two voters: ties at 0 and 3
    assert list(decoded) == [0, 1, -1, 0]
    payload = encode_vote(decoded)
    assert len(payload) == 21 + 1 + 4 * 2
    assert np.array_equal(decode_vote(payload, 4), decoded)
    coins = weighted_vote(signs, tie="random", tie_seed=11)
    assert np.all(coins != 0) and list(coins[[1, 2]]) == [1, -1]
    assert np.array_equal(coins, weighted_vote(signs, tie="random", tie_seed=11))
    assert len(encode_vote(coins)) == 21 + 1
    with pytest.raises(PayloadError):
        decode_vote(payload + b"\x01", 4)


def test_weights_within_one_over_m_of_each_other_decode_like_majority_vote():
    rng = np.random.default_rng(1)
    m = 15
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(m, 500))
    weights = 2.0 * (1 + rng.uniform(-0.99, 0.99, size=m) / (2 * m))
    assert np.array_equal(weighted_vote(signs, weights), weighted_vote(signs))


def test_llr_weights_are_clipped_and_allow_inversion():
    w = llr_weights([0.0, 0.25, 0.5, 0.75, 1.0], clip=10, eps=1e-5)
    assert w[0] == -10 and w[-1] == 10 and w[2] == 0
    assert w[1] == pytest.approx(-np.log(3), rel=1e-4) and w[3] == pytest.approx(
        np.log(3), rel=1e-4
    )


def test_vote_weights_count_agreement_with_the_decoded_sign():
    state = VoteWeights.zeros(3, 4)
    signs = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [-1, -1, -1, -1]], dtype=np.int8)
    state.update(signs, np.array([1, 1, 1, 0], dtype=np.int8))
    assert np.array_equal(state.agreements, [3, 2, 0])
    assert np.array_equal(state.totals, [3, 3, 3])  # the tied coordinate carries no evidence
    state.update(signs, np.array([1, 1, 1, 1], dtype=np.int8), forgetting=0.5)
    assert np.array_equal(state.agreements, [1.5 + 4, 1 + 2, 0])
    per_coordinate = VoteWeights.zeros(3, 4, "per-coordinate")
    per_coordinate.update(signs, np.ones(4, dtype=np.int8))
    assert per_coordinate.agreements.shape == (3, 4)


@pytest.mark.parametrize("snr", [0.05, 0.1, 0.3])
def test_exact_decoding_errors_match_monte_carlo_and_obey_hoeffding(snr):
    errors = {}
    for name, batches in SPLITS.items():
        flips = normal_sign_error(snr, batches)
        oracle = llr_weights(1 - flips, clip=np.inf, eps=0.0)
        for rule, weights in (("mv", None), ("fv", oracle)):
            exact = decoding_error(flips, weights)
            draws = 100_000
            estimate = decoding_error_monte_carlo(flips, weights, draws=draws, seed=3)
            # five standard errors (at least 1e-4 for the tiny probabilities)
            tolerance = 5 * np.sqrt(max(exact * (1 - exact), 1e-4) / draws)
            assert abs(estimate - exact) <= tolerance, (name, rule, exact, estimate)
            assert exact <= hoeffding_bound(flips, weights) + 1e-15
            errors[name, rule] = exact
    for name in ("14x1+1x226", "12x1+3x76"):
        # oracle weighting strictly helps under heterogeneity ...
        assert errors[name, "fv"] < errors[name, "mv"]
        # ... and heterogeneity hurts majority vote at a fixed total batch
        assert errors[name, "mv"] > errors["15x16", "mv"]
    assert errors["15x16", "fv"] == pytest.approx(errors["15x16", "mv"], rel=1e-12)


def test_exact_error_of_a_single_worker_and_mv_ties():
    assert decoding_error([0.2]) == pytest.approx(0.2)
    # two equal voters: wrong when both flip, a tie (counted 1/2) when one flips
    assert decoding_error([0.1, 0.1]) == pytest.approx(0.01 + 0.5 * 0.18)
    with pytest.raises(ParameterError):
        decoding_error(np.full(30, 0.1))


def _tail_losses(rule, batches, seeds=(0, 1, 2), **options):
    losses, weights = [], []
    for seed in seeds:
        problem = NoisyQuadratic(100, 15, seed=seed)
        history = run_signsgd(
            problem,
            rule,
            rounds=1200,
            step_size=2e-2,
            batch_size=batches,
            warmup=50,
            seed=seed,
            record_every=10,
            **options,
        )
        losses.append(history.tail_mean("loss", 600))
        weights.append(history.extras["weights"])
    return float(np.mean(losses)), np.mean(weights, axis=0)


@pytest.mark.slow
def test_fv_beats_mv_under_heterogeneous_batches_and_matches_under_equal():
    for name in ("14x1+1x226", "12x1+3x76"):
        mv, _ = _tail_losses("mv", SPLITS[name])
        fv, weights = _tail_losses("fv", SPLITS[name])
        # measured tail losses (fv, mv): 14x1+1x226 (0.184, 0.413), 12x1+3x76 (0.212, 0.310)
        assert 0.15 < fv < 0.25 and 0.25 < mv < 0.5, (name, fv, mv)
        assert 0.3 * mv < fv < 0.85 * mv, (name, fv, mv)
        small = weights[SPLITS[name] == 1]
        large = weights[SPLITS[name] > 1]
        # learned weights order workers by batch size
        assert large.min() > small.max(), (name, weights)
    mv, _ = _tail_losses("mv", SPLITS["15x16"])
    fv, weights = _tail_losses("fv", SPLITS["15x16"])
    assert fv == pytest.approx(mv, rel=0.02)
    assert 0.17 < mv < 0.24, mv  # measured 0.2015
    assert (weights.max() - weights.min()) / weights.mean() < 0.15, weights


def test_bits_are_one_per_coordinate_each_way_and_fv_costs_nothing_extra():
    problem = NoisyQuadratic(100, 15, seed=0)
    for rule in ("mv", "fv"):
        history = run_signsgd(
            problem,
            rule,
            rounds=30,
            step_size=1e-2,
            batch_size=SPLITS["12x1+3x76"],
            warmup=5,
            seed=0,
        )
        counter = history.counter
        # framed like every payload: the 21-byte envelope, then 13 bytes of sign bits
        assert np.all(counter.upload == 30 * 8 * (21 + 13))
        assert np.all(counter.upload_framing == 30 * 8 * 21)
        assert counter.total_upload_unframed == 15 * 30 * 8 * 13
        # odd M and continuous weights: no ties, so the downlink is d bits too
        assert np.all(counter.download == 30 * 8 * (21 + 13))
        assert counter.total_download_unframed == 15 * 30 * 8 * 13
        assert history.upload_bits_unframed[-1] == counter.total_upload_unframed


def test_per_coordinate_estimator_runs_and_warmup_is_majority_vote():
    problem = NoisyQuadratic(50, 15, seed=0)
    batches = SPLITS["14x1+1x226"]
    mv = run_signsgd(problem, "mv", rounds=20, step_size=1e-2, batch_size=batches, seed=4)
    warm = run_signsgd(
        problem,
        "fv",
        rounds=20,
        step_size=1e-2,
        batch_size=batches,
        warmup=20,
        seed=4,
        estimator="per-coordinate",
    )
    assert np.array_equal(mv.extras["model"], warm.extras["model"])
    assert warm.extras["weights"].shape == (15, 50)
    with pytest.raises(ParameterError):
        run_signsgd(problem, "fv", rounds=1, step_size=1e-2, batch_size=4, estimator="median")


def test_sign_payloads_go_through_the_validated_reader():
    gradients = np.array([[0.5, -1.0, 2.0], [-0.1, 0.0, -3.0]])
    payloads = encode_signs(gradients, round_seed=5)
    assert [len(p) for p in payloads] == [22, 22]
    assert [p[:5] for p in payloads] == [b"QDSU\x04"] * 2
    np.testing.assert_array_equal(
        decode_signs(payloads, 3, round_seed=5), [[1, -1, 1], [-1, 1, -1]]
    )
    first = payloads[0]
    with pytest.raises(PayloadError, match="padding"):
        decode_signs([first[:21] + bytes([first[21] | 0x80])], 3, round_seed=5)  # beyond dim
    with pytest.raises(PayloadError):
        decode_signs([first + b"\x00"], 3, round_seed=5)  # trailing byte
    # the envelope: another round, dimension, scheme, or a client twice
    with pytest.raises(PayloadError, match="round"):
        decode_signs(payloads, 3, round_seed=6)
    with pytest.raises(PayloadError, match="dimension"):
        decode_signs(payloads, 4, round_seed=5)
    with pytest.raises(PayloadError, match="two sign payloads"):
        decode_signs([first, first], 3, round_seed=5)
    vote = encode_vote(np.array([1, 0, -1], dtype=np.int8))
    with pytest.raises(PayloadError, match="magic"):
        decode_signs([vote], 3)
    np.testing.assert_array_equal(decode_vote(vote, 3), [1, 0, -1])
    with pytest.raises(PayloadError, match="magic"):
        decode_vote(first, 3, round_seed=5)
    with pytest.raises(PayloadError, match="4 per tie"):
        decode_vote(vote + b"\x00", 3)
    with pytest.raises(PayloadError, match="out of range"):
        decode_vote(vote[:22] + np.array([7], dtype="<u4").tobytes(), 3)
