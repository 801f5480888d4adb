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

Performance note: OpenBLAS runs these matmuls on all cores. When the machine is
oversubscribed (several processes each using BLAS threads) the thread hand-offs dominate
and a single BLAS thread per process is faster; limit it in worker processes (joblib's
loky backend does; otherwise ``OPENBLAS_NUM_THREADS=1`` or threadpoolctl).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from quicdesign._validate import check_dim
from quicdesign.errors import InputDTypeError, InputVectorError, ParameterError

__all__ = ["fwht", "RotationLayout", "rotate", "unrotate"]

# Measured on a 2-core Xeon with OpenBLAS: passes with 16-wide blocks beat both smaller
# blocks (more passes over memory) and larger ones (more flops per coordinate).
_MAX_PASS_BITS = 4
# A single dense matmul is cheaper than several passes up to this length.
_SINGLE_PASS_MAX = 128
_FWHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SMALL_VECTOR_CHUNK = 1024
_MAX_CHUNKS = 8
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


def _layout_sizes(d):
    padded = 1 << (d - 1).bit_length()
    chunk_size = max(padded // _MAX_CHUNKS, min(padded, _SMALL_VECTOR_CHUNK))
    return chunk_size, -(-d // chunk_size)


@dataclass(frozen=True)
class RotationLayout:
    """How a length-``dim`` vector is zero-padded and split into rotated chunks.

    Rule (part of the wire contract, do not change): let ``P`` be the smallest power of
    two ``>= dim``; ``chunk_size = max(P // 8, min(P, 1024))`` and
    ``num_chunks = ceil(dim / chunk_size)``. Vectors up to 1024 long become one
    power-of-two chunk; longer ones become at most 8 equal power-of-two chunks, each
    rotated on its own. Padding ``rotated_dim - dim`` is below
    ``chunk_size <= max(dim / 4, 1024)``.

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
        d = check_dim(d)
        chunk_size, num_chunks = _layout_sizes(d)
        return cls(dim=d, chunk_size=chunk_size, num_chunks=num_chunks)

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


def rotate(x, signs, layout):
    """Pad, sign-flip and Hadamard-transform a vector chunk by chunk.

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
    _check_layout(layout)
    arr = np.asarray(x)
    dtype = _compute_dtype(arr.dtype, "x")
    if arr.shape != (layout.dim,):
        raise InputVectorError(f"x must have shape ({layout.dim},), got {arr.shape}")
    s = _checked_signs(signs, layout)
    padded = np.empty(layout.rotated_dim, dtype=dtype)
    # flipping signs is exact in every float dtype, so casting inside the ufunc loses nothing
    np.multiply(arr, s[: layout.dim], out=padded[: layout.dim], dtype=dtype)
    padded[layout.dim :] = 0
    # a fresh output is faster than in place, which makes numpy copy the input first
    return fwht(padded.reshape(layout.num_chunks, layout.chunk_size))


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
    # a view: the padding it keeps alive is below max(dim / 4, 1024) entries
    cropped = transformed.reshape(-1)[: layout.dim]
    np.multiply(cropped, s[: layout.dim], out=cropped, dtype=dtype)
    return cropped
