"""Golden values with provenance for pieces other tests can only check statistically.

Every constant below comes from a formula in /work/shared/papers or from a hand
computation described next to it, never from running the code under test.
"""

import json

import numpy as np
import pytest

import quicdesign
from quicdesign.compressors import CompressorProperties, CosSGD
from quicdesign.compressors.cossgd import cosine_levels
from quicdesign.fl import Participation, run_intrinsic, run_mcm
from quicdesign.fl.data import linear_teacher_dataset
from quicdesign.fl.problems import Problem, classification_problem

# -- CosSGD levels -----------------------------------------------------------------------
# papers/cossgd.md, "Level set": the 2^b levels are n cos(pi (beta + k (1 - 2 beta) /
# (2^b - 1))). With n = 1 and beta = 0 these are cos(k pi / (2^b - 1)): b = 2 gives
# cos 0, cos 60 deg = 1/2, ...; b = 4 the cosines of multiples of 12 deg, e.g.
# cos 36 deg = (1 + sqrt 5) / 4 and cos 72 deg = (sqrt 5 - 1) / 4; b = 3 multiples of
# pi / 7 (standard trigonometric table values, 10 digits).
_SQRT5 = 5**0.5
COSINE_LEVELS = {
    1: [1.0, -1.0],
    2: [1.0, 0.5, -0.5, -1.0],
    3: [1.0, 0.9009688679, 0.6234898019, 0.2225209340],
    4: [1.0, 0.9781476007, 0.9135454576, (1 + _SQRT5) / 4, 0.6691306064, 0.5,
        (_SQRT5 - 1) / 4, 0.1045284633],
}  # fmt: skip


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_cosine_levels_follow_the_cossgd_formula(bits):
    half = COSINE_LEVELS[bits][: 1 << (bits - 1)]
    expected = np.array(half + [-v for v in reversed(half)])  # symmetric about 0
    np.testing.assert_allclose(cosine_levels(1.0, 0.0, bits), expected, atol=1e-10)
    np.testing.assert_allclose(cosine_levels(3.0, 0.0, bits), 3.0 * expected, atol=3e-10)


def test_cossgd_decodes_to_the_cosine_levels_not_uniform_ones():
    """x = (4, 1, -2), b = 2, c = 0 (deterministic rounding), by hand:
    n = sqrt(21); with c = 0 the outer levels are +-max|x| = +-4, so beta = theta / pi with
    theta = arccos(4 / sqrt 21). The inner levels are +-sqrt(21) cos(theta + (pi - 2 theta)
    / 3) = +-1.58720980609 (a uniform grid on [-4, 4] would give +-4/3). u(1) lands at
    t = 1.19 -> level 1 and u(-2) at t = 2.14 -> level 2."""
    compressor = CosSGD(bits=2)
    payload = compressor.encode(np.array([4.0, 1.0, -2.0]), round_seed=0, client_id=0)
    decoded = compressor.decode(payload, dim=3, round_seed=0)
    # n and beta travel as float32: relative error ~1e-7
    np.testing.assert_allclose(decoded, [4.0, 1.58720980609, -1.58720980609], rtol=1e-6)


# -- the sender rule on the shipped b = 2 table ------------------------------------------
# papers/quic-fl.md section 4(a): every h sends the level nearest a common target y; h
# switches from level j to j + 1 when y passes the midpoint (R[h, j] + R[h, j + 1]) / 2,
# raising the mean by (R[h, j + 1] - R[h, j]) / H. Computed by walking y up through the
# 96 sorted midpoints of the shipped table (receiver sha256 below) until the mean brackets
# z; the h switching there randomizes with P(j + 1) = (z - mean_before) / (its step).
B2_RECEIVER_SHA256 = "0230b72ab132d61d8886b54fe2fbf1e6bee2bee7fcb19126c796028c0e374b9d"
SENDER_GOLDEN = [
    # z, randomizing h, (lower level, upper level), P(upper), level below h, level above h
    (0.5, 28, (1, 2), 0.5365287030, 2, 1),
    (-1.2, 19, (0, 1), 0.9875640948, 1, 0),
    (2.0, 25, (2, 3), 0.2399021362, 3, 2),
]


@pytest.mark.parametrize("z, h, pair, upper_prob, low_h_level, high_h_level", SENDER_GOLDEN)
def test_sender_probabilities_of_the_shipped_b2_table(
    z, h, pair, upper_prob, low_h_level, high_h_level
):
    table = quicdesign.load_table(2)
    folder = quicdesign.shipped_tables_dir() / table.name
    sha = json.loads((folder / "manifest.json").read_text())["arrays"]["receiver"]["sha256"]
    assert sha == B2_RECEIVER_SHA256, "the shipped b=2 table changed: recompute these values"
    probs = table.sender.message_probabilities(np.array([z]))[0]  # (H, K)
    expected = np.zeros_like(probs)
    expected[:h, low_h_level] = 1.0  # rows with smaller midpoints switched already
    expected[h + 1 :, high_h_level] = 1.0
    expected[h, pair[0]], expected[h, pair[1]] = 1.0 - upper_prob, upper_prob
    np.testing.assert_allclose(probs, expected, atol=5e-11)


# -- MCM: w_hat = H_prev + Omega ----------------------------------------------------------
class _HalfGrid:
    """Test double for the downlink: rounds every coordinate to a multiple of 1/2.

    Deterministic, so the run can be followed by hand. It declares itself unbiased only
    to pass run_mcm's guard; it is not a real compressor."""

    name = "half-grid"
    properties = CompressorProperties(unbiased=True, sums_before_decoding=False)

    def omega(self, dim):
        return 0.0

    def encode(self, vector, *, round_seed, client_id, rng=None):
        return (np.round(2.0 * np.asarray(vector)) / 2.0).astype("<f8").tobytes()

    def decode(self, payload, *, dim, round_seed):
        return np.frombuffer(payload, dtype="<f8").copy()


class _Quadratic3(Problem):
    """f(w) = ||w - c||^2 / 2 with c = (1, -2, 3), one client, exact gradients w - c."""

    dim, num_clients = 3, 1
    center = np.array([1.0, -2.0, 3.0])

    def gradients(self, points, clients, batch_sizes, rng):
        return np.atleast_2d(np.asarray(points) - self.center)

    def loss(self, point):
        return float(0.5 * np.sum((np.asarray(point) - self.center) ** 2))


def test_mcm_local_model_is_memory_plus_downlink_message():
    """papers/mcm.md: workers differentiate at w_hat = H + Omega, Omega = C(w - H), then
    H <- H + alpha Omega. By hand with step 0.3, alpha_down = alpha_up = 0.5, w0 = 0,
    exact uplink, C = round to multiples of 1/2:
      t=0: H = 0, Omega = C(0) = 0, w_hat = 0; g = (-1, 2, -3); w1 = (0.3, -0.6, 0.9).
      t=1: Omega = C(w1 - 0) = (0.5, -0.5, 1.0); w_hat = (0.5, -0.5, 1.0);
           H = 0.5 Omega = (0.25, -0.25, 0.5); g = w_hat - c = (-0.5, 1.5, -2.0), and the
           exact uplink with memory still delivers g: w2 = w1 - 0.3 g = (0.45, -1.05, 1.5).
      t=2: Omega = C(w2 - H) = C(0.2, -0.8, 1.0) = (0, -1, 1); w_hat = (0.25, -1.25, 1.5).
    (H + Omega / 2 would give (0.25, -0.25, 0.5) at t = 1.)"""
    seen = []
    run_mcm(
        _Quadratic3(),
        "mcm",
        rounds=3,
        step_size=0.3,
        downlink=_HalfGrid(),
        up_rate=0.5,
        down_rate=0.5,
        batch_size=None,
        smart_init=False,
        callback=lambda t, server, workers: seen.append(workers.local_models[0].copy()),
    )
    expected = [[0.0, 0.0, 0.0], [0.5, -0.5, 1.0], [0.25, -1.25, 1.5]]
    np.testing.assert_allclose(seen, expected, atol=1e-12)


# -- intrinsic gradient compression: bandwidth counters ----------------------------------
@pytest.fixture(scope="module")
def softmax_problem():
    # 12 features x 3 classes + 3 biases = D = 39 parameters, 6 clients
    train, test = linear_teacher_dataset(
        num_train=400, num_test=100, num_features=12, num_classes=3, seed=0
    )
    return classification_problem("softmax", train, test, 6, partition="shards", seed=0)


@pytest.mark.parametrize(
    "variant, options, stateless, upload_bits, download_bits",
    [
        # 9 steps x d = 5 float32 up = 1440 bits. A client that synced last step downloads
        # only the changed z: nothing at t = 0, then 5 floats x 8 steps = 1280 bits.
        ("static", {}, False, 1440, 1280),
        ("k-subspace", {"num_subspaces": 8}, False, 1440, 1280),
        # Stateless clients need every non-zero z (min(t, K) of them) capped at the whole
        # model: 0+5+10+15+20+25+30+35+min(40, 39) = 179 floats = 5728 bits.
        ("k-subspace", {"num_subspaces": 8}, True, 1440, 5728),
        # A new subspace every 2 steps; a stateless client needs each finished period's
        # final z plus the live z (zero right after a period starts): at t = 0..8 that is
        # 0, 5, 5, 10, 10, 15, 15, 20, 20 floats = 100 floats = 3200 bits.
        ("time-varying", {"period": 2}, True, 1440, 3200),
    ],
)
def test_intrinsic_bandwidth_counters(
    softmax_problem, variant, options, stateless, upload_bits, download_bits
):
    assert softmax_problem.dim == 39 and softmax_problem.num_clients == 6
    history = run_intrinsic(
        softmax_problem,
        variant,
        subspace_dim=5,
        rounds=9,
        step_size=0.1,
        batch_size=4,
        participation=Participation(),
        stateless_clients=stateless,
        seed=1,
        **options,
    )
    # every message also carries the 21-byte envelope (168 bits): 9 uploads, and 8
    # downloads (the empty one at t = 0 is no message)
    counter = history.counter
    assert counter.upload.tolist() == [upload_bits + 9 * 168] * 6
    assert counter.download.tolist() == [download_bits + 8 * 168] * 6
    assert counter.total_upload_unframed == 6 * upload_bits
    assert counter.total_download_unframed == 6 * download_bits
