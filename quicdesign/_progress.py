"""The one progress helper and the one BLAS-thread limiter (lab and CLI code use them).

Both depend on optional packages (tqdm, threadpoolctl) imported only when used; without
them the work runs the same, just without a bar or a thread limit.
"""

from __future__ import annotations

import contextlib
import functools
import sys

__all__ = ["progress_bar", "limit_blas_threads", "single_threaded_blas"]


class _NoBar:
    """Stands in for a tqdm bar when progress is off."""

    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def progress_bar(total, description, enabled=None):
    """A tqdm bar on stderr, or an object whose ``update`` and ``close`` do nothing.

    Parameters
    ----------
    total : int
        Number of steps.
    description : str
        Label shown before the bar.
    enabled : bool, optional
        ``None``: only when stderr is a terminal.

    Returns
    -------
    object
        Has ``update(n=1)`` and ``close()`` and is a context manager that closes it.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:  # tqdm is optional; silence is better than failing
        return _NoBar()
    return tqdm(total=total, desc=description, leave=False, file=sys.stderr)


@contextlib.contextmanager
def limit_blas_threads(limit):
    """Limit BLAS to ``limit`` threads inside the block (0 or None: leave it alone).

    Simulations and rotations are many small BLAS products, where thread hand-offs on a
    shared machine cost far more than they gain: a ``(10, 1669) @ (1669, 100)`` product
    took 50 ms with threads on a loaded 2-core machine and 0.3 ms without, and one QUIC-FL
    aggregation of 8 clients at d = 2^18 took 260-340 ms instead of 35-60 ms.
    """
    if not limit:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:  # optional: without it BLAS keeps its own setting
        yield
        return
    with threadpool_limits(limit, user_api="blas"):
        yield


def single_threaded_blas(function):
    """Decorator: run ``function`` inside ``limit_blas_threads(1)``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with limit_blas_threads(1):
            return function(*args, **kwargs)

    return wrapper
