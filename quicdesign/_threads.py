"""The one BLAS-thread limiter (threadpoolctl when installed, otherwise a no-op)."""

import contextlib
import functools

__all__ = ["limit_blas_threads", "single_threaded_blas", "blas_threads_text"]


def blas_threads_text(limit) -> str:
    """What ``limit_blas_threads(limit)`` really does here, for a benchmark's caption."""
    import importlib.util

    if not limit:
        return "default BLAS threads"
    if importlib.util.find_spec("threadpoolctl") is None:
        return "default BLAS threads (threadpoolctl missing, could not pin them)"
    return f"{limit} BLAS thread{'s' if limit > 1 else ''}"


@contextlib.contextmanager
def limit_blas_threads(limit):
    """Limit BLAS to ``limit`` threads inside the block (0 or None: leave it alone).

    Simulations and rotations are many small BLAS products, where thread hand-offs on a
    shared machine cost far more than they gain: a ``(10, 1669) @ (1669, 100)`` product
    took 50 ms with threads on a loaded 2-core machine and 0.3 ms without, and one QUIC-FL
    aggregation of 8 clients at d = 2^18 took 260-340 ms instead of 35-60 ms. Designs run
    single-threaded so that a design is reproducible bit for bit on one platform:
    threaded BLAS reductions sum in an order that depends on the thread count, and the
    optimizer amplifies the last-bit differences.
    """
    if not limit:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:  # optional: without it BLAS keeps its own setting
        yield
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield


def single_threaded_blas(function):
    """Decorator: run ``function`` inside ``limit_blas_threads(1)``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with limit_blas_threads(1):
            return function(*args, **kwargs)

    return wrapper
