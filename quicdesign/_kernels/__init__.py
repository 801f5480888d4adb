"""Optional compiled kernels (numba, the ``fast`` extra), chosen automatically.

:func:`compiled_kernels` returns the numba kernels module when numba imports and
``QUICDESIGN_KERNELS`` is not ``numpy``; callers fall back to their numpy code otherwise.
Every kernel reproduces its numpy counterpart bit for bit (``tests/test_kernels.py``), so
the choice changes speed only. numba is imported on first use, never by
``import quicdesign``; kernels compile once and are cached on disk (``cache=True``).
"""

from __future__ import annotations

import functools
import importlib
import os

__all__ = ["compiled_kernels", "KERNELS_ENV"]

#: Environment variable: ``numpy`` switches the compiled kernels off (default ``auto``).
KERNELS_ENV = "QUICDESIGN_KERNELS"


def compiled_kernels():
    """The compiled kernels module, or None (numba missing or ``QUICDESIGN_KERNELS=numpy``)."""
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower()
    if choice == "numpy":
        return None
    return _load()


@functools.cache
def _load():
    try:
        return importlib.import_module("quicdesign._kernels._numba")
    except ImportError:
        return None
