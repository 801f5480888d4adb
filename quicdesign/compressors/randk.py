"""Rand-k sparsification with unbiased ``d / k`` scaling.

The ``k`` kept coordinates come from the per-client shared stream
``(round_seed, client_id, "randk")``, so the server regenerates them and only the values
travel: header plus ``k`` float32 values (``32 k / d`` bits per coordinate). Selection
rule: draw ``d`` raw 64-bit words and keep the indices of the ``k`` smallest words
(ties broken by index), in increasing index order. The server decodes
``x_hat_j = (d / k) x_j`` on those indices and 0 elsewhere: unbiased because every
coordinate is kept with probability ``k / d``.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import MAX_DIM, check_int
from ..errors import ParameterError
from ..randomness import raw_words
from ..stages import Pipeline, Stage
from ._common import Float32Values, PipelineCompressor
from .base import CompressorProperties

__all__ = ["RandK", "PURPOSE_RANDK", "randk_indices"]

PURPOSE_RANDK = "randk"
_DEFAULT_FRACTION = 1 / 32


def randk_indices(round_seed, client_id, dim, k):
    """Sorted indices of the ``k`` smallest words of the client's ``"randk"`` stream."""
    if k >= dim:
        return np.arange(dim)
    words = raw_words(round_seed, client_id, PURPOSE_RANDK, dim)
    chosen = np.argpartition(words, k - 1)[:k]
    kth = words[chosen].max()
    if np.count_nonzero(words == kth) > 1:
        # a tie at the cut (probability ~ d / 2**64) would make argpartition's pick
        # implementation-defined; a stable sort breaks it by index
        chosen = np.argsort(words, kind="stable")[:k]
    return np.sort(chosen)


def _kept(kind, value, dim):
    if kind == "k":
        return min(value, dim)
    return min(dim, max(1, math.ceil(value * dim)))


class RandKSelect(Stage):
    """Keep the client's ``k`` shared-random coordinates; the server scatters them back
    scaled by ``d / k``. Per client: the kept indices are the client's own.

    Parameters
    ----------
    kind, value
        ``("k", k)`` or ``("fraction", fraction)``, validated by :class:`RandK`.
    """

    def __init__(self, kind, value):
        self.kind = kind
        self.value = value

    def apply(self, x, state):
        k = _kept(self.kind, self.value, x.size)
        return x[randk_indices(state.round_seed, state.client_id, x.size, k)], None

    def invert(self, y, side, state, dim):
        k = _kept(self.kind, self.value, dim)
        decoded = np.zeros(dim, dtype=np.float64)
        decoded[randk_indices(state.round_seed, state.client_id, dim, k)] = y
        decoded *= dim / k
        return decoded

    def output_dim(self, dim):
        return _kept(self.kind, self.value, dim)


class RandK(PipelineCompressor):
    """Keep ``k`` shared-random coordinates, scaled by ``d / k`` at the server.

    Parameters
    ----------
    k : int, optional
        Coordinates kept (capped at ``d``). Give ``k`` or ``fraction``, not both.
    fraction : float, optional
        ``k = max(1, ceil(fraction * d))``, ``0 < fraction <= 1``; 1/32 when neither
        is given (about one bit per coordinate).
    """

    name = "randk"
    magic = b"QDRK"
    properties = CompressorProperties(
        unbiased=True, sums_before_decoding=False, shared_randomness=("client",)
    )

    def __init__(self, k=None, fraction=None):
        self.k = k
        self.fraction = fraction

    def _config(self):
        if self.k is not None and self.fraction is not None:
            raise ParameterError("give k or fraction, not both")
        if self.k is not None:
            return ("k", check_int(self.k, "k", 1, MAX_DIM))
        fraction = _DEFAULT_FRACTION if self.fraction is None else self.fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not (0 < fraction <= 1)
        ):
            raise ParameterError(f"fraction must be in (0, 1], got {fraction!r}")
        return ("fraction", float(fraction))

    def kept(self, dim):
        """Number of coordinates kept for a ``dim``-long vector."""
        return _kept(*self._config(), dim)

    @property
    def stages(self):
        """The client's coordinates, then their float32 values."""
        return Pipeline((RandKSelect(*self._config()), Float32Values("kept values")))
