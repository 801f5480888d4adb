"""Runtime benchmark: QUIC-FL encode and server aggregation at large d.

Prints, per bit width: median encode time per vector, aggregation time for ``n`` clients
(one inverse transform at the end), the same clients decoded the naive way (an inverse
transform per client, as the reference implementation does), throughput and measured
bytes per coordinate.
"""

from __future__ import annotations

import time

import numpy as np

from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS, BENCH_MAX_VALUES
from .._progress import progress as reporter
from .._validate import check_int
from ..codec import QuicFLAggregator, QuicFLEncoder
from ..errors import ParameterError
from ..table import load_table
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


def bench_runtime(dim=2**20, bits=(1, 2, 4), clients=16, repeats=5, seed=0, progress=None):
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
    rng = np.random.default_rng(seed)
    vectors = rng.lognormal(size=(clients, dim)).astype(np.float32)
    rows = []
    print(f"QUIC-FL runtime, d = {dim}, n = {clients} clients, float32 input, median of {repeats}")
    header = (
        f"{'b':>2} {'l':>2} {'encode ms':>10} {'enc Mcoord/s':>12} {'agg ms (n)':>11} "
        f"{'ms/client':>9} {'agg Mcoord/s':>12} {'naive ms/client':>15} {'speedup':>7} "
        f"{'bytes/coord':>11}"
    )
    print(header, flush=True)
    with reporter(3 * len(bits), "bench runtime", progress, unit="step") as bar:
        for b in bits:
            row = _bench_bits(b, vectors, repeats, seed, bar)
            rows.append(row)
            _print_row(b, row)
    print(
        "reference (paper notes, PyTorch CPU): encode ~120 ms, decode ~60 ms per client at d = 2^20"
    )
    return rows


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


def _bench_bits(b, vectors, repeats, seed, bar):
    clients, dim = vectors.shape
    table = load_table(b)
    encoder = QuicFLEncoder(table, round_seed=1)
    private = np.random.default_rng(seed + 1)
    encode_s = _median_seconds(lambda: encoder.encode(vectors[0], 0, rng=private), repeats)
    payloads = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    bar.update(note=f"b={b} encode")

    def aggregate():
        aggregator = QuicFLAggregator(table, 1, dim)
        for payload in payloads:
            aggregator.add(payload)
        return aggregator.result()

    aggregate_s = _median_seconds(aggregate, repeats)
    bar.update(note=f"b={b} aggregate")
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
        "bytes_per_coordinate": float(np.mean([len(p) for p in payloads])) / dim,
    }
