"""CosSGD cosine quantizer (He, Wang, Zenk, Fritz, arXiv 2012.08241), applied per tensor.

Encode ``x`` with ``b`` bits and clipping fraction ``c``:

1. ``n = ||x||`` (float32, rounded up). ``n = 0`` decodes to zeros.
2. ``u_j = arccos(clip(x_j / n, -1, 1)) / pi`` in ``[0, 1]``.
3. Drop the fraction ``c`` of entries with the largest ``|u_j - 0.5|``; ``m`` is the
   largest remaining deviation (an ``np.partition`` selection, not a sort) and
   ``beta = 0.5 - m`` (float32, rounded down so ``c = 0`` saturates nothing).
4. ``t = (clip(u, beta, 1 - beta) - beta) / (1 - 2 beta) * (2**b - 1)``.
5. ``rounding="deterministic"``: ``q = rint(t)`` (the paper's default);
   ``"stochastic"``: ``floor(t) + Bernoulli(frac(t))``, unbiased in ``u`` but not in ``x``;
   ``"unbiased"`` (toolkit extension, not from the paper; needs ``c = 0``): randomize
   between the two adjacent *decoded* levels with probabilities proportional to the
   distance in ``x``, which is unbiased in ``x``.

Decode ``x_hat = n cos(pi (beta + q (1 - 2 beta) / (2**b - 1)))``. Per-tensor side
information: ``n`` and ``beta`` (two float32), then ``b`` bits per entry. Only the
``"unbiased"`` mode declares ``properties.unbiased``.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_f32_normal, check_int
from .._wire import packed_size
from ..errors import ParameterError, PayloadError
from ..stages import Pipeline, Stage
from ._common import PipelineCompressor, euclidean_norm, f32_ceil, f32_floor, read_f32
from .base import CompressorProperties

__all__ = ["CosSGD", "cosine_levels"]

_ROUNDINGS = ("deterministic", "stochastic", "unbiased")


def cosine_levels(norm, beta, bits):
    """The ``2**bits`` decoded values ``n cos(pi (beta + k (1 - 2 beta) / (2**bits - 1)))``.

    Decreasing in ``k`` and symmetric about zero (level ``k`` mirrors ``2**bits - 1 - k``).
    """
    top = (1 << bits) - 1
    angles = beta + np.arange(top + 1) * ((1.0 - 2.0 * beta) / top)
    return norm * np.cos(np.pi * angles)


class CosineQuantize(Stage):
    """The cosine quantizer of one tensor; side information ``n``, ``beta`` and codes.

    Parameters
    ----------
    bits, clip, rounding
        As for :class:`CosSGD` (validated there).
    """

    def __init__(self, bits, clip, rounding):
        self.bits = bits
        self.clip = clip
        self.rounding = rounding

    def apply(self, flat, state):
        bits = self.bits
        top = (1 << bits) - 1
        x = flat.astype(np.float64)
        raw_norm = euclidean_norm(x)
        check_f32_normal(raw_norm, "norm")
        norm = f32_ceil(raw_norm, "norm")
        if norm == 0.0:
            return None, (0.0, 0.0, np.zeros(x.size, dtype=np.uint8))
        u = np.arccos(np.clip(x / norm, -1.0, 1.0)) / np.pi
        deviation = np.abs(u - 0.5)
        dropped = math.floor(self.clip * x.size)
        # the (dropped + 1)-th largest deviation, by selection
        kth = x.size - 1 - dropped
        largest_kept = float(np.partition(deviation, kth)[kth])
        beta = f32_floor(0.5 - largest_kept, "beta")
        span = 1.0 - 2.0 * beta
        if span <= 0.0:
            codes = np.zeros(x.size, dtype=np.int64)
        else:
            t = (np.clip(u, beta, 1.0 - beta) - beta) * (top / span)
            codes = self._round(t, x, top, norm, beta, bits, state.rng)
        return None, (norm, beta, codes)

    def write_side(self, writer, side):
        norm, beta, codes = side
        writer.write_f32(norm)
        writer.write_f32(beta)
        writer.write_codes(codes, self.bits)

    def _round(self, t, x, top, norm, beta, bits, rng):
        if self.rounding == "deterministic":
            return np.clip(np.rint(t), 0, top).astype(np.int64)
        if self.rounding == "stochastic":
            lower = np.floor(t)
            codes = lower + (rng.random(t.shape) < (t - lower))
            return np.clip(codes, 0, top).astype(np.int64)
        # unbiased in x: between the decoded levels L[lower] >= x >= L[lower + 1]
        levels = cosine_levels(norm, beta, bits)
        lower = np.clip(np.floor(t), 0, top - 1).astype(np.int64)
        above, below = levels[lower], levels[lower + 1]
        gap = above - below
        safe_gap = np.where(gap > 0, gap, 1.0)
        up_probability = np.clip(np.where(gap > 0, (above - x) / safe_gap, 0.0), 0.0, 1.0)
        return lower + (rng.random(t.shape) < up_probability)

    def read_side(self, reader, state, dim):
        norm = read_f32(reader, "norm", nonnegative=True)
        beta = read_f32(reader, "beta")
        if not 0.0 <= beta <= 0.5:
            raise PayloadError(f"beta must be in [0, 0.5], got {beta!r}")
        return norm, beta, reader.read_codes(self.bits, dim, "codes")

    def invert(self, y, side, state, dim):
        norm, beta, codes = side
        if norm == 0.0 or beta == 0.5:
            return np.zeros(dim, dtype=np.float64)
        return cosine_levels(norm, beta, self.bits)[codes]

    def side_size(self, dim, vector_dim):
        return 8 + packed_size(self.bits, dim)

    def output_dim(self, dim):
        return 0


class CosSGD(PipelineCompressor):
    """Cosine quantization of one tensor with per-tensor norm and range.

    Parameters
    ----------
    bits : int
        Bits per entry, 1..16.
    clip : float
        Fraction ``c`` in ``[0, 1)`` of entries saturated to spend resolution on the
        bulk (ProgFed's configs use 0.01); 0 means no clipping.
    rounding : {"deterministic", "stochastic", "unbiased"}
        See the module docstring; ``"unbiased"`` requires ``clip = 0``.
    """

    name = "cossgd"
    magic = b"QDCO"

    def __init__(self, bits=4, clip=0.0, rounding="deterministic"):
        self.bits = bits
        self.clip = clip
        self.rounding = rounding

    @property
    def properties(self):
        return CompressorProperties(
            unbiased=self.rounding == "unbiased", sums_before_decoding=False
        )

    def _config(self):
        bits = check_int(self.bits, "bits", 1, 16)
        if (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, (int, float))
            or not (0.0 <= self.clip < 1.0)
        ):
            raise ParameterError(f"clip must be a fraction in [0, 1), got {self.clip!r}")
        if self.rounding not in _ROUNDINGS:
            raise ParameterError(f"rounding must be one of {_ROUNDINGS}, got {self.rounding!r}")
        if self.rounding == "unbiased" and self.clip != 0:
            raise ParameterError("rounding='unbiased' needs clip=0: clipping adds a bias")
        # only bits changes how a payload is read
        return (bits,)

    @property
    def stages(self):
        """The cosine quantizer of the tensor itself."""
        return Pipeline((CosineQuantize(self._config()[0], self.clip, self.rounding),))
