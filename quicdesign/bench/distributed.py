"""``quicdesign bench distributed``: one QUIC-FL round aggregated serially and on Dask.

Prints the serial aggregation time, the time of :func:`quicdesign.distributed.aggregate`
on a local Dask cluster (payload upload and the shard tree included), the bytes moved
(payloads to the workers, shards between workers and back), the peak resident memory of
each worker, and the per-coordinate costs the README's "Scaling out" extrapolation uses.
Needs ``quicdesign[dask]``.
"""

from __future__ import annotations

import time

import numpy as np

from .._validate import check_int
from ..codec import QuicFLAggregator, QuicFLEncoder
from ..errors import ParameterError
from ..table import load_table

__all__ = ["bench_distributed", "register"]


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux clear_refs 5) and return the current RSS in MB.

    ``getrusage`` is no use here: its maximum survives fork and exec, so a worker would
    report its parent's peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _transfer_counters(dask_worker=None) -> int:
    return int(getattr(dask_worker, "transfer_outgoing_bytes_total", 0))


def _serial_seconds(table, round_seed, dim, payloads) -> float:
    began = time.perf_counter()
    aggregator = QuicFLAggregator(table, round_seed, dim)
    for payload in payloads:
        aggregator.add(payload)
    aggregator.result()
    return time.perf_counter() - began


def bench_distributed(dim=2**22, clients=64, bits=2, workers=2, repeats=3, seed=0, progress=None):
    """Measure one round serially and on ``workers`` local Dask workers; print figures.

    Parameters
    ----------
    dim, clients, bits : int
        Vector length, number of clients, and the default table's bit width.
    workers : int
        Dask workers (one thread each).
    repeats : int
        Timed repetitions (medians reported; peak memory is over all of them).
    seed : int
        Seed of the synthetic client vectors.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per client encoded
        elsewhere.

    Returns
    -------
    dict
        The printed figures.
    """
    from distributed import Client, LocalCluster

    from .._limits import BENCH_MAX_VALUES
    from .._progress import progress as reporter
    from ..distributed import _combine, aggregate, scatter

    if check_int(clients, "clients", 1) * check_int(dim, "dim", 1) > BENCH_MAX_VALUES:
        raise ParameterError(
            f"clients * dim = {clients * dim} exceeds {BENCH_MAX_VALUES} coordinates per round"
        )
    check_int(workers, "workers", 1, 64)
    check_int(repeats, "repeats", 1)
    table = load_table(bits)
    round_seed = seed + 2**40
    encoder = QuicFLEncoder(table, round_seed)
    rng = np.random.default_rng(seed)
    payloads = []
    with reporter(clients, "encoding", progress, unit="client") as bar:
        for client in range(clients):
            vector = rng.normal(size=dim).astype(np.float32)
            payloads.append(encoder.encode(vector, client, rng=client))
            bar.update()
    payload_bytes = sum(len(p) for p in payloads)
    serial = float(
        np.median([_serial_seconds(table, round_seed, dim, payloads) for _ in range(repeats)])
    )
    halves = [QuicFLAggregator(table, round_seed, dim) for _ in range(2)]
    for client, payload in enumerate(payloads):
        halves[client % 2].add(payload)
    reference = halves[0].merged(halves[1])
    expected = reference.result()
    shard_bytes = len(reference.to_bytes())
    # One combine step of the tree: read and check two shards, add, write one.
    shards = [half.to_bytes() for half in halves]
    combine = []
    for _ in range(repeats):
        began = time.perf_counter()
        _combine(table, round_seed, dim, None, *shards)
        combine.append(time.perf_counter() - began)

    import dask

    with (
        # Dask's statistical profiler wakes every 10 ms and fights the numpy thread for the
        # GIL; on a busy machine that slowed each worker ~1.5x. Off for a clean timing.
        dask.config.set({"distributed.worker.profile.enabled": False}),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        idle_mb = client.run(_reset_peak_rss)
        with_upload, resident = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            placed = scatter(payloads, client=client)
            uploaded = time.perf_counter()
            result = aggregate(placed, table, round_seed, dim, client=client)
            resident.append(time.perf_counter() - uploaded)
            with_upload.append(time.perf_counter() - began)
            del placed
        error = float(np.max(np.abs(result.result() - expected)))
        peak_mb = client.run(_peak_rss_mb)
        between = sum(client.run(_transfer_counters).values()) // repeats
    # Per round: payloads go up once; each of the `workers` leaf shards and the tree's
    # combined shards travel once (to a combiner or to the caller): 2 * workers - 1.
    shards_moved = (2 * workers - 1) * shard_bytes
    figures = {
        "dim": dim,
        "clients": clients,
        "bits": bits,
        "workers": workers,
        "serial_s": serial,
        "distributed_s": float(np.median(resident)),
        "distributed_with_upload_s": float(np.median(with_upload)),
        "payload_bytes": payload_bytes,
        "shard_bytes": shard_bytes,
        "shard_bytes_moved": shards_moved,
        "between_workers_bytes": between,
        "idle_rss_mb": [idle_mb[w] for w in sorted(idle_mb)],
        "peak_rss_mb": [peak_mb[w] for w in sorted(idle_mb)],
        "max_error": error,
        "serial_ns_per_coord_client": serial / (dim * clients) * 1e9,
        "combine_s": float(np.median(combine)),
    }
    _print(figures, repeats)
    return figures


def _print(f, repeats) -> None:
    mb = 1 / 2**20
    print(
        f"QUIC-FL round, d = {f['dim']}, n = {f['clients']} clients, b = {f['bits']}, "
        f"median of {repeats}"
    )
    print(f"serial aggregation        {f['serial_s']:8.2f} s")
    print(
        f"{f['workers']} Dask workers (1 thread) {f['distributed_s']:8.2f} s  "
        f"(speed-up {f['serial_s'] / f['distributed_s']:.2f}x; payloads already on the workers)"
    )
    print(
        f"  with the upload          {f['distributed_with_upload_s']:8.2f} s  "
        "(payloads sent from this process first)"
    )
    print(f"payloads to the workers   {f['payload_bytes'] * mb:8.1f} MB")
    print(
        f"shards moved (at most)    {f['shard_bytes_moved'] * mb:8.1f} MB  "
        f"({f['shard_bytes'] * mb:.1f} MB each; between workers measured by Dask: "
        f"{f['between_workers_bytes'] * mb:.1f} MB)"
    )
    print(
        "peak RSS per worker       "
        + ", ".join(f"{v:.0f}" for v in f["peak_rss_mb"])
        + " MB  (idle: "
        + ", ".join(f"{v:.0f}" for v in f["idle_rss_mb"])
        + " MB)"
    )
    print(
        f"serial cost               {f['serial_ns_per_coord_client']:8.2f} ns per coordinate "
        "and client"
    )
    print(
        f"one combine step          {f['combine_s']:8.2f} s  (2 shards read and checked, "
        "added, 1 written)"
    )
    print(f"max |distributed - serial| {f['max_error']:.2e}")


def _run(args) -> int:
    bench_distributed(
        dim=args.dim,
        clients=args.clients,
        bits=args.bits,
        workers=args.workers,
        repeats=args.repeats,
        progress=args.progress,
    )
    return 0


def register(sub) -> None:
    """Add the ``distributed`` subcommand to the ``bench`` subparsers object ``sub``."""
    from .._argtypes import add_progress_option, bounded_int
    from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS

    parser = sub.add_parser(
        "distributed",
        help="one round aggregated serially and on local Dask workers (needs quicdesign[dask])",
    )
    parser.add_argument(
        "--dim",
        type=bounded_int("dim", 1, BENCH_MAX_DIM),
        default=2**22,
        help="vector length (default: 2^22)",
    )
    parser.add_argument(
        "--clients",
        type=bounded_int("clients", 1, BENCH_MAX_CLIENTS),
        default=64,
        help="clients in the round (default: 64)",
    )
    parser.add_argument(
        "--bits", type=bounded_int("bits", 1, 8), default=2, help="message bits (default: 2)"
    )
    parser.add_argument(
        "--workers",
        type=bounded_int("workers", 1, 64),
        default=2,
        help="local Dask worker processes, one thread each (default: 2)",
    )
    parser.add_argument(
        "--repeats",
        type=bounded_int("repeats", 1, BENCH_MAX_REPEATS),
        default=3,
        help="timed repetitions, medians reported (default: 3)",
    )
    add_progress_option(parser, "step")
    parser.set_defaults(run=_run)
