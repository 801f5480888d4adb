"""``quicdesign fl``: run the named federated-learning experiments.

``quicdesign fl list`` names the experiments and the claim each checks;
``quicdesign fl run EXPERIMENT`` runs one, prints its summary table and writes
``<name>_summary.csv``, ``<name>_curves.csv`` and ``<name>.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import time

from quicdesign._validate import writable_dir
from quicdesign.errors import ParameterError

from .experiments import EXPERIMENTS, format_table, run_experiment

__all__ = ["register"]


def _seed_list(text):
    """Parse ``0-2`` or ``0,3,7`` into a list of non-negative integers."""
    seeds = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds.extend(range(int(low), int(high) + 1) if high else [int(low)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seeds like '0-2' or '0,3', got {text!r}"
        ) from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {text!r}")
    return seeds


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _cmd_list(args):
    width = max(map(len, EXPERIMENTS))
    for name, experiment in EXPERIMENTS.items():
        print(f"{name:<{width}}  {experiment.claim}")
    return 0


def _cmd_run(args):
    if args.experiment not in EXPERIMENTS:
        raise ParameterError(
            f"unknown experiment {args.experiment!r}; choose from {', '.join(EXPERIMENTS)}"
        )
    from .report import write_result

    # fail before a long run, not after it, when the folder cannot be written
    writable_dir(args.out)
    began = time.perf_counter()
    result = run_experiment(
        args.experiment,
        seeds=args.seeds,
        rounds=args.rounds,
        workers=args.workers,
        progress=args.progress,
    )
    wall = time.perf_counter() - began
    files = write_result(result, args.out)
    print(f"{result.experiment.name}: {result.experiment.claim}")
    print(format_table(result.summary))
    for note in result.notes:
        print(note)
    print(
        f"{len(result.histories)} runs in {wall:.1f} s; wrote "
        + ", ".join(str(path) for path in files)
    )
    return 0


def register(commands):
    """Add the ``fl`` command to the ``quicdesign`` subparsers ``commands``."""
    fl = commands.add_parser(
        "fl",
        help="federated-learning experiments (MCM, signSGD-FV, "
        "intrinsic gradient compression, CosSGD)",
    )
    fl_commands = fl.add_subparsers(dest="fl_command", required=True, parser_class=type(fl))
    listing = fl_commands.add_parser("list", help="list the named experiments")
    listing.set_defaults(run=_cmd_list)
    run = fl_commands.add_parser("run", help="run a named experiment")
    run.add_argument("experiment", metavar="EXPERIMENT", help=f"one of: {', '.join(EXPERIMENTS)}")
    run.add_argument("--out", default="fl-results", help="output folder (default: fl-results)")
    run.add_argument("--seeds", type=_seed_list, help="seeds, e.g. 0-2 (default per experiment)")
    run.add_argument("--rounds", type=_positive_int, help="rounds per run (default per experiment)")
    run.add_argument(
        "--workers", type=_positive_int, help="processes running the runs (default: min(2, CPUs))"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal only)",
    )
    run.set_defaults(run=_cmd_run)
