"""Seeds, argument checks and progress reporting shared by the simulators."""

from __future__ import annotations

import operator
import zlib

import numpy as np

from quicdesign._progress import progress_bar
from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int as _shared_check_int
from quicdesign.errors import ParameterError

__all__ = [
    "stream_seed",
    "generator",
    "check_int",
    "check_positive_float",
    "check_probability",
    "progress_bar",
    "single_threaded_blas",
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


check_int = _shared_check_int


def check_positive_float(value, name, *, allow_zero=False) -> float:
    """Return ``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ParameterError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_probability(value, name, *, allow_zero=False) -> float:
    """Return ``value`` as a float in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``)."""
    value = check_positive_float(value, name, allow_zero=allow_zero)
    if value > 1:
        raise ParameterError(f"{name} must be at most 1, got {value}")
    return value
