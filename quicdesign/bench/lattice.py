"""``quicdesign bench lattice``: speed of the dithered lattices against scalar entropy coding.

For each bit width, the same input vectors are encoded by ``quicfl-ec`` (the scalar
entropy-coded path) and the lattice compressors, alternating so that machine load hits
both alike. Prints medians of the CPU time of one encode and of one server aggregation of
``n`` payloads (``aggregator`` + ``add`` each + ``result``, per client), and each
lattice's ratio to ``quicfl-ec``.
"""

from __future__ import annotations

import time

import numpy as np

from .._argtypes import add_progress_option, bounded_int
from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS
from .._progress import progress as reporter
from .._validate import check_int
from ..compressors import make_compressor

__all__ = ["bench_lattice", "register"]

SCHEMES = ("quicfl-ec", "lattice-e8", "lattice-d4")


def _cpu_ms(action) -> float:
    began = time.process_time()
    action()
    return 1000.0 * (time.process_time() - began)


def bench_lattice(dim=2**16, bits=(1, 2, 3, 4), clients=8, repeats=11, seed=0, progress=None):
    """Median encode and server CPU times of ``quicfl-ec`` and the lattices, with ratios.

    Returns
    -------
    list of dict
        One row per (bits, scheme): ``encode_ms``, ``server_ms_per_client``,
        ``bits_per_coordinate`` and the ratios to ``quicfl-ec``.
    """
    dim = check_int(dim, "dim", 8, BENCH_MAX_DIM)
    clients = check_int(clients, "clients", 1, BENCH_MAX_CLIENTS)
    repeats = check_int(repeats, "repeats", 1, BENCH_MAX_REPEATS)
    vectors = np.random.default_rng(seed).normal(size=(clients, dim)).astype(np.float32)
    rows = []
    print(
        f"lattice vs scalar entropy coding: d = {dim}, n = {clients}, "
        f"median CPU ms of {repeats} runs"
    )
    print(
        f"{'b':>2} {'scheme':>11} {'bits/coord':>10} {'encode ms':>10} {'x ec':>6} "
        f"{'server ms/client':>16} {'x ec':>6}"
    )
    with reporter(len(bits) * repeats, "runs", progress) as bar:
        for b in bits:
            compressors = {name: make_compressor(name, bits=b) for name in SCHEMES}
            encode = {name: [] for name in SCHEMES}
            server = {name: [] for name in SCHEMES}
            sizes = {name: [] for name in SCHEMES}
            for repeat in range(repeats + 1):  # the first run warms caches and is dropped
                for name, compressor in compressors.items():
                    payloads = []
                    times = []
                    for client, vector in enumerate(vectors):
                        began = time.process_time()
                        payloads.append(
                            compressor.encode(
                                vector, round_seed=repeat, client_id=client, rng=client
                            )
                        )
                        times.append(1000.0 * (time.process_time() - began))

                    def aggregate(comp=compressor, p=payloads, r=repeat):
                        aggregator = comp.aggregator(dim, r)
                        for payload in p:
                            aggregator.add(payload)
                        aggregator.result()

                    elapsed = _cpu_ms(aggregate)
                    if repeat:
                        encode[name].append(float(np.median(times)))
                        server[name].append(elapsed / clients)
                        sizes[name].extend(8 * len(p) / dim for p in payloads)
                if repeat:
                    bar.update()
            base_encode = float(np.median(encode["quicfl-ec"]))
            base_server = float(np.median(server["quicfl-ec"]))
            for name in SCHEMES:
                row = {
                    "bits": b,
                    "scheme": name,
                    "bits_per_coordinate": float(np.mean(sizes[name])),
                    "encode_ms": float(np.median(encode[name])),
                    "server_ms_per_client": float(np.median(server[name])),
                }
                row["encode_ratio"] = row["encode_ms"] / base_encode
                row["server_ratio"] = row["server_ms_per_client"] / base_server
                rows.append(row)
                print(
                    f"{b:>2} {name:>11} {row['bits_per_coordinate']:>10.4f} "
                    f"{row['encode_ms']:>10.2f} {row['encode_ratio']:>6.2f} "
                    f"{row['server_ms_per_client']:>16.2f} {row['server_ratio']:>6.2f}"
                )
    return rows


def _run(args) -> int:
    bench_lattice(dim=args.dim, clients=args.clients, repeats=args.repeats, progress=args.progress)
    return 0


def register(sub) -> None:
    """Add the ``lattice`` subcommand to the ``bench`` subparsers object ``sub``."""
    parser = sub.add_parser(
        "lattice", help="encode and server speed of the lattices vs scalar entropy coding"
    )
    parser.add_argument(
        "--dim",
        type=bounded_int("dim", 8, BENCH_MAX_DIM),
        default=2**16,
        help="vector length (default: 2^16)",
    )
    parser.add_argument(
        "--clients",
        type=bounded_int("clients", 1, BENCH_MAX_CLIENTS),
        default=8,
        help="payloads per aggregation (default: 8)",
    )
    parser.add_argument(
        "--repeats",
        type=bounded_int("repeats", 1, BENCH_MAX_REPEATS),
        default=11,
        help="timed runs per scheme (default: 11)",
    )
    add_progress_option(parser, "run")
    parser.set_defaults(run=_run)
