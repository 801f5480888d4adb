"""Compressors on one protocol: QUIC-FL and the baselines it is compared with.

Every compressor encodes a client vector to real payload bytes and has a server-side
aggregator (``add``, ``merge``, ``result``); see :mod:`quicdesign.compressors.base`.
:data:`COMPRESSORS` maps short names to constructors and :func:`make_compressor` builds
one by name, e.g. ``make_compressor("eden", bits=2)``.
"""

from __future__ import annotations

from ..errors import ParameterError
from .base import Aggregator, Compressor, CompressorProperties
from .cossgd import CosSGD
from .countsketch import CountSketch
from .eden import DRIVE, EDEN, lloyd_max_normal
from .hadamard import HadamardSQ
from .kashin import KashinSQ
from .lattice import LatticeD4, LatticeE8
from .quicfl import QuicFL, QuicFLDirect, QuicFLEntropy
from .randk import RandK
from .sign import SignSGD
from .sq import QSGD, StochasticQuantizer

__all__ = [
    "Aggregator",
    "Compressor",
    "CompressorProperties",
    "COMPRESSORS",
    "make_compressor",
    "CosSGD",
    "CountSketch",
    "DRIVE",
    "EDEN",
    "HadamardSQ",
    "KashinSQ",
    "LatticeD4",
    "LatticeE8",
    "QSGD",
    "QuicFL",
    "QuicFLDirect",
    "QuicFLEntropy",
    "RandK",
    "SignSGD",
    "StochasticQuantizer",
    "lloyd_max_normal",
]

#: Short name -> constructor (called with keyword parameters).
COMPRESSORS = {
    "sq": StochasticQuantizer,
    "qsgd": QSGD,
    "hadamard": HadamardSQ,
    "kashin": KashinSQ,
    "eden": EDEN,
    "drive": DRIVE,
    "countsketch": CountSketch,
    "cossgd": CosSGD,
    "sign": SignSGD,
    "randk": RandK,
}
COMPRESSORS["quicfl"] = QuicFL
COMPRESSORS["quicfl-ec"] = QuicFLEntropy
COMPRESSORS["quicfl-direct"] = QuicFLDirect
COMPRESSORS["lattice-e8"] = LatticeE8
COMPRESSORS["lattice-d4"] = LatticeD4


def make_compressor(name, **params) -> Compressor:
    """Build the compressor registered as ``name`` with keyword ``params``.

    Raises
    ------
    ParameterError
        If ``name`` is not in :data:`COMPRESSORS`.
    """
    try:
        factory = COMPRESSORS[name]
    except (KeyError, TypeError):
        raise ParameterError(
            f"unknown compressor {name!r}; available: {', '.join(sorted(COMPRESSORS))}"
        ) from None
    return factory(**params)
