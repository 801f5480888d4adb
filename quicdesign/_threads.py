"""The one BLAS-thread limiter (threadpoolctl when installed, otherwise a no-op)."""

import functools

__all__ = ["single_threaded_blas"]


def single_threaded_blas(function):
    """Run ``function`` with BLAS limited to one thread (when threadpoolctl is installed).

    Simulations are many tiny matrix products, where BLAS threads cost far more than they
    gain: a ``(10, 1669) @ (1669, 100)`` product took 50 ms with threads on a loaded
    2-core machine and 0.3 ms without. Designs run single-threaded so that a design is
    reproducible bit for bit on one platform: threaded BLAS reductions sum in an order that
    depends on the thread count, and the optimizer amplifies the last-bit differences.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ModuleNotFoundError:  # optional: without it BLAS keeps its own setting
            return function(*args, **kwargs)
        with threadpool_limits(1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper
