"""``quicdesign bench ...`` subcommands (registered by the main CLI)."""

from __future__ import annotations

import importlib

__all__ = ["register"]


def _run_runtime(args):
    from .runtime import bench_runtime

    bench_runtime(
        dim=args.dim,
        bits=args.bits,
        clients=args.clients,
        repeats=args.repeats,
        shared_bits=args.shared_bits,
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
    runtime.add_argument("--dim", type=int, default=2**20)
    runtime.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4])
    runtime.add_argument("--clients", type=int, default=16)
    runtime.add_argument("--repeats", type=int, default=5)
    runtime.add_argument(
        "--shared-bits", type=int, nargs="+", help="shipped tables with these l (default: b's)"
    )
    runtime.set_defaults(run=_run_runtime)
    transform = sub.add_parser("transform", help="Hadamard transform speed")
    transform.add_argument("--dim", type=int, default=2**20)
    transform.add_argument("--repeats", type=int, default=7)
    transform.set_defaults(run=_run_transform)
    # Benchmarks that live in their own modules register themselves when present.
    for name in ("dme",):
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(sub)
