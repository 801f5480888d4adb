"""Hadamard + stochastic quantization (Suresh et al., arXiv 1611.00429).

Every client of a round applies the *same* randomized Hadamard transform
(:func:`quicdesign.rotation.rotate` with the round's signs) and quantizes all
``rotated_dim`` rotated coordinates with unbiased min-max SQ (two float32 bounds). As a
pipeline of stages, ``RandomizedHadamard`` (commutes with sum) then ``MinMaxQuantize``:
the server decodes each client in the rotated domain, sums there and applies one inverse
rotation in ``result()``: O(n d + d log d) server work. Unbiased because SQ is unbiased
given the rotation and the inverse rotation is linear.
"""

from __future__ import annotations

from .._validate import check_int
from ..stages import Pipeline, RandomizedHadamard
from ._common import PipelineCompressor
from .base import CompressorProperties
from .sq import MinMaxQuantize

__all__ = ["HadamardSQ"]


class HadamardSQ(PipelineCompressor):
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

    @property
    def stages(self):
        """Shared rotation (summed over clients), then min-max SQ of its output."""
        return Pipeline((RandomizedHadamard(), MinMaxQuantize(self._config()[0])))
