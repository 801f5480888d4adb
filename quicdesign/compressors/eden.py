"""EDEN (arXiv 2108.08842) and DRIVE (arXiv 2105.08339, EDEN with one bit).

Client: rotate with a *per-client* randomized Hadamard transform (signs from the shared
stream ``(round_seed, client_id, "eden-rotation")``, so the server can regenerate them),
chunk by chunk as in :class:`~quicdesign.rotation.RotationLayout`. In each chunk of
length ``m`` scale to ``z = v sqrt(m) / ||v||`` and map every ``z_j`` to the nearest
Lloyd-Max centroid ``c_j`` of N(0, 1) with ``2**bits`` levels. Send the codes and, per
chunk, the unbiasing scale ``S = ||v||**2 / <v, c>`` (float32); the chunk decodes to
``S c`` in the rotated domain. DRIVE is ``bits = 1``: ``S c = (||v||**2 / ||v||_1) sign(v)``.

Server: one inverse rotation *per client* (the rotations differ), O(n d log d).

Bias. EDEN is unbiased for a uniformly random rotation. With the randomized Hadamard
transform used here it is only approximately so: measured relative bias
``||E x_hat - x|| / ||x||`` at d = 1000 is about 0.3% on Gaussian vectors and 1% on
LogNormal(0, 1) vectors for b = 1, smaller for larger b, and several percent for
d <= 16. That is detectable by the conformance kit, so ``properties.unbiased`` is False.
The vNMSE is unaffected: about ``D_LM / (1 - D_LM)`` (the published values are in
:data:`quicdesign.reference.EDEN_VNMSE`).

Lloyd-Max levels are computed at first use by :func:`lloyd_max_normal` (our own code,
no stored literals) and cached.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._validate import check_f32_normal, check_int
from .._wire import packed_size
from ..rotation import RotationLayout
from ..stages import Pipeline, RandomizedHadamard, Stage
from ._common import PipelineCompressor, read_f32, to_float32
from .base import CompressorProperties

__all__ = ["EDEN", "DRIVE", "lloyd_max_normal", "PURPOSE_EDEN_ROTATION"]

PURPOSE_EDEN_ROTATION = "eden-rotation"

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)
_NEWTON_TOLERANCE = 1e-13
_MAX_NEWTON_STEPS = 60


def _upper_tail(t):
    """``1 - Phi(t)`` via erfc, accurate far in the upper tail; ``t`` may hold inf."""
    return _erfc(np.asarray(t, dtype=np.float64) / _SQRT2).astype(np.float64) * 0.5


def _pdf(t):
    t = np.asarray(t, dtype=np.float64)
    return _INV_SQRT_2PI * np.exp(-0.5 * t * t)


def _centroids(bounds):
    """Conditional means and probabilities of N(0, 1) on ``[bounds[k], bounds[k + 1]]``."""
    lower, upper = bounds[:-1], bounds[1:]
    mass = _upper_tail(lower) - _upper_tail(upper)
    return (_pdf(lower) - _pdf(upper)) / mass, mass


def _lloyd_residual(inner):
    """Lloyd's midpoint condition on the positive half: ``t_k - (c_{k-1} + c_k) / 2``."""
    bounds = np.concatenate(([0.0], inner, [np.inf]))
    centroids, mass = _centroids(bounds)
    return inner - 0.5 * (centroids[:-1] + centroids[1:]), bounds, centroids, mass


def _companding_start(half):
    """Panter-Dite start: boundaries at quantiles of N(0, 3) (density ~ phi**(1/3))."""
    grid = np.linspace(0.0, 40.0, 20001)
    tail = _upper_tail(grid / math.sqrt(3.0))
    wanted = 0.5 - 0.5 * np.arange(1, half) / half  # decreasing upper-tail masses
    return np.interp(-wanted, -tail, grid)


@functools.cache
def lloyd_max_normal(bits):
    """Lloyd-Max quantizer of the standard normal with ``2**bits`` levels.

    Solves Lloyd's optimality conditions (every centroid is the conditional mean of its
    cell, every boundary the midpoint of its neighbours) on the positive half, using
    the symmetry of N(0, 1). The Lloyd fixed point is reached with Newton steps on the
    boundaries (the Jacobian is tridiagonal, from ``d c / d a = phi(a) (c - a) / P``
    and ``d c / d b = phi(b) (b - c) / P``), falling back to a plain Lloyd step when a
    Newton step does not help; plain Lloyd iteration alone needs ~1e5 steps at 8 bits.

    Parameters
    ----------
    bits : int
        1..8.

    Returns
    -------
    centroids : numpy.ndarray
        Read-only, increasing, shape ``(2**bits,)``, symmetric about 0.
    boundaries : numpy.ndarray
        Read-only decision thresholds (midpoints), shape ``(2**bits - 1,)``.
    distortion : float
        ``D_LM = E[(Z - Q(Z))**2] = 1 - E[Q(Z)**2]``.
    """
    bits = check_int(bits, "bits", 1, 8)
    half = 1 << (bits - 1)
    inner = _companding_start(half)
    residual, bounds, centroids, mass = _lloyd_residual(inner)
    for _ in range(_MAX_NEWTON_STEPS):
        if half == 1 or np.max(np.abs(residual)) <= _NEWTON_TOLERANCE:
            break
        density = _pdf(bounds)
        # derivatives of c_{k-1} and c_k with respect to their shared boundary t_k
        of_lower_cell = density[1:-1] * (inner - centroids[:-1]) / mass[:-1]
        of_upper_cell = density[1:-1] * (centroids[1:] - inner) / mass[1:]
        jacobian = np.diag(1.0 - 0.5 * (of_lower_cell + of_upper_cell))
        rows = np.arange(half - 2)
        middle, middle_mass = centroids[1:-1], mass[1:-1]
        # c_k (k = 1..half-2) also moves with its other boundary: t_k below, t_{k+1} above
        jacobian[rows + 1, rows] = -0.5 * density[1:-2] * (middle - inner[:-1]) / middle_mass
        jacobian[rows, rows + 1] = -0.5 * density[2:-1] * (inner[1:] - middle) / middle_mass
        candidate = inner - np.linalg.solve(jacobian, residual)
        ordered = candidate[0] > 0 and np.all(np.diff(candidate) > 0)
        if ordered:
            new = _lloyd_residual(candidate)
        if not ordered or np.max(np.abs(new[0])) >= np.max(np.abs(residual)):
            candidate = 0.5 * (centroids[:-1] + centroids[1:])  # one Lloyd step
            new = _lloyd_residual(candidate)
        inner = candidate
        residual, bounds, centroids, mass = new
    distortion = 1.0 - 2.0 * float(np.sum(mass * centroids * centroids))
    full = np.concatenate((-centroids[::-1], centroids))
    thresholds = 0.5 * (full[:-1] + full[1:])
    full.flags.writeable = False
    thresholds.flags.writeable = False
    return full, thresholds, distortion


class LloydMaxQuantize(Stage):
    """EDEN's quantizer on rotated chunks (a :class:`~quicdesign.stages.ScaledChunks`):
    nearest Lloyd-Max centroid of the unit-variance chunk, and one unbiasing scale
    ``S = ||v||**2 / <v, c>`` per chunk (float32). Decodes to ``S c`` per chunk.

    Parameters
    ----------
    bits : int
        1..8 (validated by the compressor).
    """

    def __init__(self, bits):
        self.bits = bits

    def apply(self, x, state):
        centroids, thresholds, _ = lloyd_max_normal(self.bits)
        rotated, exponents, layout = x.rotated, x.exponents, x.layout
        squared_norms = np.sum(np.square(rotated, dtype=np.float64), axis=1)
        norms = np.sqrt(squared_norms)
        positive = norms > 0
        to_unit = np.zeros_like(norms)
        to_unit[positive] = math.sqrt(layout.chunk_size) / norms[positive]
        z = rotated * to_unit[:, None].astype(rotated.dtype)
        codes = np.searchsorted(thresholds, z.reshape(-1)).reshape(z.shape)
        chosen = centroids[codes]
        inner = np.sum(rotated * chosen, axis=1)
        # <v, c> > 0 whenever v != 0: each centroid has the sign of its coordinate
        scales = np.zeros_like(norms)
        scales[positive] = squared_norms[positive] / inner[positive]
        check_f32_normal(scales, "EDEN scale", exponents)
        with np.errstate(over="ignore"):
            scales = np.ldexp(scales, exponents)
        return None, (to_float32(scales, "EDEN scales"), codes)

    def write_side(self, writer, side):
        scales, codes = side
        writer.write_array(scales)
        writer.write_codes(codes, self.bits)

    def read_side(self, reader, state, dim):
        layout = RotationLayout.for_dim(state.dim)
        scales = np.array(
            [read_f32(reader, f"scale[{k}]", nonnegative=True) for k in range(layout.num_chunks)]
        )
        return scales, reader.read_codes(self.bits, dim, "codes")

    def invert(self, y, side, state, dim):
        scales, codes = side
        layout = RotationLayout.for_dim(state.dim)
        rotated = lloyd_max_normal(self.bits)[0][codes].reshape(
            layout.num_chunks, layout.chunk_size
        )
        rotated *= scales[:, None]
        return rotated

    def side_size(self, dim, vector_dim):
        return 4 * RotationLayout.for_dim(vector_dim).num_chunks + packed_size(self.bits, dim)

    def output_dim(self, dim):
        return 0


class EDEN(PipelineCompressor):
    """EDEN with ``2**bits`` Lloyd-Max levels and a per-client rotation.

    Parameters
    ----------
    bits : int
        1..8. Payload: header, one float32 scale per rotation chunk and
        ``ceil(bits * rotated_dim / 8)`` bytes of codes.
    """

    name = "eden"
    magic = b"QDED"
    properties = CompressorProperties(
        unbiased=False, sums_before_decoding=False, shared_randomness=("client",)
    )

    def __init__(self, bits=2):
        self.bits = bits

    def _config(self):
        return (check_int(self.bits, "bits", 1, 8),)

    @property
    def expected_vnmse(self):
        """``D_LM / (1 - D_LM)``: the vNMSE for a uniform rotation in high dimension."""
        distortion = lloyd_max_normal(self._config()[0])[2]
        return distortion / (1.0 - distortion)

    @property
    def stages(self):
        """The client's own rotation (not summed), then Lloyd-Max quantization."""
        return Pipeline(
            (
                RandomizedHadamard(scaled=True, client_purpose=PURPOSE_EDEN_ROTATION),
                LloydMaxQuantize(self._config()[0]),
            )
        )


class DRIVE(EDEN):
    """DRIVE: EDEN with one bit, ``x_hat = (||v||**2 / ||v||_1) RHT^-1(sign v)`` per chunk."""

    name = "drive"

    def __init__(self):
        self.bits = 1

    def __repr__(self):
        return "DRIVE()"
