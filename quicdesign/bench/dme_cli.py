"""``quicdesign bench dme``: the command line of the DME benchmark."""

from __future__ import annotations

import argparse

from quicdesign._argtypes import add_int_list_option, add_progress_option, bounded_int
from quicdesign._limits import BENCH_MAX_REPEATS
from quicdesign._threads import blas_threads_text
from quicdesign._validate import writable_dir
from quicdesign.errors import ParameterError

from ._dme_setup import (
    COSSGD_FAMILIES,
    COSSGD_TENSOR_DIM,
    DEFAULT_COMPRESSORS,
    FAMILIES,
    MAX_BITS,
    MAX_DIM,
    SMALL_COSSGD_TENSOR_DIM,
)
from .cossgd_table import run_cossgd_comparison
from .dme import run_dme_benchmark
from .dme_plots import plot_near_bound, plot_nmse_vs_bits, plot_server_scaling, plot_server_time
from .dme_report import cossgd_markdown, server_scaling_markdown, sweep_markdown, write_csv
from .server_scaling import run_server_scaling

__all__ = ["register"]


def _run(args):
    if not (args.sweep or args.server_scaling or args.cossgd_table or args.stratified):
        raise ParameterError(
            "nothing to run: --no-sweep needs --server-scaling, --cossgd-table or --stratified"
        )
    out = writable_dir(args.out) if args.out else None
    if out is not None:
        import matplotlib  # noqa: F401 - without it, fail before the run rather than after
    progress = args.progress
    families = args.families or FAMILIES
    if args.sweep:
        rows = run_dme_benchmark(
            compressors=args.compressors or DEFAULT_COMPRESSORS,
            bits=args.bits,
            dim=args.dim,
            clients=args.clients,
            families=families,
            trials=args.trials,
            seed=args.seed,
            progress=progress,
            small=args.small,
            blas_threads=args.blas_threads,
        )
        first = rows[0]
        print(
            f"DME benchmark: d = {first['dim']}, {first['trials']} trials, "
            f"n = {max(r['clients'] for r in rows)} clients for NMSE and server time, "
            f"{blas_threads_text(args.blas_threads)}"
        )
        table = sweep_markdown(rows)
        print(table)
        if out is not None:
            write_csv(rows, out / "dme.csv")
            (out / "dme.md").write_text(table + "\n")
            plot_nmse_vs_bits(rows, out / "dme_nmse_vs_bits.png")
            plot_near_bound(rows, out / "dme_near_bound.png")
            plot_server_time(rows, out / "dme_server_time.png")
    if args.server_scaling:
        result = run_server_scaling(
            repeats=args.repeats,
            seed=args.seed,
            progress=progress,
            small=args.small,
            blas_threads=args.blas_threads,
        )
        print(
            f"\nServer scaling: d = {result.dim}, b = {result.bits}, LogNormal(0,1) inputs, "
            f"median of {result.repeats} timed runs, {blas_threads_text(args.blas_threads)}"
        )
        text = server_scaling_markdown(result)
        print(text)
        if out is not None:
            write_csv(result.rows, out / "server_scaling.csv")
            (out / "server_scaling.md").write_text(text + "\n")
            plot_server_scaling(result, out / "server_scaling.png")
    if args.cossgd_table:
        cos_rows = run_cossgd_comparison(
            dims=None
            if args.dim is None
            else (SMALL_COSSGD_TENSOR_DIM if args.small else COSSGD_TENSOR_DIM, args.dim),
            families=args.families or COSSGD_FAMILIES,
            trials=args.trials,
            seed=args.seed,
            progress=progress,
            small=args.small,
        )
        print(
            "\nCosSGD vs uniform quantizers: mean ||x_hat - x||^2 / ||x||^2 per vector "
            "(recorded, not a claim; symmetric-uniform needs b >= 2)"
        )
        text = cossgd_markdown(cos_rows)
        print(text)
        if out is not None:
            write_csv(cos_rows, out / "cossgd.csv")
            (out / "cossgd.md").write_text(text + "\n")
    if args.stratified:
        from .stratified import bench_stratified, stratified_markdown

        print(
            "\nStratified shared randomness (opt-in), reported apart from the sweep: NMSE of "
            "the mean by client correlation; rho = 1 (identical vectors) is the best case"
        )
        strat_rows = bench_stratified(
            dim=2**10 if args.small else 2**14,
            trials=args.trials or (2 if args.small else 5),
            seed=args.seed,
            progress=progress,
        )
        text = stratified_markdown(strat_rows)
        if out is not None:
            write_csv(strat_rows, out / "stratified.csv")
            (out / "stratified.md").write_text(text + "\n")
    if out is not None:
        print(f"\nwrote results to {out}")
    return 0


def register(sub) -> None:
    """Add the ``dme`` subcommand to the ``bench`` subparsers object ``sub``."""
    parser = sub.add_parser(
        "dme",
        help="distributed mean estimation: NMSE, bits on the wire, encode and server time",
        description="Distributed mean estimation benchmark on real payloads.",
    )
    parser.add_argument(
        "--compressors",
        nargs="+",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"registry names with options, space-separated, e.g. quicfl kashin:variant=tf "
        f"(default: {' '.join(DEFAULT_COMPRESSORS)})",
    )
    add_int_list_option(parser, "--bits", "bits", 1, MAX_BITS, "target bits per coordinate", "1-4")
    parser.add_argument(
        "--dim",
        type=bounded_int("dim", 1, MAX_DIM),
        help="vector length d (default: 2^16; 2^10 with --small)",
    )
    add_int_list_option(
        parser, "--clients", "clients", 1, 2**16, "client counts n", "1,4,16; 1,4,8 with --small"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"input families, space-separated, from {' '.join(FAMILIES)} (default: all)",
    )
    parser.add_argument(
        "--trials",
        type=bounded_int("trials", 1, BENCH_MAX_REPEATS),
        help="independent rounds per configuration (default: 3; 2 with --small)",
    )
    parser.add_argument(
        "--seed",
        type=bounded_int("seed", 0, 2**63 - 1),
        default=0,
        help="seed of inputs and rounds (default: 0)",
    )
    parser.add_argument(
        "--out", help="folder for CSV, Markdown and PNG files (default: print only)"
    )
    add_progress_option(parser, "configuration")
    parser.add_argument("--small", action="store_true", help="tiny sizes (tests, notebooks)")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the compressor x bits x family sweep (default: on)",
    )
    parser.add_argument(
        "--server-scaling",
        action="store_true",
        help="also time EDEN vs QUIC-FL aggregation at d=2^18, b=4, n=1..64",
    )
    parser.add_argument(
        "--cossgd-table",
        action="store_true",
        help="also compare CosSGD with uniform quantizers at 1-8 bits",
    )
    parser.add_argument(
        "--stratified",
        action="store_true",
        help="also measure stratified shared randomness at client correlations "
        "1, 0.99, 0.9, 0.5 (a separate table)",
    )
    parser.add_argument(
        "--repeats",
        type=bounded_int("repeats", 1, BENCH_MAX_REPEATS),
        help="timed runs for --server-scaling (default: 5; 1 with --small)",
    )
    parser.add_argument(
        "--blas-threads",
        type=bounded_int("blas-threads", 0, 1024),
        default=1,
        help="BLAS threads while timing; 0 keeps the library's own (default: 1)",
    )
    parser.set_defaults(run=_run)
