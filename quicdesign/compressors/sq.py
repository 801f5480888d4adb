"""Stochastic quantization: min-max SQ and QSGD.

``StochasticQuantizer`` (min-max SQ)
    Grid ``lo + k * delta``, ``k = 0 .. 2**bits - 1``, ``delta = (hi - lo) / (2**bits - 1)``
    with ``lo <= min(x)`` and ``hi >= max(x)`` the float32 side information (rounded
    outwards). Each coordinate rounds up with probability equal to its fractional
    position, so the estimate is unbiased. Body: ``lo``, ``hi`` (f32) and packed codes.

``QSGD`` (Alistarh et al., arXiv 1610.02132)
    Convention adopted: the paper's. ``n = ||x||_2`` (or ``max |x|`` with
    ``norm="max"``, the convention of the official QUIC-FL harness), ``s`` levels:
    ``xi_j = floor(s |x_j| / n) + Bernoulli(frac)``, decoded as ``n sign(x_j) xi_j / s``.
    The signed level ``sign(x_j) xi_j + s`` in ``0 .. 2s`` is sent as a fixed-length code of
    ``ceil(log2(2s + 1))`` bits (no Elias coding), plus ``n`` as f32. For a budget of
    ``b >= 2`` bits per coordinate use ``levels = 2**(b - 1) - 1``.

The min-max helpers :func:`minmax_quantize` / :func:`minmax_dequantize` are shared with
Hadamard+SQ and Kashin+SQ.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_f32_normal, check_int, check_minmax_magnitude
from .._wire import packed_size
from ..errors import ParameterError, PayloadError
from ..stages import Pipeline, Stage
from ._common import PipelineCompressor, euclidean_norm, f32_ceil, f32_floor, read_f32
from .base import CompressorProperties

__all__ = [
    "StochasticQuantizer",
    "QSGD",
    "MinMaxQuantize",
    "QSGDQuantize",
    "check_minmax_magnitude",
    "minmax_quantize",
    "minmax_dequantize",
    "read_minmax_side",
]


def _stochastic_round(t, upper, rng):
    """Unbiased integer rounding of ``t`` (values in ``[0, upper]``) as int64 codes."""
    np.clip(t, 0.0, upper, out=t)
    codes = np.floor(t)
    t -= codes  # fractional part: probability of rounding up
    codes += rng.random(t.shape) < t
    return np.minimum(codes, upper).astype(np.int64)


def minmax_quantize(values, bits, rng):
    """Stochastically quantize ``values`` on a ``2**bits``-level min-max grid.

    Parameters
    ----------
    values : numpy.ndarray
        Finite float values (any shape; flattened), zero or with a largest magnitude in
        float32's normal range (else ``InputVectorError``).
    bits : int
        Bits per value, 1..16.
    rng : numpy.random.Generator
        Private randomness for the rounding.

    Returns
    -------
    lo, hi : float
        Grid ends, exactly representable in float32, ``lo <= min`` and ``hi >= max``.
    codes : numpy.ndarray
        int64 codes in ``0 .. 2**bits - 1``.
    """
    flat = np.asarray(values).reshape(-1)
    check_minmax_magnitude(flat)
    lo = f32_floor(flat.min(), "minimum")
    hi = f32_ceil(flat.max(), "maximum")
    top = (1 << bits) - 1
    delta = (hi - lo) / top
    if delta == 0.0:
        # every value equals lo exactly (lo <= min <= max <= hi)
        return lo, hi, np.zeros(flat.size, dtype=np.int64)
    t = np.subtract(flat, lo, dtype=np.float64)
    t /= delta
    return lo, hi, _stochastic_round(t, top, rng)


def minmax_dequantize(lo, hi, codes, bits):
    """Decode codes of :func:`minmax_quantize` to float64 ``lo + code * delta``."""
    delta = (hi - lo) / ((1 << bits) - 1)
    decoded = codes.astype(np.float64)
    decoded *= delta
    decoded += lo
    return decoded


def read_minmax_side(reader):
    """Read and check the ``lo``, ``hi`` float32 pair of a min-max payload."""
    lo = read_f32(reader, "lo")
    hi = read_f32(reader, "hi")
    if hi < lo:
        raise PayloadError(f"grid bounds out of order: lo={lo!r} > hi={hi!r}")
    return lo, hi


class MinMaxQuantize(Stage):
    """Unbiased min-max SQ as a stage: side information is ``lo``, ``hi`` and the codes.

    Its inverse depends on each client's grid, so it does not commute with sum.

    Parameters
    ----------
    bits : int
        Bits per value, 1..16 (validated by the compressor).
    """

    commutes_with_sum = False

    def __init__(self, bits):
        self.bits = bits

    def apply(self, x, state):
        return None, minmax_quantize(x, self.bits, state.rng)

    def invert(self, y, side, state, dim):
        lo, hi, codes = side
        return minmax_dequantize(lo, hi, codes, self.bits)

    def write_side(self, writer, side):
        lo, hi, codes = side
        writer.write_f32(lo)
        writer.write_f32(hi)
        writer.write_codes(codes, self.bits)

    def read_side(self, reader, state, dim):
        lo, hi = read_minmax_side(reader)
        return lo, hi, reader.read_codes(self.bits, dim, "codes")

    def side_size(self, dim, vector_dim):
        return 8 + packed_size(self.bits, dim)

    def output_dim(self, dim):
        return 0


class StochasticQuantizer(PipelineCompressor):
    """Unbiased min-max stochastic quantization with ``2**bits`` levels.

    Parameters
    ----------
    bits : int
        Bits per coordinate, 1..16. The payload is the 21-byte header, two float32
        bounds and ``ceil(bits * d / 8)`` bytes of codes.
    """

    name = "sq"
    magic = b"QDSQ"
    properties = CompressorProperties(unbiased=True, sums_before_decoding=False)

    def __init__(self, bits=4):
        self.bits = bits

    def _config(self):
        return (check_int(self.bits, "bits", 1, 16),)

    @property
    def stages(self):
        """Min-max SQ of the vector itself."""
        return Pipeline((MinMaxQuantize(self._config()[0]),))


class QSGDQuantize(Stage):
    """QSGD's norm-scaled levels (see the module docstring); side: ``n`` and the codes.

    Parameters
    ----------
    levels : int
        ``s``, validated by the compressor.
    norm : {"l2", "max"}
        The scale ``n``.
    """

    def __init__(self, levels, norm):
        self.levels = levels
        self.norm = norm
        self.code_bits = math.ceil(math.log2(2 * levels + 1))

    def apply(self, x, state):
        levels = self.levels
        magnitude = np.abs(x, dtype=np.float64)
        raw_scale = euclidean_norm(magnitude) if self.norm == "l2" else magnitude.max()
        # rounded up to float32 so |x_j| / scale <= 1 with the value the server reads
        scale = f32_ceil(raw_scale, "norm")
        check_f32_normal(raw_scale, "norm")
        if scale == 0.0:
            signed = np.full(x.size, levels, dtype=np.int64)
        else:
            magnitude *= levels / scale
            xi = _stochastic_round(magnitude, levels, state.rng)
            signed = np.where(x < 0, levels - xi, levels + xi)
        return None, (scale, signed)

    def write_side(self, writer, side):
        scale, signed = side
        writer.write_f32(scale)
        writer.write_codes(signed, self.code_bits)

    def read_side(self, reader, state, dim):
        scale = read_f32(reader, "norm", nonnegative=True)
        codes = reader.read_codes(self.code_bits, dim, "codes")
        if codes.size and int(codes.max()) > 2 * self.levels:
            raise PayloadError(f"QSGD code {int(codes.max())} exceeds 2s = {2 * self.levels}")
        return scale, codes

    def invert(self, y, side, state, dim):
        scale, codes = side
        decoded = codes.astype(np.float64)
        decoded -= self.levels
        decoded *= scale / self.levels
        return decoded

    def side_size(self, dim, vector_dim):
        return 4 + packed_size(self.code_bits, dim)

    def output_dim(self, dim):
        return 0


class QSGD(PipelineCompressor):
    """QSGD with ``s`` levels per sign, norm-scaled (see the module docstring).

    Parameters
    ----------
    levels : int
        ``s >= 1``; codes take ``ceil(log2(2s + 1))`` bits (``s <= 32767``).
    norm : {"l2", "max"}
        Scale ``n``: the Euclidean norm (the paper, variance bound
        ``min(d / s**2, sqrt(d) / s)``) or ``max |x|`` (the official QUIC-FL harness).
    """

    name = "qsgd"
    magic = b"QDQS"
    properties = CompressorProperties(unbiased=True, sums_before_decoding=False)

    def __init__(self, levels=7, norm="l2"):
        self.levels = levels
        self.norm = norm

    def _config(self):
        levels = check_int(self.levels, "levels", 1, 2**15 - 1)
        if self.norm not in ("l2", "max"):
            raise ParameterError(f"norm must be 'l2' or 'max', got {self.norm!r}")
        return levels, self.norm

    @property
    def code_bits(self):
        """Bits per coordinate on the wire, ``ceil(log2(2s + 1))``."""
        return math.ceil(math.log2(2 * self._config()[0] + 1))

    @property
    def stages(self):
        """QSGD's levels of the vector itself."""
        return Pipeline((QSGDQuantize(*self._config()),))
