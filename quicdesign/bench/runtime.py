"""Runtime benchmark: QUIC-FL encode and server aggregation at large d.

Prints, per bit width: median encode time per vector, aggregation time for ``n`` clients
(one inverse transform at the end), the same clients decoded the naive way (an inverse
transform per client, as the reference implementation does), throughput and measured
bytes per coordinate. A second table sets the times against the machine's limits measured
in the same run: the memory-copy floor (a 64 MiB copy gives the bandwidth; the encode floor
is one read and one write of the float32 input, the aggregation floor one read and one write
of the float64 accumulator), a numpy sort of the input, and ``add_many`` and encode on the
numpy and the compiled (numba) paths. BLAS is pinned to one thread by default: on a small shared
machine BLAS threads fight each other and the figures become noise.
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np

from .._kernels import KERNELS_ENV, compiled_kernels
from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS, BENCH_MAX_VALUES
from .._progress import progress as reporter
from .._threads import blas_threads_text, limit_blas_threads
from .._validate import check_int
from ..codec import QuicFLAggregator, QuicFLEncoder
from ..errors import ParameterError
from ..table import list_tables, load_table
from .transform import _median_seconds

__all__ = ["bench_runtime"]


def _naive_per_client_decode(table, round_seed, dim, payloads):
    """Decode every client with its own inverse transform, then average (the baseline)."""
    total = np.zeros(dim)
    for payload in payloads:
        single = QuicFLAggregator(table, round_seed, dim)
        single.add(payload)
        total += single.result()
    return total / len(payloads)


_COPY_BYTES = 64 * 2**20


def _copy_bandwidth(repeats):
    """Bytes per second moved by a large array copy (read + write), median of runs."""
    source = np.ones(_COPY_BYTES // 8)
    target = np.empty_like(source)
    seconds = _median_seconds(lambda: np.copyto(target, source), max(repeats, 3))
    return 2 * _COPY_BYTES / seconds


def bench_runtime(
    dim=2**20,
    bits=(1, 2, 4),
    clients=16,
    repeats=5,
    seed=0,
    progress=None,
    blas_threads=1,
    shared_bits=None,
):
    """Time the QUIC-FL encoder and aggregator and print a table of figures.

    Parameters
    ----------
    dim : int
        Vector length (1..2**26).
    bits : sequence of int
        Bit widths (shipped default tables, 1..8).
    clients : int
        Number of clients aggregated (1..1024; ``clients * dim <= 2**28``).
    repeats : int
        Timed repetitions, the median is reported (1..1000).
    seed : int
        Seed of the inputs and private randomness.
    progress : bool, optional
        False: silent; otherwise a bar on a terminal, one line per timed step elsewhere.
    blas_threads : int or None
        BLAS threads while timing (default 1); None leaves BLAS as configured.
    shared_bits : sequence of int, optional
        Shared bits ``l`` of the shipped tables to time for every bit width (the default
        table only when omitted; widths without such a table are skipped).

    Returns
    -------
    list of dict
        One row of figures per bit width.

    Raises
    ------
    ParameterError
        For sizes outside these bounds, before anything is allocated.
    """
    dim = check_int(dim, "dim", 1, BENCH_MAX_DIM)
    clients = check_int(clients, "clients", 1, BENCH_MAX_CLIENTS)
    repeats = check_int(repeats, "repeats", 1, BENCH_MAX_REPEATS)
    bits = [check_int(b, "bits", 1, 8) for b in bits]
    if not bits:
        raise ParameterError("bits must name at least one bit width")
    if clients * dim > BENCH_MAX_VALUES:
        raise ParameterError(
            f"clients * dim = {clients * dim} exceeds {BENCH_MAX_VALUES} values held at once"
        )
    if blas_threads is not None:
        blas_threads = check_int(blas_threads, "blas_threads", 1, 1024)
    rng = np.random.default_rng(seed)
    vectors = rng.lognormal(size=(clients, dim)).astype(np.float32)
    with limit_blas_threads(blas_threads):
        return _bench_all(vectors, bits, repeats, seed, progress, blas_threads, shared_bits)


def _bench_all(vectors, bits, repeats, seed, progress, blas_threads, shared_bits=None):
    clients, dim = vectors.shape
    rows = []
    print(
        f"QUIC-FL runtime, d = {dim}, n = {clients} clients, float32 input, "
        f"median of {repeats} timed runs, {blas_threads_text(blas_threads)}"
    )
    header = (
        f"{'b':>2} {'l':>2} {'encode ms':>10} {'enc Mcoord/s':>12} {'agg ms (n)':>11} "
        f"{'ms/client':>9} {'agg Mcoord/s':>12} {'naive ms/client':>15} {'speedup':>7} "
        f"{'bytes/coord':>11}"
    )
    print(header, flush=True)
    available = {(e["bits"], e["shared_bits"]) for e in list_tables()}
    grid = [
        (b, shared)
        for b in bits
        for shared in (shared_bits or [None])
        if shared is None or (b, shared) in available
    ]
    with reporter(3 * len(grid), "bench runtime", progress, unit="step") as bar:
        for b, shared in grid:
            row = _bench_bits(b, vectors, repeats, seed, bar, shared)
            rows.append(row)
            _print_row(b, row)
    print(
        "reference (paper notes, PyTorch CPU): encode ~120 ms, decode ~60 ms per client at d = 2^20"
    )
    _print_limits(rows, vectors, repeats)
    return rows


def _print_limits(rows, vectors, repeats):
    """Times against the copy floor and a sort, measured now (ratios from one run)."""
    clients, dim = vectors.shape
    bandwidth = _copy_bandwidth(repeats)
    encode_floor = 2 * 4 * dim / bandwidth
    aggregate_floor = 2 * 8 * dim / bandwidth
    sort_s = _median_seconds(lambda: np.sort(vectors[0]), repeats)
    print(
        f"limits: copy {bandwidth / 1e9:.1f} GB/s -> encode floor {1e3 * encode_floor:.2f} ms, "
        f"aggregate floor {1e3 * aggregate_floor:.2f} ms/client; numpy sort of the input "
        f"{1e3 * sort_s:.2f} ms"
    )
    print(
        f"{'b':>2} {'enc/floor':>9} {'enc/sort':>8} {'add/floor':>9} "
        f"{'add_many numpy ms/client':>24} {'compiled ms/client':>18} {'/floor':>6} "
        f"{'encode numpy ms':>15} {'/floor':>6} {'compiled ms':>11} {'/floor':>6}"
    )
    for row in rows:
        compiled_text, compiled_ratio = _with_ratio(
            row["add_many_compiled_ms_per_client"], aggregate_floor
        )
        _, numpy_encode_ratio = _with_ratio(row["encode_numpy_ms"], encode_floor)
        compiled_encode, compiled_encode_ratio = _with_ratio(
            row["encode_compiled_ms"], encode_floor
        )
        row.update(
            copy_gb_s=bandwidth / 1e9,
            encode_floor_ms=1e3 * encode_floor,
            aggregate_floor_ms=1e3 * aggregate_floor,
            sort_ms=1e3 * sort_s,
        )
        print(
            f"{row['bits']:>2} {row['encode_ms'] / 1e3 / encode_floor:>9.1f} "
            f"{row['encode_ms'] / 1e3 / sort_s:>8.2f} "
            f"{row['aggregate_ms_per_client'] / 1e3 / aggregate_floor:>9.1f} "
            f"{row['add_many_numpy_ms_per_client']:>24.2f} {compiled_text:>18} "
            f"{compiled_ratio:>6} {row['encode_numpy_ms']:>15.2f} {numpy_encode_ratio:>6} "
            f"{compiled_encode:>11} {compiled_encode_ratio:>6}",
            flush=True,
        )


def _with_ratio(milliseconds, floor_seconds):
    """A time and its ratio to a floor as text ("n/a" without the compiled path)."""
    if milliseconds is None:
        return "n/a", ""
    return f"{milliseconds:.2f}", f"{milliseconds / 1e3 / floor_seconds:.1f}"


def _print_row(b, row):
    print(
        f"{b:>2} {row['shared_bits']:>2} {row['encode_ms']:>10.1f} "
        f"{row['encode_mcoord_s']:>12.1f} {row['aggregate_ms']:>11.1f} "
        f"{row['aggregate_ms_per_client']:>9.2f} {row['aggregate_mcoord_s']:>12.1f} "
        f"{row['naive_ms_per_client']:>15.2f} "
        f"{row['naive_ms_per_client'] / row['aggregate_ms_per_client']:>7.2f} "
        f"{row['bytes_per_coordinate']:>11.4f}",
        flush=True,
    )


@contextlib.contextmanager
def _kernels_choice(choice):
    previous = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(KERNELS_ENV, None)
        else:
            os.environ[KERNELS_ENV] = previous


def _both_paths(run, repeats):
    """Median seconds of ``run`` on the numpy and the compiled kernels (None: no numba)."""
    seconds = {}
    for kernels in ("numpy", "auto"):
        with _kernels_choice(kernels):
            if kernels == "auto" and compiled_kernels() is None:
                seconds[kernels] = None
                continue
            run()  # the first call compiles (or loads the numba cache); not timed
            seconds[kernels] = _median_seconds(run, repeats)
    return seconds


def _bench_bits(b, vectors, repeats, seed, bar, shared_bits=None):
    clients, dim = vectors.shape
    table = load_table(b, shared_bits)
    encoder = QuicFLEncoder(table, round_seed=1)
    private = np.random.default_rng(seed + 1)
    encode_s = _median_seconds(lambda: encoder.encode(vectors[0], 0, rng=private), repeats)
    encodes = _both_paths(lambda: encoder.encode(vectors[0], 0, rng=private), repeats)
    payloads = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    bar.update(note=f"b={b} encode")

    def aggregate():
        aggregator = QuicFLAggregator(table, 1, dim)
        for payload in payloads:
            aggregator.add(payload)
        return aggregator.result()

    aggregate_s = _median_seconds(aggregate, repeats)
    bar.update(note=f"b={b} aggregate")
    batched = _both_paths(lambda: QuicFLAggregator(table, 1, dim).add_many(payloads), repeats)
    began = time.perf_counter()
    _naive_per_client_decode(table, 1, dim, payloads)
    naive_s = time.perf_counter() - began
    bar.update(note=f"b={b} naive decode")
    return {
        "bits": b,
        "shared_bits": table.shared_bits,
        "dim": dim,
        "clients": clients,
        "encode_ms": 1e3 * encode_s,
        "encode_mcoord_s": dim / encode_s / 1e6,
        "aggregate_ms": 1e3 * aggregate_s,
        "aggregate_ms_per_client": 1e3 * aggregate_s / clients,
        "aggregate_mcoord_s": clients * dim / aggregate_s / 1e6,
        "naive_ms_per_client": 1e3 * naive_s / clients,
        "encode_numpy_ms": 1e3 * encodes["numpy"],
        "encode_compiled_ms": None if encodes["auto"] is None else 1e3 * encodes["auto"],
        "add_many_numpy_ms_per_client": 1e3 * batched["numpy"] / clients,
        "add_many_compiled_ms_per_client": (
            None if batched["auto"] is None else 1e3 * batched["auto"] / clients
        ),
        "bytes_per_coordinate": float(np.mean([len(p) for p in payloads])) / dim,
    }
