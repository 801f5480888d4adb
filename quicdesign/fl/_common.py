"""Seed streams of the simulators (one per run, direction and round)."""

from __future__ import annotations

import operator
import zlib

import numpy as np

from quicdesign._validate import check_int

__all__ = [
    "stream_seed",
    "generator",
]

_UINT64_MASK = (1 << 64) - 1


def _label_code(label):
    # crc32 is stable across processes and Python versions, unlike hash()
    return zlib.crc32(label.encode("utf-8")) if isinstance(label, str) else operator.index(label)


def stream_seed(seed, *labels) -> int:
    """Derive a 64-bit seed from a run seed and labels (strings or integers).

    Parameters
    ----------
    seed : int
        Run seed, ``>= 0``.
    *labels : str or int
        Stream labels, e.g. ``("up", round_index)``.

    Returns
    -------
    int
        A seed in ``[0, 2**64)``, usable as ``round_seed`` of the compressor protocol.
    """
    words = np.random.SeedSequence([check_int(seed, "seed", 0), *map(_label_code, labels)])
    low, high = (int(w) for w in words.generate_state(2, np.uint32))
    return (high << 32 | low) & _UINT64_MASK


def generator(seed, *labels) -> np.random.Generator:
    """A numpy ``Generator`` for one independent stream of a run (private randomness)."""
    return np.random.default_rng(stream_seed(seed, *labels))
