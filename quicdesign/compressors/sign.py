"""One-bit sign compression with a scale (biased).

``x_hat_j = a * sign(x_j)`` with ``a = mean |x|`` (float32) and ``sign(0) = +1``. The scale
``mean |x|`` minimizes ``||x - a sign(x)||`` over ``a`` (the scaled-sign / EF-signSGD
choice); the estimate is biased. Payload: header, ``a`` and ``d`` bits.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_f32_normal
from .._wire import packed_size
from ..stages import Pipeline, Stage
from ._common import PipelineCompressor, f32_nearest, read_f32
from .base import CompressorProperties

__all__ = ["SignSGD"]


class ScaledSign(Stage):
    """``a * sign(x)`` with ``a = mean |x|``: side information ``a`` and one bit each."""

    def apply(self, x, state):
        magnitude = np.abs(x, dtype=np.float64)
        largest = float(magnitude.max())
        # mean of |x| / max |x| cannot overflow (a plain mean of 1e308s does)
        mean = largest * float(np.mean(magnitude / largest)) if largest > 0 else 0.0
        check_f32_normal(mean, "mean |x|")
        negative = (np.signbit(x) & (x != 0)).astype(np.uint8)
        return None, (f32_nearest(mean, "mean |x|"), negative)

    def write_side(self, writer, side):
        scale, negative = side
        writer.write_f32(scale)
        writer.write_codes(negative, 1)

    def read_side(self, reader, state, dim):
        return read_f32(reader, "scale", nonnegative=True), reader.read_codes(1, dim, "signs")

    def invert(self, y, side, state, dim):
        scale, negative = side
        decoded = 1.0 - 2.0 * negative.astype(np.float64)
        decoded *= scale
        return decoded

    def side_size(self, dim, vector_dim):
        return 4 + packed_size(1, dim)

    def output_dim(self, dim):
        return 0


class SignSGD(PipelineCompressor):
    """Scaled sign: one bit per coordinate plus ``mean |x|``; biased."""

    name = "sign"
    magic = b"QDSG"
    properties = CompressorProperties(unbiased=False, sums_before_decoding=False)

    def _config(self):
        return ()

    @property
    def stages(self):
        """The scaled sign of the vector itself."""
        return Pipeline((ScaledSign(),))
