"""``quicdesign fl``: run the named federated-learning experiments.

``quicdesign fl list`` names the experiments and the claim each checks;
``quicdesign fl run EXPERIMENT`` runs one, prints its summary table and writes
``<name>_summary.csv``, ``<name>_curves.csv`` and ``<name>.png`` to ``--out``.
"""

from __future__ import annotations

import time

from quicdesign._argtypes import add_int_list_option, add_progress_option, bounded_int
from quicdesign._limits import MAX_JOBS
from quicdesign._validate import writable_dir
from quicdesign.errors import ParameterError

from .experiments import EXPERIMENTS, format_table, run_experiment

__all__ = ["register"]


#: Bounds checked while parsing: most seeds per run, largest seed, most rounds.
MAX_SEEDS = 1000
MAX_ROUNDS = 100_000


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

    # fail before a long run, not after it, when the folder cannot be written or the
    # curves cannot be drawn
    writable_dir(args.out)
    import matplotlib  # noqa: F401

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
    add_int_list_option(
        run,
        "--seeds",
        "seeds",
        0,
        2**32 - 1,
        f"seeds, at most {MAX_SEEDS}",
        "per experiment",
        max_length=MAX_SEEDS,
    )
    run.add_argument(
        "--rounds",
        type=bounded_int("rounds", 1, MAX_ROUNDS),
        help=f"rounds per run, 1..{MAX_ROUNDS} (default per experiment)",
    )
    run.add_argument(
        "--workers",
        type=bounded_int("workers", 1, MAX_JOBS),
        help="processes running the runs (default: min(2, CPUs))",
    )
    add_progress_option(run, "run")
    run.set_defaults(run=_cmd_run)
