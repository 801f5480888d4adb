"""``quicdesign bench ...`` subcommands (registered by the main CLI)."""

from __future__ import annotations

import importlib

from .._argtypes import add_int_list_option, add_progress_option, bounded_int
from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS

__all__ = ["register"]


def _run_runtime(args):
    from .runtime import bench_runtime

    bench_runtime(
        dim=args.dim,
        bits=args.bits,
        clients=args.clients,
        repeats=args.repeats,
        shared_bits=args.shared_bits,
        progress=args.progress,
        blas_threads=args.blas_threads,
    )
    return 0


def _run_transform(args):
    from .transform import bench_transform

    bench_transform(dims=(args.dim,), repeats=args.repeats)
    return 0


def register(commands) -> None:
    """Add the ``bench`` command and its subcommands to an argparse subparsers object."""
    bench = commands.add_parser("bench", help="benchmarks that print figures")
    sub = bench.add_subparsers(dest="bench_command", required=True, parser_class=type(bench))
    runtime = sub.add_parser("runtime", help="QUIC-FL encode / aggregate speed")
    dim = bounded_int("dim", 1, BENCH_MAX_DIM)
    repeats = bounded_int("repeats", 1, BENCH_MAX_REPEATS)
    runtime.add_argument("--dim", type=dim, default=2**20, help="vector length (default: 2^20)")
    add_int_list_option(runtime, "--bits", "bits", 1, 8, "bit widths", "1,2,4", default=[1, 2, 4])
    runtime.add_argument(
        "--clients",
        type=bounded_int("clients", 1, BENCH_MAX_CLIENTS),
        default=16,
        help="clients aggregated (default: 16)",
    )
    runtime.add_argument("--repeats", type=repeats, default=5, help="timed runs (default: 5)")
    runtime.add_argument(
        "--blas-threads",
        type=bounded_int("blas-threads", 1, 1024),
        default=1,
        help="BLAS threads while timing (default: 1, pinned with threadpoolctl)",
    )
    add_int_list_option(
        runtime,
        "--shared-bits",
        "shared_bits",
        0,
        12,
        "time the shipped tables with these l",
        "b's default table",
    )
    add_progress_option(runtime, "step")
    runtime.set_defaults(run=_run_runtime)
    transform = sub.add_parser("transform", help="Hadamard transform speed")
    transform.add_argument("--dim", type=dim, default=2**20, help="vector length (default: 2^20)")
    transform.add_argument("--repeats", type=repeats, default=7, help="timed runs (default: 7)")
    transform.set_defaults(run=_run_transform)
    # Benchmarks that live in their own modules register themselves when present.
    for name in ("dme_cli", "distributed", "stratified", "lattice"):
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(sub)
