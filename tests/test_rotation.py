"""Fast Walsh-Hadamard transform, rotation layout and rotate/unrotate."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import hadamard

from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError
from quicdesign.randomness import rotation_signs
from quicdesign.rotation import MAX_CHUNKS, RotationLayout, fwht, rotate, unrotate

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}
SMALL_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def _dense_fwht(x):
    n = x.shape[-1]
    return x.astype(np.float64) @ (hadamard(n) / math.sqrt(n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SMALL_SIZES)
def test_fwht_matches_dense_hadamard(n, dtype):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    y = fwht(x)
    assert y.dtype == dtype
    assert y.shape == (n,)
    np.testing.assert_allclose(y, _dense_fwht(x), rtol=0, atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# shapes cover one dense pass, several passes, and long and short batches
@pytest.mark.parametrize(
    "shape", [(3, 16), (2, 3, 256), (5, 1, 1024), (4, 1), (40, 256), (9, 2048)]
)
def test_fwht_batch_dims_transform_each_row(shape, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    y = fwht(x)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_allclose(y, _dense_fwht(x), rtol=0, atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 64, 256, 8192, 1 << 17])
def test_fwht_is_self_inverse_and_norm_preserving(n, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, n)).astype(dtype)
    y = fwht(x)
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=TOLERANCE[dtype]
    )
    np.testing.assert_allclose(fwht(y), x, rtol=0, atol=TOLERANCE[dtype] * 10)


def test_fwht_of_unit_vector_is_flat():
    x = np.zeros(1 << 12)
    x[0] = 1.0
    np.testing.assert_allclose(fwht(x), np.full(1 << 12, 2.0**-6), rtol=1e-14)


@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("n", [64, 256, 512])  # one pass, an even and an odd pass count
def test_fwht_out_and_in_place(n, rows):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((rows, n))
    expected = fwht(x)
    out = np.empty_like(x)
    assert fwht(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    in_place = x.copy()
    assert fwht(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)


def test_fwht_does_not_mutate_and_handles_non_contiguous_input():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((64, 8)).astype(np.float32)
    column_view = base[:, 2]
    snapshot = base.copy()
    y = fwht(column_view)
    np.testing.assert_array_equal(base, snapshot)
    np.testing.assert_allclose(y, _dense_fwht(column_view), atol=2e-5)
    transposed = base.T  # shape (8, 64), F-ordered
    np.testing.assert_allclose(fwht(transposed), _dense_fwht(transposed), atol=2e-5)


def test_fwht_accepts_big_endian_floats():
    x = np.random.default_rng(8).standard_normal(256)
    big = x.astype(">f8")
    y = fwht(big)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, fwht(x))
    np.testing.assert_array_equal(big, x)


def test_fwht_empty_batch():
    assert fwht(np.zeros((0, 8))).shape == (0, 8)


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.int8, np.bool_, np.complex128])
def test_fwht_rejects_other_dtypes(dtype):
    with pytest.raises(InputDTypeError):
        fwht(np.ones(8, dtype=dtype))


@pytest.mark.parametrize("shape", [(0,), (3,), (6,), (2, 12), ()])
def test_fwht_rejects_bad_shapes(shape):
    with pytest.raises(InputVectorError):
        fwht(np.ones(shape))


def test_fwht_rejects_bad_out():
    x = np.ones(16)
    with pytest.raises(InputVectorError):
        fwht(x, out=np.empty(8))
    with pytest.raises(InputDTypeError):
        fwht(x, out=np.empty(16, dtype=np.float32))
    with pytest.raises(InputVectorError):
        fwht(x, out=np.empty(32)[::2])
    with pytest.raises(InputVectorError):
        fwht(x, out=[0.0] * 16)


# ---------------------------------------------------------------------------------------
# Layout


@pytest.mark.parametrize(
    ("d", "chunk_size", "num_chunks"),
    [
        (1, 1, 1),
        (2, 2, 1),
        (3, 4, 1),
        (1000, 1024, 1),
        (1024, 1024, 1),
        (1025, 1024, 2),
        (5000, 1024, 5),
        (8192, 1024, 8),
        (8193, 1024, 9),
        (2**16, 2**13, 8),
        (2**16 + 3, 2048, 33),
        # a real DDP bucket: 8 chunks of 2**16 padded it to 327,680 (22 % waste)
        (267_786, 2**13, 33),
        (2**20, 2**17, 8),
        (2**31 - 1, 2**28, 8),
        (2**20 + 2**15 + 1, 2**16, 17),
        (7 * 2**17 + 1, 2**14, 57),
    ],
)
def test_layout_examples(d, chunk_size, num_chunks):
    layout = RotationLayout.for_dim(d)
    assert (layout.dim, layout.chunk_size, layout.num_chunks) == (d, chunk_size, num_chunks)
    assert layout.rotated_dim == chunk_size * num_chunks


@given(st.integers(min_value=1, max_value=2**31 - 1))
def test_layout_rule_and_waste_bound(d):
    layout = RotationLayout.for_dim(d)
    padded = 1 << (d - 1).bit_length()
    smallest = max(padded // 64, min(padded, 1024))
    largest = max(padded // 8, min(padded, 1024))
    assert smallest <= layout.chunk_size <= largest
    assert layout.num_chunks == -(-d // layout.chunk_size)
    assert layout.chunk_size & (layout.chunk_size - 1) == 0
    assert 1 <= layout.num_chunks <= MAX_CHUNKS == 64
    assert d <= layout.rotated_dim
    waste = layout.rotated_dim - d
    # the bound stated in docs/wire-format.md, and the fewest chunks that meet d / 32
    assert waste < max(d / 32, 1024)
    if layout.chunk_size > smallest:
        assert 32 * waste <= d
    if layout.chunk_size < largest:
        bigger = 2 * layout.chunk_size
        assert 32 * (bigger * -(-d // bigger) - d) > d
    if d <= 1024:
        assert layout.num_chunks == 1


@pytest.mark.parametrize("d", [0, -5, 2**31, 2.0, True, "8", None])
def test_layout_rejects_bad_dim(d):
    with pytest.raises(ParameterError):
        RotationLayout.for_dim(d)


def test_layout_is_frozen_and_validated():
    layout = RotationLayout.for_dim(5000)
    with pytest.raises(AttributeError):
        layout.dim = 3
    assert RotationLayout(5000, 1024, 5) == layout
    assert type(RotationLayout(np.int64(5000), 1024, 5).dim) is int
    for fields in [(5000, 2048, 3), (5000, 1024.0, 5), (0, 1, 1)]:
        with pytest.raises(ParameterError):
            RotationLayout(*fields)


# ---------------------------------------------------------------------------------------
# rotate / unrotate

ROUND_TRIP_DIMS = [1, 2, 3, 1000, 1024, 1025, 5000, 2**16 + 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", ROUND_TRIP_DIMS)
def test_rotate_round_trip(d, dtype):
    layout = RotationLayout.for_dim(d)
    signs = rotation_signs(d, layout.rotated_dim)
    x = np.random.default_rng(d).standard_normal(d).astype(dtype)
    v = rotate(x, signs, layout)
    assert v.shape == (layout.num_chunks, layout.chunk_size)
    assert v.dtype == dtype
    np.testing.assert_allclose(np.linalg.norm(v), np.linalg.norm(x), rtol=TOLERANCE[dtype])
    back = unrotate(v, signs, layout)
    assert back.shape == (d,) and back.dtype == dtype
    np.testing.assert_allclose(back, x, rtol=0, atol=TOLERANCE[dtype] * 10)
    np.testing.assert_allclose(unrotate(v.reshape(-1), signs, layout), back, rtol=0, atol=0)


def test_rotate_matches_dense_definition_per_chunk():
    d = 2500  # three chunks of 1024 with 572 padded zeros
    layout = RotationLayout.for_dim(d)
    signs = rotation_signs(5, layout.rotated_dim, np.int8)
    x = np.random.default_rng(0).standard_normal(d)
    padded = np.zeros(layout.rotated_dim)
    padded[:d] = x * signs[:d]
    expected = _dense_fwht(padded.reshape(layout.num_chunks, layout.chunk_size))
    np.testing.assert_allclose(rotate(x, signs, layout), expected, atol=1e-12)


def test_rotate_is_linear_so_server_can_aggregate_first():
    layout = RotationLayout.for_dim(3000)
    signs = rotation_signs(1, layout.rotated_dim)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((5, 3000))
    summed = sum(rotate(x, signs, layout) for x in xs)
    np.testing.assert_allclose(unrotate(summed, signs, layout), xs.sum(axis=0), atol=1e-12)


def test_padding_rotates_to_zero_energy_outside_the_vector():
    layout = RotationLayout.for_dim(1025)
    signs = rotation_signs(2, layout.rotated_dim)
    v = rotate(np.ones(1025), signs, layout)
    # the second chunk holds one real coordinate and 1023 padded zeros
    np.testing.assert_allclose(np.abs(v[1]), np.full(1024, 1 / 32), atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rotate_dtypes(dtype):
    layout = RotationLayout.for_dim(100)
    signs = rotation_signs(0, layout.rotated_dim, np.float64)
    x = np.linspace(-1, 1, 100).astype(dtype)
    v = rotate(x, signs, layout)
    expected = np.float64 if dtype == np.float64 else np.float32
    assert v.dtype == expected
    assert unrotate(v, signs, layout).dtype == expected
    assert unrotate(v.astype(np.float16), signs, layout).dtype == np.float32


def test_rotate_and_unrotate_do_not_mutate_inputs():
    layout = RotationLayout.for_dim(3000)
    signs = rotation_signs(9, layout.rotated_dim)
    x = np.random.default_rng(5).standard_normal(3000)
    x_copy, signs_copy = x.copy(), signs.copy()
    v = rotate(x, signs, layout)
    v_copy = v.copy()
    unrotate(v, signs, layout)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(signs, signs_copy)
    np.testing.assert_array_equal(v, v_copy)


def test_rotate_accepts_non_contiguous_input():
    layout = RotationLayout.for_dim(1500)
    signs = rotation_signs(3, layout.rotated_dim)
    storage = np.random.default_rng(6).standard_normal((1500, 3))
    strided = storage[:, 1]
    v = rotate(strided, signs, layout)
    np.testing.assert_array_equal(v, rotate(strided.copy(), signs, layout))
    np.testing.assert_allclose(unrotate(v, signs, layout), strided, atol=1e-12)


def test_rotate_rejects_bad_input():
    layout = RotationLayout.for_dim(10)
    signs = rotation_signs(0, layout.rotated_dim)
    with pytest.raises(InputDTypeError):
        rotate(np.arange(10), signs, layout)
    with pytest.raises(InputDTypeError):
        rotate(np.ones(10, dtype=np.complex64), signs, layout)
    with pytest.raises(InputVectorError):
        rotate(np.ones(11), signs, layout)
    with pytest.raises(InputVectorError):
        rotate(np.ones((10, 1)), signs, layout)
    with pytest.raises(InputVectorError):
        rotate(np.ones(10), signs[:10], layout)
    with pytest.raises(InputVectorError):
        rotate(np.ones(10), signs * 2, layout)
    with pytest.raises(InputVectorError):
        rotate(np.ones(10), np.zeros(16, dtype=np.int8), layout)
    with pytest.raises(InputDTypeError):
        rotate(np.ones(10), signs.astype(np.int32), layout)
    with pytest.raises(ParameterError):
        rotate(np.ones(10), signs, (10, 16, 1))


def test_unrotate_rejects_bad_shape():
    layout = RotationLayout.for_dim(3000)
    signs = rotation_signs(0, layout.rotated_dim)
    with pytest.raises(InputVectorError):
        unrotate(np.ones((4, 1024)), signs, layout)
    with pytest.raises(InputVectorError):
        unrotate(np.ones(3000), signs, layout)
    with pytest.raises(InputDTypeError):
        unrotate(np.ones((3, 1024), dtype=np.int32), signs, layout)


def _levels_one_by_one(rows):
    """The exact-order butterflies one level at a time, in place, in the documented
    order: pairs of bits (log_n - 2, log_n - 1), (log_n - 4, log_n - 3), ..., lower bit
    first, then bit 0 when log_n is odd."""
    rows = rows.copy()
    batch, n = rows.shape
    log_n = n.bit_length() - 1
    order = [bit for top in range(log_n - 1, 0, -2) for bit in (top - 1, top)]
    for bit in order + [0] * (log_n % 2):
        halves = rows.reshape(batch, n >> (bit + 1), 2, 1 << bit)
        low, high = halves[:, :, 0].copy(), halves[:, :, 1].copy()
        halves[:, :, 0] = low + high
        halves[:, :, 1] = low - high
    return rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_butterflies_follow_the_documented_level_order(monkeypatch, dtype):
    # the grouped, layout-rotating numpy passes round exactly as one level at a time
    from quicdesign._kernels import KERNELS_ENV
    from quicdesign.rotation import _numpy_butterfly_passes

    monkeypatch.setenv(KERNELS_ENV, "numpy")
    rng = np.random.default_rng(17)
    for log_n in [*range(0, 13), 17]:
        batch = 2 if log_n < 17 else 1
        x = (
            rng.standard_t(1.5, (batch, 1 << log_n))
            * 10.0
            ** rng.integers(-30, 30, log_n + 1)[rng.integers(0, log_n + 1, (batch, 1 << log_n))]
        )
        x = x.astype(dtype)
        if log_n == 5:
            x[0, :3] = [np.inf, -np.inf, np.nan]
        with np.errstate(invalid="ignore", over="ignore"):
            expected = _levels_one_by_one(x)
            got = _numpy_butterfly_passes(x.copy(), np.empty_like(x))
        assert got.tobytes() == expected.tobytes(), log_n
