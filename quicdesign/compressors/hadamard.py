"""Hadamard + stochastic quantization (Suresh et al., arXiv 1611.00429).

Every client of a round applies the *same* randomized Hadamard transform
(:func:`quicdesign.rotation.rotate` with the round's signs) and quantizes all
``rotated_dim`` rotated coordinates with unbiased min-max SQ (two float32 bounds). The
server decodes each client in the rotated domain, sums there and applies one inverse
rotation in ``result()``: O(n d + d log d) server work. Unbiased because SQ is unbiased
given the rotation and the inverse rotation is linear.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from .._wire import packed_size
from ..randomness import rotation_signs
from ..rotation import RotationLayout, rotate, unrotate
from ._common import BaselineCompressor, SumAggregator
from .base import CompressorProperties
from .sq import minmax_dequantize, minmax_quantize, read_minmax_side

__all__ = ["HadamardSQ"]


class _RotatedSumAggregator(SumAggregator):
    def __init__(self, compressor, dim, round_seed):
        self._layout = RotationLayout.for_dim(dim)
        super().__init__(compressor, dim, round_seed, (self._layout.rotated_dim,))
        self._signs = rotation_signs(round_seed, self._layout.rotated_dim, np.float64)

    def _contribution(self, reader, header):
        bits = self.compressor._config()[0]
        lo, hi = read_minmax_side(reader)
        codes = reader.read_codes(bits, self._layout.rotated_dim, "codes")
        return minmax_dequantize(lo, hi, codes, bits)

    def _finalize(self, mean):
        return unrotate(mean, self._signs, self._layout)


class HadamardSQ(BaselineCompressor):
    """Randomized Hadamard rotation shared by the round, then min-max SQ.

    Parameters
    ----------
    bits : int
        Bits per rotated coordinate, 1..16. Payload: header, two float32 bounds and
        ``ceil(bits * rotated_dim / 8)`` bytes, where ``rotated_dim`` is the padded
        length of :class:`quicdesign.rotation.RotationLayout`.
    """

    name = "hadamard"
    magic = b"QDHS"
    properties = CompressorProperties(
        unbiased=True, sums_before_decoding=True, shared_randomness=("round",)
    )

    def __init__(self, bits=4):
        self.bits = bits

    def _config(self):
        return (check_int(self.bits, "bits", 1, 16),)

    def _body_size(self, dim):
        return 8 + packed_size(self._config()[0], RotationLayout.for_dim(dim).rotated_dim)

    def _encode_body(self, flat, writer, *, round_seed, client_id, rng):
        bits = self._config()[0]
        layout = RotationLayout.for_dim(flat.size)
        signs = rotation_signs(round_seed, layout.rotated_dim, np.float32)
        rotated = rotate(flat, signs, layout)
        lo, hi, codes = minmax_quantize(rotated, bits, rng)
        writer.write_f32(lo)
        writer.write_f32(hi)
        writer.write_codes(codes, bits)

    def _make_aggregator(self, dim, round_seed):
        return _RotatedSumAggregator(self, dim, round_seed)
