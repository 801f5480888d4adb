"""The compressor family: conformance kit over the registry plus scheme-specific facts."""

import math

import numpy as np
import pytest

from quicdesign._validate import as_client_vector
from quicdesign.compressors import (
    COMPRESSORS,
    DRIVE,
    EDEN,
    QSGD,
    CosSGD,
    CountSketch,
    HadamardSQ,
    KashinSQ,
    RandK,
    SignSGD,
    StochasticQuantizer,
    lloyd_max_normal,
    make_compressor,
)
from quicdesign.compressors._common import HEADER_SIZE, f32_ceil, f32_floor
from quicdesign.compressors.cossgd import cosine_levels
from quicdesign.compressors.kashin import _inverse, kashin_coefficients, kashin_frame_dim
from quicdesign.compressors.randk import randk_indices
from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError, PayloadError
from quicdesign.randomness import rotation_signs
from quicdesign.reference import EDEN_VNMSE as EDEN_VNMSE_REFERENCE
from quicdesign.reference import LLOYD_MAX_NORMAL, values
from quicdesign.rotation import RotationLayout, rotate
from quicdesign.testing import check_compressor, parametrize_checks

# -------------------------------------------------------------------- conformance

CONFIGURATIONS = {name: {} for name in COMPRESSORS}
CONFIGURATIONS.update(
    {
        "sq-b1": {"bits": 1},
        "sq-b8": {"bits": 8},
        "qsgd-s1-max": {"levels": 1, "norm": "max"},
        "hadamard-b2": {"bits": 2},
        "kashin-b2": {"bits": 2},
        "kashin-tf": {"variant": "tf"},
        "eden-b1": {"bits": 1},
        "eden-b8": {"bits": 8},
        "countsketch-median": {"estimator": "median"},
        "countsketch-r5": {"rows": 5, "columns": 64},
        "cossgd-stochastic-clip": {"bits": 2, "clip": 0.01, "rounding": "stochastic"},
        "cossgd-unbiased": {"bits": 3, "rounding": "unbiased"},
        "randk-quarter": {"fraction": 0.25},
    }
)


def _build(label):
    name = label if label in COMPRESSORS else label.split("-")[0]
    return make_compressor(name, **CONFIGURATIONS[label])


@parametrize_checks({label: _build(label) for label in CONFIGURATIONS})
def test_conformance(compressor, check):
    check_compressor(compressor, trials=200, checks=[check])


def test_registry_names_and_unknown_name():
    expected = {
        "sq",
        "qsgd",
        "hadamard",
        "kashin",
        "eden",
        "drive",
        "countsketch",
        "cossgd",
        "sign",
        "randk",
    }
    assert expected <= set(COMPRESSORS)
    for name in expected:
        assert make_compressor(name).name == name
    with pytest.raises(ParameterError, match="available"):
        make_compressor("nope")


@pytest.mark.parametrize(
    "compressor",
    [
        StochasticQuantizer(bits=0),
        QSGD(levels=0),
        QSGD(norm="l1"),
        HadamardSQ(bits=17),
        KashinSQ(variant="full"),
        KashinSQ(eta=1.5),
        EDEN(bits=9),
        CountSketch(rows=0),
        CountSketch(estimator="max"),
        CosSGD(clip=1.0),
        CosSGD(rounding="nearest"),
        CosSGD(rounding="unbiased", clip=0.01),
        RandK(k=3, fraction=0.5),
        RandK(fraction=0.0),
    ],
    ids=repr,
)
def test_invalid_parameters_fail_when_used(compressor):
    with pytest.raises(ParameterError):
        compressor.encode(np.ones(8), round_seed=0, client_id=0)
    with pytest.raises(ParameterError):
        compressor.aggregator(8, 0)


@pytest.mark.parametrize(
    "label, dim, expected",
    [
        ("sq", 1000, HEADER_SIZE + 8 + 500),
        ("qsgd", 1000, HEADER_SIZE + 4 + 500),  # s = 7: 15 signed levels in 4 bits
        ("hadamard", 1000, HEADER_SIZE + 8 + 512),  # rotated_dim 1024
        ("kashin", 1000, HEADER_SIZE + 8 + 1024),  # frame 2048
        ("eden", 3000, HEADER_SIZE + 4 * 3 + 768),  # 3 chunks of 1024, 2 bits
        ("drive", 1000, HEADER_SIZE + 4 + 128),
        ("countsketch", 1000, HEADER_SIZE + 4 * 3 * 32),
        ("cossgd", 1000, HEADER_SIZE + 8 + 500),
        ("sign", 1000, HEADER_SIZE + 4 + 125),
        ("randk", 1000, HEADER_SIZE + 4 * 32),
    ],
)
def test_payload_sizes(label, dim, expected):
    compressor = make_compressor(label)
    payload = compressor.encode(np.linspace(-1, 2, dim), round_seed=3, client_id=1)
    assert compressor.payload_size(dim) == len(payload) == expected


# ------------------------------------------------------------------- common helpers


def test_client_vector_validation():
    matrix = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(as_client_vector(matrix), matrix.reshape(-1))
    with pytest.raises(InputDTypeError):
        as_client_vector(np.arange(3))
    with pytest.raises(InputVectorError, match="index 2"):
        as_client_vector([0.0, 1.0, np.inf, np.nan])


def test_float32_side_information_rounds_outwards():
    for value in (0.1, -0.1, 1 / 3, 12345.678):
        up, down = f32_ceil(value), f32_floor(value)
        assert down <= value <= up
        assert float(np.float32(up)) == up and float(np.float32(down)) == down
    with pytest.raises(InputVectorError):
        f32_ceil(1e300)


def test_payload_of_other_parameters_is_rejected():
    payload = StochasticQuantizer(bits=4).encode(np.ones(16), round_seed=1, client_id=0)
    aggregator = StochasticQuantizer(bits=2).aggregator(16, 1)
    with pytest.raises(PayloadError, match="other sq parameters"):
        aggregator.add(payload)
    assert aggregator.count == 0


# ------------------------------------------------------------------------- SQ/QSGD


def test_hadamard_and_qsgd_unbiased_on_a_power_of_two():
    for compressor in (HadamardSQ(bits=2), QSGD(levels=3)):
        check_compressor(compressor, dims=(512,), trials=300, checks=["unbiasedness"])


def test_qsgd_variance_within_bound():
    dim, levels, trials = 256, 4, 200
    x = np.random.default_rng(1).standard_normal(dim)
    compressor = QSGD(levels=levels)
    errors = [
        np.sum(
            (
                compressor.decode(
                    compressor.encode(x, round_seed=t, client_id=0, rng=t), dim=dim, round_seed=t
                )
                - x
            )
            ** 2
        )
        for t in range(trials)
    ]
    bound = min(dim / levels**2, math.sqrt(dim) / levels)
    assert np.mean(errors) / np.sum(x**2) <= bound


def test_qsgd_rejects_codes_above_2s():
    compressor = QSGD(levels=1)  # 2-bit codes, valid values 0..2
    payload = bytearray(compressor.encode(np.ones(4), round_seed=0, client_id=0))
    payload[-1] = 0xFF  # four codes of value 3
    with pytest.raises(PayloadError, match="exceeds"):
        compressor.decode(bytes(payload), dim=4, round_seed=0)


def test_sq_constant_vector_is_exact():
    compressor = StochasticQuantizer(bits=3)
    x = np.full(10, 0.25)
    assert np.array_equal(
        compressor.decode(compressor.encode(x, round_seed=0, client_id=0), dim=10, round_seed=0), x
    )


# ----------------------------------------------------------------------------- EDEN

LLOYD_MAX_TABLE = values(LLOYD_MAX_NORMAL)
EDEN_VNMSE = values(EDEN_VNMSE_REFERENCE)


@pytest.mark.parametrize("bits", sorted(LLOYD_MAX_TABLE))
def test_lloyd_max_levels_match_the_table(bits):
    centroids, thresholds, distortion = lloyd_max_normal(bits)
    positive, table_distortion = LLOYD_MAX_TABLE[bits]
    np.testing.assert_allclose(centroids[len(positive) :], positive, atol=6e-6)
    np.testing.assert_allclose(centroids, -centroids[::-1], atol=1e-14)
    np.testing.assert_allclose(thresholds, 0.5 * (centroids[1:] + centroids[:-1]))
    assert distortion == pytest.approx(table_distortion, rel=2e-4)
    assert distortion / (1 - distortion) == pytest.approx(EDEN_VNMSE[bits], rel=2e-4)


def test_lloyd_max_is_a_fixed_point_up_to_8_bits():
    # independent of the erfc formulas: conditional means by quadrature on a fine grid
    grid = np.linspace(-12.0, 12.0, 2_400_001)
    density = np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    step = grid[1] - grid[0]
    mass = np.concatenate(([0.0], np.cumsum((density[1:] + density[:-1]) * 0.5 * step)))
    weighted = grid * density
    moment = np.concatenate(([0.0], np.cumsum((weighted[1:] + weighted[:-1]) * 0.5 * step)))
    for bits in range(1, 9):
        centroids, thresholds, distortion = lloyd_max_normal(bits)
        assert np.all(np.diff(centroids) > 0)
        edges = np.concatenate(([grid[0]], thresholds, [grid[-1]]))
        cell_mass = np.diff(np.interp(edges, grid, mass))
        cell_mean = np.diff(np.interp(edges, grid, moment)) / cell_mass
        np.testing.assert_allclose(cell_mean, centroids, rtol=1e-6, atol=1e-7)
        assert distortion == pytest.approx(1 - np.sum(cell_mass * centroids**2), rel=1e-5)
    assert lloyd_max_normal(8)[2] == pytest.approx(4.1185e-05, rel=1e-3)


@pytest.mark.parametrize("bits", sorted(EDEN_VNMSE))
def test_eden_vnmse_matches_the_paper(bits):
    dim, trials = 2**14, 40
    rng = np.random.default_rng(bits)
    compressor = EDEN(bits=bits)
    vnmse = []
    for trial in range(trials):
        x = rng.standard_normal(dim)
        payload = compressor.encode(x, round_seed=trial, client_id=trial, rng=rng)
        decoded = compressor.decode(payload, dim=dim, round_seed=trial)
        vnmse.append(np.sum((decoded - x) ** 2) / np.sum(x**2))
    mean = np.mean(vnmse)
    standard_error = np.std(vnmse, ddof=1) / math.sqrt(trials)
    target = EDEN_VNMSE[bits]
    assert standard_error < 0.005 * target  # the estimate resolves the 3% band
    assert abs(mean - target) <= 0.03 * target, (mean, standard_error)


def test_drive_is_scaled_sign_of_the_rotation():
    dim = 100
    x = np.random.default_rng(2).standard_normal(dim)
    drive = DRIVE()
    assert repr(drive) == "DRIVE()" and drive.bits == 1
    payload = drive.encode(x, round_seed=4, client_id=9)
    layout = RotationLayout.for_dim(dim)
    from quicdesign.randomness import rotation_signs

    signs = rotation_signs(4, layout.rotated_dim, np.float64, client_id=9, purpose="eden-rotation")
    v = rotate(x, signs, layout).reshape(-1)
    scale = np.sum(v**2) / np.sum(np.abs(v))
    expected_rotated = scale * np.where(v < 0, -1.0, 1.0)
    from quicdesign.rotation import unrotate

    expected = unrotate(expected_rotated, signs, layout)
    np.testing.assert_allclose(
        drive.decode(payload, dim=dim, round_seed=4),
        expected,
        rtol=1e-6,
        atol=1e-7 * np.abs(expected).max(),
    )


def test_eden_rotation_is_per_client():
    x = np.random.default_rng(3).standard_normal(64)
    eden = EDEN(bits=2)
    first = eden.encode(x, round_seed=1, client_id=1)
    second = eden.encode(x, round_seed=1, client_id=2)
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


# --------------------------------------------------------------------------- Kashin


def test_kashin_frame_dimension_rule():
    assert [kashin_frame_dim(d) for d in (1, 2, 3, 7, 8, 100, 1000, 1024)] == [
        2,
        4,
        4,
        16,
        16,
        128,
        2048,
        2048,
    ]


def test_kashin_exact_variant_represents_x_and_bounds_the_coefficients():
    dim = 3000
    x = np.random.default_rng(4).lognormal(size=dim)
    signs = rotation_signs(11, kashin_frame_dim(dim), np.float64)
    exact = kashin_coefficients(x, signs)
    np.testing.assert_allclose(_inverse(exact, signs, dim), x, rtol=0, atol=1e-12 * x.max())
    truncated = kashin_coefficients(x, signs, variant="tf")
    level = np.linalg.norm(x) / math.sqrt(signs.size)
    # the tf variant's levels sum to M (1 + eta + eta**2)
    assert np.abs(truncated).max() <= level * (1 + 0.9 + 0.81) + 1e-12
    assert np.abs(exact).max() < 10 * level
    assert np.abs(exact).max() < np.abs(x).max()
    assert not KashinSQ(variant="tf").properties.unbiased and KashinSQ().properties.unbiased


# --------------------------------------------------------------------- Count-Sketch


def _sketch(payload):
    return np.frombuffer(payload[HEADER_SIZE:], dtype="<f4").astype(np.float64)


def test_count_sketch_is_linear():
    dim = 500
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(dim), rng.lognormal(size=dim)
    sketcher = CountSketch(rows=4, columns=40)
    sketch_x, sketch_y, sketch_sum = (
        _sketch(sketcher.encode(v, round_seed=8, client_id=0)) for v in (x, y, x + y)
    )
    np.testing.assert_allclose(sketch_sum, sketch_x + sketch_y, rtol=1e-6, atol=1e-5)
    aggregator = sketcher.aggregator(dim, 8)
    aggregator.add(sketcher.encode(x, round_seed=8, client_id=0))
    aggregator.add(sketcher.encode(y, round_seed=8, client_id=1))
    together = sketcher.decode(
        sketcher.encode(x + y, round_seed=8, client_id=2), dim=dim, round_seed=8
    )
    np.testing.assert_allclose(2 * aggregator.result(), together, rtol=1e-5, atol=1e-5)


def test_count_sketch_recovers_a_heavy_hitter_exactly_enough():
    dim = 4096
    x = np.zeros(dim)
    x[123] = 100.0
    sketcher = CountSketch(rows=5, columns=256, estimator="median")
    decoded = sketcher.decode(sketcher.encode(x, round_seed=2, client_id=0), dim=dim, round_seed=2)
    assert decoded[123] == pytest.approx(100.0)
    # any other coordinate would need bucket collisions in 3 of the 5 rows
    assert np.count_nonzero(decoded) == 1
    assert not sketcher.properties.unbiased and not sketcher.linear_aggregate


# --------------------------------------------------------------------------- CosSGD


def _cos_roundtrip(compressor, x, seed=0):
    payload = compressor.encode(x, round_seed=seed, client_id=0, rng=seed)
    norm, beta = np.frombuffer(payload[HEADER_SIZE : HEADER_SIZE + 8], dtype="<f4")
    return compressor.decode(payload, dim=x.size, round_seed=seed), float(norm), float(beta)


def test_cossgd_levels_extremes_and_symmetry():
    x = np.random.default_rng(6).standard_t(3, size=200)
    for bits in (1, 2, 3, 4):
        compressor = CosSGD(bits=bits)
        decoded, norm, beta = _cos_roundtrip(compressor, x)
        levels = cosine_levels(norm, beta, bits)
        np.testing.assert_allclose(levels, -levels[::-1], atol=1e-12 * norm)
        assert np.all(np.isin(decoded, levels))
        if (1 << bits) % 2 == 0:
            assert np.all(decoded != 0)
        # c = 0: the outer levels are +-max|x| (float32 side information aside)
        assert levels[0] == pytest.approx(np.abs(x).max(), rel=1e-6)
        mirrored, _, _ = _cos_roundtrip(compressor, -x)
        np.testing.assert_allclose(mirrored, -decoded, rtol=1e-12, atol=1e-12 * norm)


def test_cossgd_guards():
    compressor = CosSGD(bits=3)
    assert np.array_equal(_cos_roundtrip(compressor, np.zeros(5))[0], np.zeros(5))
    for value in (2.5, -0.75):
        decoded, norm, _ = _cos_roundtrip(compressor, np.array([value]))
        assert decoded[0] == pytest.approx(value, rel=1e-7) and norm == f32_ceil(abs(value))
    assert not CosSGD().properties.unbiased
    assert not CosSGD(rounding="stochastic").properties.unbiased
    assert CosSGD(rounding="unbiased").properties.unbiased


def _symmetric_uniform_nmse(x, bits):
    top = (1 << bits) - 1
    bound = np.abs(x).max()
    codes = np.rint((x + bound) / (2 * bound) * top)
    return np.sum((codes * 2 * bound / top - bound - x) ** 2) / np.sum(x**2)


def test_cossgd_near_linear_regime_matches_symmetric_uniform():
    x = np.random.default_rng(7).standard_normal(20000)
    assert np.abs(x).max() / np.linalg.norm(x) < 0.1
    for bits in (2, 4, 8):
        cosine = np.sum((_cos_roundtrip(CosSGD(bits=bits), x)[0] - x) ** 2) / np.sum(x**2)
        assert cosine == pytest.approx(_symmetric_uniform_nmse(x, bits), rel=0.05)


def test_cossgd_error_falls_with_bits_and_clipping_saturates():
    x = np.random.default_rng(8).standard_t(3, size=1000)
    errors = [np.sum((_cos_roundtrip(CosSGD(bits=b), x)[0] - x) ** 2) for b in (1, 2, 3, 4, 8)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
    clipped, norm, beta = _cos_roundtrip(CosSGD(bits=4, clip=0.01), x)
    assert np.abs(clipped).max() < np.abs(x).max()
    # 1% of 1000 entries saturate: the outer level is the 11th largest |u - 0.5|
    assert np.count_nonzero(np.abs(x) > np.abs(clipped).max() * (1 + 1e-6)) == 10


@pytest.mark.parametrize(
    "compressor",
    [
        CosSGD(bits=2, rounding="deterministic"),
        CosSGD(bits=2, clip=0.05, rounding="stochastic"),
        CosSGD(bits=1, rounding="stochastic"),
    ],
    ids=repr,
)
def test_cossgd_modes_other_than_unbiased_are_biased(compressor):
    x = np.array([3.0, 1.0, -0.2, 0.05, -2.0, 0.4, -0.03])
    trials = 1500
    decoded = np.array([_cos_roundtrip(compressor, x, seed)[0] for seed in range(trials)])
    standard_error = decoded.std(axis=0, ddof=1) / math.sqrt(trials)
    z = np.abs(decoded.mean(axis=0) - x) / (standard_error + 1e-12)
    assert z.max() > 8


def test_cossgd_unbiased_mode_is_unbiased_where_angle_rounding_is_not():
    x = np.array([3.0, 1.0, -0.2, 0.05, -2.0])
    unbiased = np.mean(
        [_cos_roundtrip(CosSGD(bits=1, rounding="unbiased"), x, s)[0] for s in range(1500)], axis=0
    )
    # per-coordinate standard deviation is at most max|x| = 3; 5 standard errors
    np.testing.assert_allclose(unbiased, x, atol=5 * 3 / math.sqrt(1500))


# ---------------------------------------------------------------------- sign, rand-k


def test_sign_decodes_to_scaled_signs():
    x = np.array([-2.0, 0.0, 1.0, -0.5])
    compressor = SignSGD()
    decoded = compressor.decode(
        compressor.encode(x, round_seed=0, client_id=0), dim=4, round_seed=0
    )
    np.testing.assert_allclose(decoded, np.array([-1, 1, 1, -1]) * np.float32(0.875))
    assert not compressor.properties.unbiased


def test_randk_sends_only_values_at_shared_indices():
    dim = 1000
    x = np.arange(dim, dtype=np.float64)
    compressor = RandK(k=10)
    payload = compressor.encode(x, round_seed=5, client_id=3)
    indices = randk_indices(5, 3, dim, 10)
    assert indices.size == 10 and np.all(np.diff(indices) > 0)
    assert np.array_equal(np.frombuffer(payload[HEADER_SIZE:], "<f4"), x[indices])
    decoded = compressor.decode(payload, dim=dim, round_seed=5)
    assert np.array_equal(np.flatnonzero(decoded), indices[x[indices] != 0])
    np.testing.assert_allclose(decoded[indices], x[indices] * dim / 10)
    assert not np.array_equal(randk_indices(5, 4, dim, 10), indices)
    assert RandK(k=50).payload_size(20) == HEADER_SIZE + 4 * 20


def test_quicfl_parameters_and_repr_do_not_change_with_use():
    from quicdesign.compressors import QuicFL

    compressor = QuicFL(bits=2)
    before = repr(compressor)
    payload = compressor.encode(np.ones(64), round_seed=1, client_id=0, rng=0)
    compressor.decode(payload, dim=64, round_seed=1)
    assert repr(compressor) == before
    assert compressor.table is None
    assert compressor.resolved_table().bits == 2
