"""The randomized Hadamard transform shared by QUIC-FL, EDEN, Hadamard+SQ, Kashin and SRHT.

``fwht`` is an orthonormal fast Walsh-Hadamard transform along the last axis.
``RotationLayout`` fixes how a vector of any length is padded and split into power-of-two
chunks, and ``rotate`` / ``unrotate`` apply ``v = H diag(s) x`` per chunk and its inverse.

How ``fwht`` is fast in numpy: the Sylvester matrix factors as a Kronecker product,
``H_n = H_{B1} (x) H_{B2} (x) ... (x) H_{Bm}`` with ``n = B1*...*Bm``. Each pass views the
data as ``(batch, n / B, B)``, multiplies the last axis by a small dense ``H_B`` with one
BLAS matmul and writes the result transposed, ``(batch, B, n / B)``. The transposition
cycles the factors, so after ``m`` passes every factor has been transformed once and the
layout is back in its original order, with no separate transpose copies.

The encoder side (``rotate``, ``scaled_rotate``) does not use BLAS: its bytes must not
depend on the CPU. A BLAS kernel's summation order (and FMA use) changes the rounding of
``fwht``, so the same input gave different payloads under ``OPENBLAS_CORETYPE=Haswell`` and
the native kernel. :func:`exact_order_fwht` is an add/subtract-only butterfly in a fixed
order (the order of radix-4 constant-geometry passes: each reads four contiguous quarters
and writes the four results interleaved, which cycles the index bits like the BLAS passes;
numpy groups two such passes, see :func:`_numpy_butterfly_passes`) followed by one
multiplication by a constant; every operation is a correctly rounded IEEE add, subtract or
multiply, so the result is the same on every CPU. It costs about 1.5-2x ``fwht`` (see
``quicdesign bench transform``). The server's single inverse rotation keeps ``fwht``.

Performance note: OpenBLAS runs these matmuls on all cores. When the machine is
oversubscribed (several processes each using BLAS threads) the thread hand-offs dominate
and a single BLAS thread per process is faster; limit it in worker processes (joblib's
loky backend does; otherwise ``OPENBLAS_NUM_THREADS=1`` or threadpoolctl).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from quicdesign._kernels import compiled_kernels
from quicdesign._validate import check_dim, check_finite_vector
from quicdesign._workspace import work_array
from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError

__all__ = [
    "fwht",
    "exact_order_fwht",
    "MAX_CHUNKS",
    "RotationLayout",
    "rotate",
    "scaled_rotate",
    "unrotate",
]

# Measured on a 2-core Xeon with OpenBLAS: passes with 16-wide blocks beat both smaller
# blocks (more passes over memory) and larger ones (more flops per coordinate).
_MAX_PASS_BITS = 4
# A single dense matmul is cheaper than several passes up to this length.
_SINGLE_PASS_MAX = 128
_FWHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SMALL_VECTOR_CHUNK = 1024
# Up to 64 chunks bound the zero padding by dim / 32 (wire version 2). With 8 chunks a
# 267,786-long DDP bucket padded to 327,680 (22 % waste); arbitrary bucket sizes need a bound.
MAX_CHUNKS = 64
_PREFERRED_CHUNKS = 8
_SIGN_CHECK_BLOCK = 1 << 16


@functools.cache
def _hadamard_block(size, dtype_char):
    """Return the read-only Sylvester Hadamard matrix of ``size`` scaled by 1/sqrt(size)."""
    index = np.arange(size)
    # Sylvester ordering: H[i, j] = (-1) ** popcount(i & j)
    parity = np.bitwise_count(index[:, None] & index[None, :]) & 1
    # scale in float64 so float32 blocks are rounded once
    block = (np.where(parity, -1.0, 1.0) / math.sqrt(size)).astype(dtype_char)
    block.flags.writeable = False
    return block


@functools.cache
def _pass_sizes(n):
    """Split ``n = 2**k`` into near-equal power-of-two block sizes, one per pass."""
    if n <= _SINGLE_PASS_MAX:
        return (n,)
    log_n = n.bit_length() - 1
    num_passes = -(-log_n // _MAX_PASS_BITS)
    base, extra = divmod(log_n, num_passes)
    return tuple(1 << (base + (i < extra)) for i in range(num_passes))


def _check_out(out, shape, dtype):
    if not isinstance(out, np.ndarray):
        raise InputVectorError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise InputVectorError(f"out has shape {out.shape}, expected {shape}")
    if out.dtype != dtype:
        raise InputDTypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        # a reshape of a strided array would silently write into a copy
        raise InputVectorError("out must be a writeable C-contiguous array")


def fwht(a, *, out=None):
    """Orthonormal fast Walsh-Hadamard transform along the last axis.

    Parameters
    ----------
    a : array_like
        ``float32`` or ``float64`` array whose last axis has power-of-two length; any
        leading axes are a batch.
    out : numpy.ndarray, optional
        Writeable C-contiguous array of the same shape and dtype for the result; may be
        ``a`` itself.

    Returns
    -------
    numpy.ndarray
        ``H a / sqrt(n)`` in the dtype of ``a`` (Sylvester ordering). The transform is its
        own inverse and preserves the Euclidean norm of every row.

    Raises
    ------
    InputDTypeError
        If the dtype is not float32 or float64.
    InputVectorError
        If ``a`` is 0-d, the last axis is not a power of two, or ``out`` does not match.
    """
    arr = np.asarray(a)
    if not arr.dtype.isnative:
        # BLAS needs native byte order; the values are the same
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in _FWHT_DTYPES:
        raise InputDTypeError(f"fwht needs float32 or float64 input, got {arr.dtype}")
    if arr.ndim == 0:
        raise InputVectorError("fwht needs at least one axis, got a 0-d array")
    n = arr.shape[-1]
    if n < 1 or n & (n - 1):
        raise InputVectorError(f"fwht needs a power-of-two last axis, got length {n}")
    if out is None:
        out = np.empty(arr.shape, dtype=arr.dtype)
    else:
        _check_out(out, arr.shape, arr.dtype)
    if arr.size == 0:
        return out
    batch = arr.size // n
    source = arr.reshape(batch, n)
    target = out.reshape(batch, n)
    sizes = _pass_sizes(n)
    dtype_char = arr.dtype.char
    if len(sizes) == 1:
        # H is symmetric, so right-multiplying each row is the transform
        np.matmul(source, _hadamard_block(n, dtype_char), out=target)
        return out
    buffers = (target, np.empty_like(target))
    for pass_index, size in enumerate(sizes):
        # alternate buffers so the last pass lands in ``out``; numpy copies first if
        # ``out`` aliases the input, so in-place calls stay correct
        destination = buffers[(len(sizes) - 1 - pass_index) % 2].reshape(batch, size, n // size)
        np.matmul(
            _hadamard_block(size, dtype_char),
            source.reshape(batch, n // size, size).transpose(0, 2, 1),
            out=destination,
        )
        source = destination
    return out


def _butterfly_passes(source, scratch, factor):
    """Walsh-Hadamard transform of the rows of ``source`` (2-D, C order) times ``factor``
    (a scalar of its dtype, one correctly rounded multiply after the butterflies).

    Returns the buffer holding the result (``source`` or ``scratch``; both are clobbered).
    """
    kernels = compiled_kernels()
    if kernels is not None and source.flags.c_contiguous and scratch.flags.c_contiguous:
        return (source, scratch)[kernels.butterfly_passes(source, scratch, factor)]
    result = _numpy_butterfly_passes(source, scratch)
    result *= factor
    return result


def _butterfly_level_groups(log_n):
    """The butterfly levels (bits of the index, 0 = adjacent pairs) in the order every
    path computes them: pairs ``(log_n - 2, log_n - 1)``, ``(log_n - 4, log_n - 3)``, ...
    (the lower bit first), then bit 0 alone when ``log_n`` is odd; grouped two pairs at a
    time for :func:`_numpy_butterfly_passes`."""
    pairs = [(bit - 1, bit) for bit in range(log_n - 1, 0, -2)]
    groups = [[bit for pair in pairs[i : i + 2] for bit in pair] for i in range(0, len(pairs), 2)]
    return groups + [[0]] * (log_n % 2)


def _numpy_butterfly_passes(source, scratch):
    """The numpy reference of :func:`_butterfly_passes` (without the final multiply).

    Every level is ``(a + b, a - b)`` on the pairs of its bit, in the order of
    :func:`_butterfly_level_groups`. Each group's bits are the top bits of the current
    layout: all but its last level run in place on contiguous halves (long inner loops),
    and its last level writes the group's bits to the bottom of the index (a rotation
    of the index bits, as the constant-geometry passes of the compiled kernel), so the
    next group's bits are on top; after the last group the layout is the original again.
    The levels' order, not the layout, fixes the rounding, so the bits are the same.
    """
    batch, n = source.shape
    log_n = n.bit_length() - 1
    rotation = 0  # bit b of the original index sits at position (b + rotation) % log_n
    for group in _butterfly_level_groups(log_n):
        size = len(group)
        for step, bit in enumerate(group):
            position = (bit + rotation) % log_n
            if step < size - 1:
                halves = source.reshape(batch, n >> (position + 1), 2, 1 << position)
                target = scratch.reshape(halves.shape)
            else:
                # the group's bits move below the others: a view of ``scratch`` with
                # the index bits rotated by the group's size
                inner = position - (log_n - size)
                shape = (batch, 1 << (size - 1 - inner), 2, 1 << inner, n >> size)
                halves = source.reshape(shape)
                target = scratch.reshape(batch, n >> size, *shape[1:4]).transpose(0, 2, 3, 4, 1)
            np.add(halves[:, :, 0], halves[:, :, 1], out=target[:, :, 0])
            np.subtract(halves[:, :, 0], halves[:, :, 1], out=target[:, :, 1])
            source, scratch = scratch, source
        rotation += size
    return source


def exact_order_fwht(a):
    """Orthonormal Walsh-Hadamard transform along the last axis, identical on every CPU.

    Same result as :func:`fwht` up to rounding, computed with additions and subtractions
    in a fixed order and one final multiplication by ``n ** -0.5``, with no BLAS call,
    so the output bits do not depend on the BLAS kernel or the number of threads.

    Parameters
    ----------
    a : array_like
        ``float32`` or ``float64`` array whose last axis has power-of-two length.

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.
    """
    arr = np.asarray(a)
    if arr.dtype not in _FWHT_DTYPES:
        raise InputDTypeError(f"exact_order_fwht needs float32 or float64 input, got {arr.dtype}")
    if arr.ndim == 0:
        raise InputVectorError("exact_order_fwht needs at least one axis, got a 0-d array")
    n = arr.shape[-1]
    if n < 1 or n & (n - 1):
        raise InputVectorError(f"exact_order_fwht needs a power-of-two last axis, got {n}")
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    if arr.size == 0:
        return arr
    rows = arr.reshape(-1, n)
    # one correctly rounded multiply; a power of two (exact) when log2(n) is even
    result = _butterfly_passes(rows, np.empty_like(rows), arr.dtype.type(1.0 / math.sqrt(n)))
    return result.reshape(arr.shape)


@functools.lru_cache(maxsize=256)
def _layout_for(cls, d):
    # layouts are frozen; encoders and servers ask for the same few lengths per client
    chunk_size, num_chunks = _layout_sizes(d)
    return cls(dim=d, chunk_size=chunk_size, num_chunks=num_chunks)


def _layout_sizes(d):
    padded = 1 << (d - 1).bit_length()
    largest = max(padded // _PREFERRED_CHUNKS, min(padded, _SMALL_VECTOR_CHUNK))
    smallest = max(padded // MAX_CHUNKS, min(padded, _SMALL_VECTOR_CHUNK))
    chunk_size = largest
    # every chunk costs a 4-byte norm, so use the fewest chunks whose padding is <= d / 32;
    # the smallest chunk always pads by less than max(d / 32, 1024) since padded < 2 d
    while chunk_size > smallest and 32 * (chunk_size * -(-d // chunk_size) - d) > d:
        chunk_size //= 2
    return chunk_size, -(-d // chunk_size)


@dataclass(frozen=True)
class RotationLayout:
    """How a length-``dim`` vector is zero-padded and split into rotated chunks.

    Rule (part of the wire contract, version 2; changing it needs a new wire version):
    let ``P`` be the smallest power of two ``>= dim`` and ``m = min(P, 1024)``;
    ``chunk_size`` is the largest power of two in ``[max(P // 64, m), max(P // 8, m)]``
    whose padding ``chunk_size * ceil(dim / chunk_size) - dim`` is at most ``dim / 32``,
    or the smallest one if none is; ``num_chunks = ceil(dim / chunk_size)``. Vectors up to
    1024 long become one power-of-two chunk; longer ones at most 64 equal power-of-two
    chunks, each rotated on its own. Padding ``rotated_dim - dim`` is below
    ``max(dim / 32, 1024)`` for every ``dim`` (``P < 2 dim``).

    Parameters
    ----------
    dim : int
        Vector length, ``1 <= dim <= 2**31 - 1``.
    chunk_size : int
        Power-of-two chunk length given by the rule.
    num_chunks : int
        Number of chunks given by the rule.
    """

    dim: int
    chunk_size: int
    num_chunks: int

    def __post_init__(self):
        dim = check_dim(self.dim)
        expected = _layout_sizes(dim)
        given = (self.chunk_size, self.num_chunks)
        if any(type(value) is not int for value in given) or given != expected:
            raise ParameterError(
                f"layout for dim={dim} must have chunk_size={expected[0]} and "
                f"num_chunks={expected[1]}, got {given[0]!r} and {given[1]!r}; "
                "use RotationLayout.for_dim"
            )
        # frozen dataclass: store a plain int even when given a numpy integer
        object.__setattr__(self, "dim", dim)

    @classmethod
    def for_dim(cls, d):
        """Return the layout of a length-``d`` vector (see the class docstring)."""
        return _layout_for(cls, check_dim(d))

    @property
    def rotated_dim(self):
        """Padded length ``chunk_size * num_chunks``."""
        return self.chunk_size * self.num_chunks


def _compute_dtype(dtype, name):
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise InputDTypeError(f"{name} must be float16, float32 or float64, got {dtype}")
    # float16 has too few bits to rotate accurately; compute it in float32
    return np.dtype(np.float64) if dtype.itemsize == 8 else np.dtype(np.float32)


def _check_layout(layout):
    if not isinstance(layout, RotationLayout):
        raise ParameterError(f"layout must be a RotationLayout, got {type(layout).__name__}")


def _all_plus_minus_one(signs):
    # blockwise so a 2**20-long check needs no 2**20-long temporaries
    magnitude = np.empty(min(signs.size, _SIGN_CHECK_BLOCK), dtype=signs.dtype)
    for start in range(0, signs.size, _SIGN_CHECK_BLOCK):
        block = signs[start : start + _SIGN_CHECK_BLOCK]
        part = magnitude[: block.size]
        np.abs(block, out=part)
        if not np.all(part == 1):
            return False
    return True


def _checked_signs(signs, layout):
    """Return ``signs`` as an array after checking dtype, length and that entries are +-1."""
    s = np.asarray(signs)
    if not (s.dtype.kind == "f" or s.dtype == np.int8):
        raise InputDTypeError(f"signs must be a float or int8 array, got {s.dtype}")
    if s.shape != (layout.rotated_dim,):
        raise InputVectorError(
            f"signs must have shape ({layout.rotated_dim},) for this layout, got {s.shape}"
        )
    # any other value would make the transform non-orthogonal and the decode wrong
    if not _all_plus_minus_one(s):
        raise InputVectorError("signs must contain only +1 and -1")
    return s


def _check_rotation_input(x, signs, layout):
    _check_layout(layout)
    arr = np.asarray(x)
    dtype = _compute_dtype(arr.dtype, "x")
    if arr.shape != (layout.dim,):
        raise InputVectorError(f"x must have shape ({layout.dim},), got {arr.shape}")
    return arr, dtype, _checked_signs(signs, layout)


def _transform_padded(padded, layout, workspace=None):
    """Exact-order transform of the padded, sign-flipped vector, chunk by chunk."""
    rows = padded.reshape(layout.num_chunks, layout.chunk_size)
    factor = padded.dtype.type(1.0 / math.sqrt(layout.chunk_size))
    scratch = work_array(workspace, "rotation scratch", rows.size, rows.dtype)
    return _butterfly_passes(rows, scratch.reshape(rows.shape), factor)


def rotate(x, signs, layout):
    """Pad, sign-flip and Hadamard-transform a vector chunk by chunk.

    Computed with :func:`exact_order_fwht`'s butterflies, so the result is bit-for-bit
    the same on every CPU and BLAS. Inputs whose magnitudes may overflow (or underflow)
    the compute dtype should go through :func:`scaled_rotate`.

    Parameters
    ----------
    x : array_like
        1-D float16, float32 or float64 vector of length ``layout.dim``; not modified.
    signs : array_like
        Float or int8 array of ``+1``/``-1`` of length ``layout.rotated_dim``.
    layout : RotationLayout
        Layout of ``x``.

    Returns
    -------
    numpy.ndarray
        Shape ``(num_chunks, chunk_size)``, float64 for float64 input and float32
        otherwise. Orthonormal: the norm of ``x`` is preserved.
    """
    arr, dtype, s = _check_rotation_input(x, signs, layout)
    padded = np.empty(layout.rotated_dim, dtype=dtype)
    # flipping signs is exact in every float dtype, so casting inside the ufunc loses nothing
    np.multiply(arr, s[: layout.dim], out=padded[: layout.dim], dtype=dtype)
    padded[layout.dim :] = 0
    return _transform_padded(padded, layout)


# Inputs with max |x| in this range rotate unscaled: the butterflies' partial sums stay
# below 2**88 and the norm is far from the float32 limits.
_UNSCALED_RANGE = (2.0**-60, 2.0**60)


def scaled_rotate(x, signs, layout):
    """:func:`rotate` each chunk of ``x`` scaled by its own power of two, so nothing
    overflows or underflows.

    Scaling by a power of two is exact, so ``rotated[k] * 2**exponents[k]`` is the
    rotation of chunk ``k`` computed as precisely as the dtype allows, for any finite
    ``x``: ``3e38`` in float32, ``1e308`` in float64 and subnormals alike. When the
    largest ``|x|`` of every nonzero chunk lies in ``[2**-60, 2**60]`` all exponents are
    0 (no extra pass over the data); otherwise each nonzero chunk is scaled so its
    largest magnitude lies in ``[0.5, 1)``. A NaN or infinite ``x`` is refused
    (``InputVectorError`` naming the first such index), found from the chunk peaks.

    Returns
    -------
    rotated : numpy.ndarray
        Shape ``(num_chunks, chunk_size)``, as :func:`rotate`, of the scaled chunks.
    exponents : numpy.ndarray of int64
        Shape ``(num_chunks,)``: the power of two to multiply each chunk by.
    """
    rotated, exponents, _ = _scaled_rotate(x, signs, layout)
    return rotated, exponents


def _scaled_rotate(x, signs, layout, generated_signs=False, workspace=None):
    """:func:`scaled_rotate`; ``generated_signs``: the signs come from
    :func:`~quicdesign.randomness.rotation_signs` (only +1/-1, in the compute dtype),
    so the pass checking them is skipped. With a ``workspace``
    (:mod:`quicdesign._workspace`) the result is one of its arrays. Returns
    :func:`scaled_rotate`'s pair and the rows' sums of squares as the compiled
    ``row_square_sums`` gives them, when the compiled transform found them (else None)."""
    if generated_signs:
        _check_layout(layout)
        arr = np.asarray(x)
        dtype = _compute_dtype(arr.dtype, "x")
        if arr.shape != (layout.dim,):
            raise InputVectorError(f"x must have shape ({layout.dim},), got {arr.shape}")
        s = signs
    else:
        arr, dtype, s = _check_rotation_input(x, signs, layout)
    padded = work_array(workspace, "rotation", layout.rotated_dim, dtype)
    chunks = padded.reshape(layout.num_chunks, layout.chunk_size)
    kernels = compiled_kernels()
    # int8 signs (+-1) widen exactly in the compiled pass
    fast = (
        kernels is not None
        and arr.dtype == dtype
        and s.dtype in (dtype, np.int8)
        and arr.flags.c_contiguous
    )
    transformed = square_sums = None
    if fast and layout.chunk_size >= 4:
        # sign flips and chunk peaks inside the transform's first pass (flips and maxima
        # are exact: same bits), the chunks' sums of squares while they are in cache;
        # kept only if no chunk needs scaling
        factor = chunks.dtype.type(1.0 / math.sqrt(layout.chunk_size))
        bits = arr.view(np.uint32 if dtype == np.float32 else np.uint64)
        square_sums = np.empty(layout.num_chunks)
        peak_bits = kernels.signed_butterflies(arr, bits, s, chunks, factor, square_sums)
        with np.errstate(invalid="ignore"):  # a signaling NaN's cast: refused below
            largest = peak_bits.view(dtype).astype(np.float64)  # NaN bits stay NaN
        transformed = chunks
    elif fast:
        # sign flips and chunk peaks in one pass (flips and maxima are exact: same bits)
        largest = kernels.signed_chunk_peaks(arr, s, chunks)
    else:
        with np.errstate(invalid="ignore"):  # a signaling NaN: refused below
            np.multiply(arr, s[: layout.dim], out=padded[: layout.dim], dtype=dtype)
        padded[layout.dim :] = 0
        # two reductions, no |x| temporary (NaN propagates through both)
        largest = np.maximum(np.max(chunks, axis=1), -np.min(chunks, axis=1))
        largest = largest.astype(np.float64)
    if not np.all(np.isfinite(largest)):  # a chunk peak is NaN or inf: so is a value
        check_finite_vector(arr.reshape(-1))
    exponents = np.zeros(layout.num_chunks, dtype=np.int64)
    low, high = _UNSCALED_RANGE
    nonzero = largest > 0
    if np.all((largest[nonzero] >= low) & (largest[nonzero] <= high)):
        if transformed is not None:
            return transformed, exponents, square_sums
        return _transform_padded(padded, layout, workspace), exponents, None
    exponents[nonzero] = np.frexp(largest[nonzero])[1]
    # ldexp in float64 is exact for every float32 or float64 input value
    wide = np.zeros(chunks.shape, dtype=np.float64)
    wide.reshape(-1)[: layout.dim] = np.multiply(arr, s[: layout.dim], dtype=np.float64)
    padded = np.ldexp(wide, -exponents[:, None]).astype(dtype).reshape(-1)
    return _transform_padded(padded, layout), exponents, None


def unrotate(v, signs, layout):
    """Invert :func:`rotate` and crop the padding.

    Parameters
    ----------
    v : array_like
        Float16, float32 or float64 array of shape ``(num_chunks, chunk_size)`` or
        ``(rotated_dim,)``; not modified.
    signs : array_like
        The signs given to :func:`rotate`.
    layout : RotationLayout
        The layout given to :func:`rotate`.

    Returns
    -------
    numpy.ndarray
        1-D vector of length ``layout.dim``, float64 for float64 input and float32
        otherwise.
    """
    _check_layout(layout)
    arr = np.asarray(v)
    dtype = _compute_dtype(arr.dtype, "v")
    chunk_shape = (layout.num_chunks, layout.chunk_size)
    if arr.shape not in (chunk_shape, (layout.rotated_dim,)):
        raise InputVectorError(
            f"v must have shape {chunk_shape} or ({layout.rotated_dim},), got {arr.shape}"
        )
    s = _checked_signs(signs, layout)
    transformed = fwht(arr.reshape(chunk_shape).astype(dtype, copy=False))
    # a view: the padding it keeps alive is below max(dim / 32, 1024) entries
    cropped = transformed.reshape(-1)[: layout.dim]
    np.multiply(cropped, s[: layout.dim], out=cropped, dtype=dtype)
    return cropped
