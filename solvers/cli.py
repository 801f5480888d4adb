"""``quicdesign design`` and ``quicdesign tables verify``: the design layer's CLI verbs.

Registered through the ``quicdesign.commands`` entry point, so the runtime CLI never
imports this package; scipy, cvxpy and joblib are imported only when a verb runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quicdesign._validate import writable_dir
from quicdesign.cli import parse_probability
from quicdesign.reference import EDEN_VNMSE, QUIC_FL_VNMSE, values
from quicdesign.table import list_tables, load_table, shipped_tables_dir, write_index

__all__ = ["register_design", "register_tables_verify"]

_QUIC_FL_VNMSE = values(QUIC_FL_VNMSE)
_EDEN_VNMSE = values(EDEN_VNMSE)


def _int_list(text: str) -> list[int]:
    values = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like '1-4' or '1,2,8', got {text!r}"
        ) from None
    return values


def _cmd_design_entropy(args) -> int:
    from .rate import design_entropy_coded

    shared_bits = (args.shared_bits or [6])[0]
    out = writable_dir(args.out) if args.out else None
    print(
        f"{'rate':>4} {'l':>2} {'K':>4} {'step':>7} {'vNMSE':>9} {'EDEN':>7} {'ratio':>6} "
        f"{'expected bits':>13} {'cert gap':>9}"
    )
    defaults, failed = {}, 0
    for rate in args.entropy:
        result = design_entropy_coded(
            target_bits=rate,
            shared_bits=shared_bits,
            overhead_bits=args.overhead_bits,
            certify=not args.no_certify,
        )
        table, eden = result.table, _EDEN_VNMSE.get(rate)
        cert = result.certificate["gap"] if result.certificate else float("nan")
        print(
            f"{rate:>4} {table.shared_bits:>2} {table.num_messages:>4} {result.grid_step:>7.4f} "
            f"{result.vnmse:>9.5g} {eden if eden else '':>7} "
            f"{format(result.vnmse / eden, '.3f') if eden else '':>6} "
            f"{result.expected_bits:>13.4f} {cert:>9.1e}"
        )
        failed += not result.success
        if out is not None:
            name = f"rate{rate}-l{table.shared_bits}"
            table.save(out / name)
            defaults[rate] = name
    if out is not None:
        write_index(out, defaults)
        print(f"tables written to {out}")
    return 1 if failed else 0


def _cmd_design(args) -> int:
    if args.entropy:
        return _cmd_design_entropy(args)
    from .design import DEFAULT_TAIL_PROB, DesignSpec
    from .sweep import DEFAULT_SHARED_BITS, default_specs, sweep

    if args.defaults:
        specs = default_specs()
    else:
        bits_list = args.bits or [1, 2, 3, 4]
        tail = DEFAULT_TAIL_PROB if args.tail_prob is None else args.tail_prob
        specs = []
        for bits in bits_list:
            shared = args.shared_bits or [DEFAULT_SHARED_BITS.get(bits, 0)]
            specs += [DesignSpec(bits, shared_bits, tail) for shared_bits in shared]
    out = writable_dir(args.out) if args.out else None
    began = time.perf_counter()
    results = sweep(
        specs,
        n_jobs=args.jobs,
        cache_dir=args.cache_dir,
        progress=args.progress,
        starts=args.starts,
        certify=not args.no_certify,
    )
    wall = time.perf_counter() - began
    print(_quality_report(results))
    print(f"\n{len(results)} tables designed in {wall:.1f} s wall (n_jobs={args.jobs})")
    failed = [r for r in results if not r.success]
    if out is not None:
        for result in results:
            result.table.save(out / result.table.name)
        defaults = {
            r.table.bits: r.table.name
            for r in results
            if r.table.shared_bits == DEFAULT_SHARED_BITS.get(r.table.bits)
        }
        write_index(out, defaults or None)
        print(f"tables written to {out}")
    if failed:
        print(f"quicdesign: error: {len(failed)} design(s) failed verification", file=sys.stderr)
        return 1
    return 0


def _quality_report(results) -> str:
    lines = [
        f"{'b':>2} {'l':>2} {'p':>9} {'T':>7} {'vNMSE':>11} {'official':>9} {'ratio':>6} "
        f"{'EDEN':>7} {'1/(4^b-1)':>10} {'bits/coord':>10} {'cert gap':>9} {'time s':>6}",
    ]
    for r in results:
        t = r.table
        official = _QUIC_FL_VNMSE.get((t.bits, t.shared_bits))
        eden = _EDEN_VNMSE.get(t.bits)
        cert = r.certificate["gap"] if r.certificate else float("nan")
        lines.append(
            f"{t.bits:>2} {t.shared_bits:>2} {t.tail_prob:>9.3g} {t.threshold:>7.4f} "
            f"{t.vnmse:>11.6g} {official if official else '':>9} "
            f"{format(t.vnmse / official, '.4f') if official else '':>6} "
            f"{eden if eden else '':>7} {1 / (4**t.bits - 1):>10.4g} "
            f"{t.bits + 64 * t.tail_prob:>10.4f} {cert:>9.1e} {r.wall_time:>6.2f}"
        )
    return "\n".join(lines)


def _cmd_tables_verify(args) -> int:
    from quicdesign.table import Table

    from .verify import verify

    folder = Path(args.path) if args.path else shipped_tables_dir()
    if (folder / "manifest.json").is_file():
        tables = [Table.load(folder)]
    else:
        tables = [
            load_table(e["bits"], e["shared_bits"], e["tail_prob"], path=folder)
            for e in list_tables(folder)
        ]
    bad = 0
    for table in tables:
        report = verify(table)
        bad += not report.ok
        print(
            f"{table.name:<16} {'ok' if report.ok else 'FAILED':<6} bias {report.max_bias:.1e} "
            f"simplex {report.max_simplex_violation:.1e} vNMSE {report.recomputed_vnmse:.6g} "
            f"(recorded {report.recorded_vnmse})"
        )
    return 1 if bad else 0


def register_design(commands) -> None:
    """Add the ``design`` verb to the top-level subparsers ``commands``."""
    design = commands.add_parser("design", help="design tables and print their quality")
    design.add_argument(
        "--defaults",
        action="store_true",
        help="design every shipped table (b = 1..8 defaults and l = 8 extras)",
    )
    design.add_argument("--bits", type=_int_list, help="bit widths, e.g. 1-4 or 1,2,8")
    design.add_argument("--shared-bits", type=_int_list, help="shared bits l (default per b)")
    design.add_argument("--tail-prob", type=parse_probability, help="tail probability p (1/512)")
    design.add_argument("--out", help="write the tables and an index to this folder")
    design.add_argument("--jobs", type=int, default=-1, help="parallel workers (-1: all cores)")
    design.add_argument("--cache-dir", help="joblib cache folder (off by default)")
    design.add_argument("--starts", type=int, default=4, help="optimizer starts per table")
    design.add_argument("--no-certify", action="store_true", help="skip the LP certificate")
    design.add_argument(
        "--entropy",
        type=_int_list,
        help="design entropy-coded tables for these bits per coordinate",
    )
    design.add_argument(
        "--overhead-bits",
        type=float,
        default=0.002,
        help="per-coordinate wire overhead budgeted by --entropy designs",
    )
    design.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal only)",
    )
    design.set_defaults(run=_cmd_design)


def register_tables_verify(tables) -> None:
    """Add the ``verify`` verb to the subparsers of ``quicdesign tables``."""
    check = tables.add_parser("verify", help="re-verify tables (needs the design extra)")
    check.add_argument("--path", help="table or collection folder (default: shipped tables)")
    check.set_defaults(run=_cmd_tables_verify)
