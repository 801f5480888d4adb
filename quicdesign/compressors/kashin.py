"""Kashin's representation + stochastic quantization (arXiv 1812.07210, 2002.08958).

The round shares a tight frame: the first ``d`` rows of the orthogonal matrix
``(H S)^T / sqrt(D')`` with ``S`` the round's rotation signs and ``D'`` the frame length
(:func:`kashin_frame_dim`). A client finds coefficients ``a`` of length ``D'`` with
``x = crop(RHT^-1(a))`` and small ``max |a|`` by truncated iterations::

    M = ||x|| / sqrt(delta D'),  a = 0,  r = x
    repeat:  c = RHT(pad r);  c_hat = clip(c, -M, M);  a += c_hat;
             r -= crop(RHT^-1(c_hat));  M *= eta

``variant="exact"`` (default) iterates until ``||r|| <= 1e-6 ||x||`` (at most 64 times)
and then adds the unclipped remainder ``RHT(pad r)``, so ``crop(RHT^-1(a)) = x`` up to
float rounding and the scheme is unbiased. ``variant="tf"`` stops after 3 iterations and
drops the residual, as in TensorFlow's implementation: biased, and its NMSE does not fall
as ``1/n``.

``a`` is sent with unbiased min-max SQ (``bits`` per frame coefficient, so
``bits * D' / d`` bits per coordinate). The server sums decoded coefficients and applies
one inverse transform. The frame is one ``D'``-long transform, not the chunked
:class:`~quicdesign.rotation.RotationLayout`: chunking would put all the redundancy in
the padded chunks and leave the others without any.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import (
    check_int,
    check_minmax_magnitude,
    check_positive_float,
    check_probability,
)
from ..errors import ParameterError
from ..randomness import rotation_signs
from ..rotation import exact_order_fwht, fwht
from ..stages import Pipeline, Stage
from ._common import PipelineCompressor, euclidean_norm
from .base import CompressorProperties
from .sq import MinMaxQuantize

__all__ = ["KashinSQ", "kashin_frame_dim", "kashin_coefficients"]

_EXACT_TOLERANCE = 1e-6
_EXACT_MAX_ITERATIONS = 64
_TF_ITERATIONS = 3
_MAX_REDUNDANCY_RATIO = 0.85


def kashin_frame_dim(dim: int) -> int:
    """Frame length ``D'``: the next power of two ``>= dim``, doubled if ``dim`` is a
    power of two or ``dim / D' > 0.85`` (so the frame has real redundancy)."""
    frame = 1 << (dim - 1).bit_length()
    if frame == dim or dim / frame > _MAX_REDUNDANCY_RATIO:
        frame *= 2
    return frame


def _forward(residual, signs):
    padded = np.zeros(signs.size, dtype=np.float64)
    padded[: residual.size] = residual
    padded *= signs
    # the client's transforms are BLAS-free so its bytes do not depend on the CPU
    return exact_order_fwht(padded)


def _inverse(coefficients, signs, dim, transform=exact_order_fwht):
    transformed = transform(coefficients)
    transformed *= signs
    return transformed[:dim]


def kashin_coefficients(x, signs, *, variant="exact", eta=0.9, delta=1.0):
    """Kashin coefficients ``a`` of ``x`` in the frame given by ``signs``.

    Parameters
    ----------
    x : numpy.ndarray
        1-D finite vector of length ``d``.
    signs : numpy.ndarray
        float64 ``+-1`` array of length ``kashin_frame_dim(d)``.
    variant : {"exact", "tf"}
        See the module docstring.
    eta, delta : float
        Level decay ``0 < eta <= 1`` and initial level parameter ``delta > 0``.

    Returns
    -------
    numpy.ndarray
        float64 coefficients of length ``signs.size``.
    """
    residual = np.array(x, dtype=np.float64)
    dim, frame = residual.size, signs.size
    norm = euclidean_norm(residual)
    coefficients = np.zeros(frame, dtype=np.float64)
    if norm == 0.0:
        return coefficients
    level = norm / math.sqrt(delta * frame)
    iterations = _TF_ITERATIONS if variant == "tf" else _EXACT_MAX_ITERATIONS
    for _ in range(iterations):
        clipped = np.clip(_forward(residual, signs), -level, level)
        coefficients += clipped
        residual -= _inverse(clipped, signs, dim)
        level *= eta
        if variant == "exact" and euclidean_norm(residual) <= _EXACT_TOLERANCE * norm:
            break
    if variant == "exact":
        # the unclipped remainder makes the representation exact whatever the frame
        coefficients += _forward(residual, signs)
    return coefficients


class KashinFrame(Stage):
    """Kashin coefficients in the round's shared frame; synthesis is the inverse.

    Computing the coefficients is not linear, but synthesis (``_inverse``) is, with the
    same frame for every client of a round: the server sums coefficients and
    synthesizes once, so the stage commutes with sum.
    """

    commutes_with_sum = True

    def __init__(self, variant, eta, delta):
        self.variant = variant
        self.eta = eta
        self.delta = delta

    @staticmethod
    def _signs(state, frame):
        key = ("kashin signs", frame)
        signs = state.cache.get(key)
        if signs is None:
            signs = state.cache[key] = rotation_signs(state.round_seed, frame, np.float64)
        return signs

    def apply(self, x, state):
        signs = self._signs(state, kashin_frame_dim(x.size))
        # the coefficients are positively homogeneous in x: compute them for x scaled by a
        # power of two (exact) so the transforms cannot overflow, then scale back
        largest = float(np.max(np.abs(x)))
        exponent = math.frexp(largest)[1] if largest > 0 else 0
        scaled = np.ldexp(x.astype(np.float64), -exponent)
        coefficients = kashin_coefficients(
            scaled, signs, variant=self.variant, eta=self.eta, delta=self.delta
        )
        check_minmax_magnitude(coefficients, exponent)  # before ldexp can flush it to 0
        with np.errstate(over="ignore"):
            coefficients = np.ldexp(coefficients, exponent)
        return coefficients, None

    def invert(self, y, side, state, dim):
        # the server sums first, so its one synthesis per round may use the BLAS transform
        y = np.asarray(y, dtype=np.float64)
        return _inverse(y, self._signs(state, y.size), dim, transform=fwht)

    def output_dim(self, dim):
        return kashin_frame_dim(dim)


class KashinSQ(PipelineCompressor):
    """Kashin representation in a round-shared Hadamard frame, then min-max SQ.

    Parameters
    ----------
    bits : int
        Bits per frame coefficient, 1..16.
    variant : {"exact", "tf"}
        ``"exact"`` (unbiased) or ``"tf"`` (3 iterations, biased).
    eta : float
        Level decay per iteration, ``0 < eta <= 1``.
    delta : float
        Initial level ``||x|| / sqrt(delta D')``, ``delta > 0``.
    """

    name = "kashin"
    magic = b"QDKS"

    def __init__(self, bits=4, variant="exact", eta=0.9, delta=1.0):
        self.bits = bits
        self.variant = variant
        self.eta = eta
        self.delta = delta

    @property
    def properties(self):
        return CompressorProperties(
            unbiased=self.variant == "exact",
            sums_before_decoding=True,
            shared_randomness=("round",),
        )

    def _config(self):
        bits = check_int(self.bits, "bits", 1, 16)
        if self.variant not in ("exact", "tf"):
            raise ParameterError(f"variant must be 'exact' or 'tf', got {self.variant!r}")
        check_probability(self.eta, "eta")
        check_positive_float(self.delta, "delta")
        # only bits changes how a payload is read
        return (bits,)

    @property
    def stages(self):
        """Kashin frame (summed over clients), then min-max SQ of the coefficients."""
        bits = self._config()[0]
        return Pipeline((KashinFrame(self.variant, self.eta, self.delta), MinMaxQuantize(bits)))
