"""One-bit sign compression with a scale (biased).

``x_hat_j = a * sign(x_j)`` with ``a = mean |x|`` (float32) and ``sign(0) = +1``. The scale
``mean |x|`` minimizes ``||x - a sign(x)||`` over ``a`` (the scaled-sign / EF-signSGD
choice); the estimate is biased. Payload: header, ``a`` and ``d`` bits.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_f32_normal
from .._wire import packed_size
from ._common import BaselineCompressor, f32_nearest, read_f32
from .base import CompressorProperties

__all__ = ["SignSGD"]


class SignSGD(BaselineCompressor):
    """Scaled sign: one bit per coordinate plus ``mean |x|``; biased."""

    name = "sign"
    magic = b"QDSG"
    properties = CompressorProperties(unbiased=False, sums_before_decoding=False)

    def _config(self):
        return ()

    def _body_size(self, dim):
        return 4 + packed_size(1, dim)

    def _encode_body(self, flat, writer, *, round_seed, client_id, rng):
        magnitude = np.abs(flat, dtype=np.float64)
        largest = float(magnitude.max())
        # mean of |x| / max |x| cannot overflow (a plain mean of 1e308s does)
        mean = largest * float(np.mean(magnitude / largest)) if largest > 0 else 0.0
        check_f32_normal(mean, "mean |x|")
        writer.write_f32(f32_nearest(mean, "mean |x|"))
        writer.write_codes((np.signbit(flat) & (flat != 0)).astype(np.uint8), 1)

    def _decode_body(self, reader, header, round_seed):
        scale = read_f32(reader, "scale", nonnegative=True)
        negative = reader.read_codes(1, header.dim, "signs")
        decoded = 1.0 - 2.0 * negative.astype(np.float64)
        decoded *= scale
        return decoded
