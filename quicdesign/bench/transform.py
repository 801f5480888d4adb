"""Timing of the Hadamard transform and the rotation built on it."""

import functools
import statistics
import time

import numpy as np

from quicdesign._limits import BENCH_MAX_DIM, BENCH_MAX_REPEATS
from quicdesign._validate import check_int
from quicdesign.randomness import rotation_signs
from quicdesign.rotation import RotationLayout, exact_order_fwht, fwht, rotate, unrotate

__all__ = ["bench_transform"]


def _median_seconds(run, repeats, clock=time.perf_counter):
    run()  # warm caches (Hadamard blocks, BLAS threads, page faults) before timing
    timings = []
    for _ in range(repeats):
        start = clock()
        run()
        timings.append(clock() - start)
    return statistics.median(timings)


def bench_transform(dims=(2**16, 2**18, 2**20), repeats=7):
    """Time ``fwht`` and the encoder's BLAS-free ``exact_order_fwht`` (float32, float64,
    with their ratio) and ``rotate``/``unrotate`` (float32), and print it.

    Parameters
    ----------
    dims : sequence of int
        Vector lengths. ``fwht`` runs on the next power of two ``>= d``; rotations use
        ``RotationLayout.for_dim(d)``.
    repeats : int
        Timed runs per measurement; the median is reported.

    Returns
    -------
    list of dict
        One dict per measurement with keys ``op``, ``dtype``, ``dim``, ``median_ms`` and
        ``mcoord_per_s`` (millions of input coordinates per second).
    """
    dims = [check_int(d, "dim", 1, BENCH_MAX_DIM) for d in dims]
    repeats = check_int(repeats, "repeats", 1, BENCH_MAX_REPEATS)
    rng = np.random.default_rng(0)
    results = []

    def record(op, dtype, dim, seconds):
        row = {
            "op": op,
            "dtype": np.dtype(dtype).name,
            "dim": dim,
            "median_ms": seconds * 1e3,
            "mcoord_per_s": dim / seconds / 1e6,
        }
        results.append(row)
        print(
            f"{op:>9} {row['dtype']:>8} d={dim:>9}  {row['median_ms']:9.3f} ms  "
            f"{row['mcoord_per_s']:8.1f} Mcoord/s"
        )

    for d in dims:
        padded = 1 << (d - 1).bit_length()
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(padded).astype(dtype)
            out = np.empty_like(x)
            run = functools.partial(fwht, x, out=out)
            blas = _median_seconds(run, repeats)
            record("fwht", dtype, padded, blas)
            # the encoder's BLAS-free transform: same bytes on every CPU, at this cost
            exact = _median_seconds(functools.partial(exact_order_fwht, x), repeats)
            record("exact", dtype, padded, exact)
            print(f"{'':>9} {np.dtype(dtype).name:>8} exact / fwht = {exact / blas:.2f}x")
        layout = RotationLayout.for_dim(d)
        signs = rotation_signs(0, layout.rotated_dim)
        x = rng.standard_normal(d).astype(np.float32)
        v = rotate(x, signs, layout)
        run = functools.partial(rotate, x, signs, layout)
        record("rotate", np.float32, d, _median_seconds(run, repeats))
        run = functools.partial(unrotate, v, signs, layout)
        record("unrotate", np.float32, d, _median_seconds(run, repeats))
    return results
