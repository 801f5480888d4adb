"""Count-Sketch (as used in FL by FetchSGD, arXiv 2007.07682).

An ``rows x columns`` table ``S``. Every client of a round uses the same hashes, so
sketches add: ``S[r, h_r(j)] += s_r(j) x_j``. The server sums the (weighted) sketches and
estimates ``x_hat_j = mean_r s_r(j) S[r, h_r(j)]`` (unbiased over the hashes) or the
median over rows (biased, more robust to heavy hitters).

Hash rule (round-shared stream ``(round_seed, 0, "countsketch")``): raw word
``w = word[r * dim + j]`` gives the bucket ``h_r(j) = ((w >> 32) * columns) >> 32``
(multiply-shift of the high 32 bits, no modulo) and the sign ``s_r(j) = +1`` if
``w & 1 == 0`` else ``-1``.

Payload: header and ``rows * columns`` float32 sketch values (``32 rows columns`` bits).
"""

from __future__ import annotations

import functools

import numpy as np

from .._validate import MAX_DIM, check_int
from ..errors import ParameterError
from ..randomness import raw_words
from ..stages import Pipeline, Stage
from ._common import Float32Values, PipelineCompressor
from .base import CompressorProperties

__all__ = ["CountSketch", "PURPOSE_COUNTSKETCH", "sketch_hashes"]

PURPOSE_COUNTSKETCH = "countsketch"
_DEFAULT_COLUMN_RATIO = 32


@functools.lru_cache(maxsize=2)
def sketch_hashes(round_seed, dim, rows, columns):
    """Flat table indices ``r * columns + h_r(j)`` and signs ``s_r(j)``, shape (rows, dim).

    Returns read-only arrays (``intp`` indices, ``int8`` signs); cached for the last
    two ``(round, dim, rows, columns)`` so a server reuses them across clients.
    """
    words = raw_words(round_seed, 0, PURPOSE_COUNTSKETCH, rows * dim).reshape(rows, dim)
    buckets = ((words >> np.uint64(32)) * np.uint64(columns)) >> np.uint64(32)
    index = buckets.astype(np.intp)
    index += (np.arange(rows, dtype=np.intp) * columns)[:, None]
    signs = (1 - 2 * (words & np.uint64(1)).astype(np.int8)).astype(np.int8)
    index.flags.writeable = False
    signs.flags.writeable = False
    return index, signs


class SketchStage(Stage):
    """Count-Sketch with the round's hashes: linear and the same for every client, so
    the server sums sketches and estimates once.

    The mean estimate commutes with sum. The median estimate does not (it is not
    linear), but the scheme defines its aggregate as the median estimate of the summed
    sketch, so the server still sums first (``sums_before_invert``).

    Parameters
    ----------
    rows, columns, estimator
        As for :class:`CountSketch` (validated there; ``columns`` None for ``ceil(d/32)``).
    """

    sums_before_invert = True

    def __init__(self, rows, columns, estimator):
        self.rows = rows
        self.columns = columns
        self.estimator = estimator
        self.commutes_with_sum = estimator == "mean"

    def _columns(self, dim):
        return -(-dim // _DEFAULT_COLUMN_RATIO) if self.columns is None else int(self.columns)

    def apply(self, x, state):
        rows, columns = self.rows, self._columns(x.size)
        index, signs = sketch_hashes(state.round_seed, x.size, rows, columns)
        signed = signs * x.astype(np.float64)[None, :]
        sketch = np.bincount(
            index.reshape(-1), weights=signed.reshape(-1), minlength=rows * columns
        )
        return sketch, None

    def invert(self, y, side, state, dim):
        index, signs = sketch_hashes(state.round_seed, dim, self.rows, self._columns(dim))
        estimates = y[index]
        estimates *= signs
        if self.estimator == "median":
            return np.median(estimates, axis=0)
        return estimates.mean(axis=0)

    def output_dim(self, dim):
        return self.rows * self._columns(dim)


class CountSketch(PipelineCompressor):
    """Count-Sketch with round-shared hashes; sketches are summed by the server.

    Parameters
    ----------
    rows : int
        Number of hash rows, 1..64.
    columns : int, optional
        Buckets per row; ``ceil(d / 32)`` when omitted (the QUIC-FL harness setting).
    estimator : {"mean", "median"}
        ``"mean"`` is unbiased; ``"median"`` is biased and its ``result()`` is the
        median estimate of the averaged sketch, not an average of per-client decodes.
    """

    name = "countsketch"
    magic = b"QDCS"

    def __init__(self, rows=3, columns=None, estimator="mean"):
        self.rows = rows
        self.columns = columns
        self.estimator = estimator

    @property
    def properties(self):
        return CompressorProperties(
            unbiased=self.estimator == "mean",
            sums_before_decoding=True,
            shared_randomness=("round",),
        )

    @property
    def linear_aggregate(self):
        """Whether ``result()`` is the weighted mean of single-payload decodes."""
        return self.estimator == "mean"

    def _config(self):
        rows = check_int(self.rows, "rows", 1, 64)
        if self.columns is not None:
            check_int(self.columns, "columns", 1, MAX_DIM // rows)
        if self.estimator not in ("mean", "median"):
            raise ParameterError(f"estimator must be 'mean' or 'median', got {self.estimator!r}")
        return rows, self.columns

    @property
    def stages(self):
        """The sketch (summed over clients), then its float32 values."""
        rows, columns = self._config()
        sketch = SketchStage(rows, columns, self.estimator)
        return Pipeline((sketch, Float32Values("sketch values")))
