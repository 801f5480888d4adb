"""``quicdesign design`` and ``quicdesign tables verify``: the design layer's CLI verbs.

Registered through the ``quicdesign.commands`` entry point, so the runtime CLI never
imports this package; scipy, cvxpy and joblib are imported only when a verb runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quicdesign._argtypes import (
    add_int_list_option,
    add_progress_option,
    bounded_int,
    probability,
    real,
)
from quicdesign._limits import DESIGN_MAX_BITS, DESIGN_MAX_SHARED_BITS, MAX_JOBS, MAX_STARTS
from quicdesign._validate import writable_dir
from quicdesign.cli import collection_tables
from quicdesign.errors import ParameterError, TableError
from quicdesign.reference import EDEN_VNMSE, QUIC_FL_VNMSE, values
from quicdesign.table import shipped_tables_dir, table_name, write_index

__all__ = ["register_design", "register_tables_verify"]

_QUIC_FL_VNMSE = values(QUIC_FL_VNMSE)
_EDEN_VNMSE = values(EDEN_VNMSE)


def _cmd_design_entropy(args) -> int:
    from .bound import attach_floor, entropy_floor
    from .rate import design_entropy_coded

    shared_bits = (args.shared_bits or [6])[0]
    out = writable_dir(args.out) if args.out else None
    if out is not None:
        _refuse_overwrite(out, [f"rate{rate}-l{shared_bits}" for rate in args.entropy], args)
    print(
        f"{'rate':>4} {'l':>2} {'K':>4} {'step':>7} {'vNMSE':>9} {'EDEN':>7} {'ratio':>6} "
        f"{'expected bits':>13} {'cert gap':>9} {'floor':>11} {'within':>7}"
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
        floor = entropy_floor(
            table.manifest["coding"]["entropy_bits"],
            table.tail_prob,
            seconds=args.bound_seconds,
        )
        table = attach_floor(table, floor)
        print(
            f"{rate:>4} {table.shared_bits:>2} {table.num_messages:>4} {result.grid_step:>7.4f} "
            f"{result.vnmse:>9.5g} {eden if eden else '':>7} "
            f"{format(result.vnmse / eden, '.3f') if eden else '':>6} "
            f"{result.expected_bits:>13.4f} {_cert_gap(result):>9} {_bound_columns(table)}",
            flush=True,
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


_MAX_SAMPLE_FILE_BYTES = 1 << 30


def _distribution(text: str):
    """``--distribution``: ``(label, law)`` with law None for the standard normal."""
    from scipy import stats

    kind, _, value = text.partition(":")
    try:
        if text == "normal":
            return "normal", None
        if kind == "t" and value:
            df = float(value)
            if not 2 < df < 1e6:
                raise ValueError("t needs 2 < DF (a finite variance)")
            return f"t{value}", stats.t(df)
        if text in ("laplace", "logistic"):
            return text, getattr(stats, text)()
        if kind == "samples" and value:
            return f"samples-{Path(value).stem}", _read_samples(Path(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --distribution {text!r}: {exc}") from None
    raise argparse.ArgumentTypeError(
        f"--distribution must be normal, t:DF, laplace, logistic or samples:FILE.npy, got {text!r}"
    )


def _read_samples(path: Path):
    import numpy as np

    if not path.is_file() or path.stat().st_size > _MAX_SAMPLE_FILE_BYTES:
        raise ValueError(f"{path} is not a regular .npy file of at most 1 GiB")
    from quicdesign._export import read_npy

    with open(path, "rb") as stream:
        samples = read_npy(stream, _MAX_SAMPLE_FILE_BYTES)
    if samples.dtype.kind != "f" or samples.size < 2 or not np.all(np.isfinite(samples)):
        raise ValueError(f"{path} must hold at least 2 finite floats")
    return samples.ravel()


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
        label, law = args.distribution or ("normal", None)
        if args.input_model != "direct" and law is not None:
            raise ParameterError(
                "--distribution needs --input-model direct: with rotation the table sees "
                "values close to N(0, 1) whatever the input law"
            )
        input_model = args.input_model
        for bits in bits_list:
            shared = args.shared_bits or [DEFAULT_SHARED_BITS.get(bits, 0)]
            specs += [
                DesignSpec(bits, shared_bits, tail, None, law, input_model)
                for shared_bits in shared
            ]
    suffix = f"-direct-{args.distribution[0] if args.distribution else 'normal'}"
    suffix = suffix if not args.defaults and args.input_model == "direct" else ""
    out = writable_dir(args.out) if args.out else None
    if out is not None:
        names = [table_name(spec.bits, spec.shared_bits, spec.tail_prob) + suffix for spec in specs]
        _refuse_overwrite(out, names, args)
    if args.cache_dir:
        writable_dir(args.cache_dir)
    began = time.perf_counter()
    results = sweep(
        specs,
        n_jobs=args.jobs,
        cache_dir=args.cache_dir,
        progress=args.progress,
        starts=args.starts,
        certify=not args.no_certify,
    )
    _attach_bounds(results, args.bound_seconds, args.progress)
    wall = time.perf_counter() - began
    print(_quality_report(results))
    count = f"{len(results)} table{'s' if len(results) > 1 else ''}"
    print(f"\n{count} designed and bounded in {wall:.1f} s wall (n_jobs={args.jobs})")
    failed = [r for r in results if not r.success]
    for result in results:
        if suffix:
            law = result.table.input_model["input_law"]
            name = f"{law.get('name', law.get('kind'))} {law.get('args', '')}".strip()
            print(f"{result.table.name}{suffix}: design vNMSE {result.vnmse:.6g} on {name}")
    if out is not None:
        for result in results:
            result.table.save(out / (result.table.name + suffix))
        defaults = {
            r.table.bits: r.table.name + suffix
            for r in results
            if r.table.shared_bits == DEFAULT_SHARED_BITS.get(r.table.bits)
        }
        write_index(out, defaults or None)
        print(f"tables written to {out}")
    if failed:
        print(f"quicdesign: error: {len(failed)} design(s) failed verification", file=sys.stderr)
        return 1
    return 0


def _attach_bounds(results, seconds, progress=None) -> None:
    """Certify every designed table against the global lower bound (in place)."""
    from quicdesign._progress import progress as reporter

    from .bound import attach_bound, lower_bound

    with reporter(len(results), "bounding", progress, unit="table") as bar:
        for result in results:
            table = result.table
            # A refined l = 8 design gives far better starting multipliers (b <= 4 only:
            # larger b would make that design slow); a zero budget keeps the one-DP start.
            start = 8 if seconds > 0 and table.bits <= 4 and table.shared_bits < 8 else None
            bound = lower_bound(table, seconds=seconds, start=start)
            result.table = attach_bound(result.table, bound)
            result.bound = bound
            gap = result.table.manifest["global_bound"].get("relative_gap")
            within = "" if gap is None else f" within {100 * gap:.2f}%"
            bar.update(note=f"{table.name}{within}")


def _refuse_overwrite(out: Path, names, args) -> None:
    """Refuse, before any work, to replace tables already in ``out`` unless --force."""
    taken = sorted({name for name in names if (out / name).exists() or (out / name).is_symlink()})
    if taken and not args.force:
        raise ParameterError(
            f"{out} already holds {', '.join(taken)}; pass --force to replace "
            f"{'it' if len(taken) == 1 else 'them'}"
        )


def _cert_gap(result) -> str:
    """The LP certificate's gap, or ``off`` when --no-certify skipped it."""
    return format(result.certificate["gap"], ".1e") if result.certificate else "off"


def _quality_report(results) -> str:
    lines = [
        f"{'b':>2} {'l':>2} {'p':>9} {'T':>7} {'vNMSE':>11} {'certified':>11} {'within':>7} "
        f"{'official':>9} {'ratio':>6} "
        f"{'EDEN':>7} {'1/(4^b-1)':>10} {'bits/coord':>10} {'cert gap':>9} {'time s':>6}",
    ]
    for r in results:
        t = r.table
        official = _QUIC_FL_VNMSE.get((t.bits, t.shared_bits))
        eden = _EDEN_VNMSE.get(t.bits)
        cert = _cert_gap(r)
        lines.append(
            f"{t.bits:>2} {t.shared_bits:>2} {t.tail_prob:>9.3g} {t.threshold:>7.4f} "
            f"{t.vnmse:>11.6g} {_bound_columns(t)} {official if official else '':>9} "
            f"{format(t.vnmse / official, '.4f') if official else '':>6} "
            f"{eden if eden else '':>7} {1 / (4**t.bits - 1):>10.4g} "
            f"{t.bits_per_coordinate:>10.4f} {cert:>9} {r.wall_time:>6.2f}"
        )
    return "\n".join(lines)


def _bound_columns(table) -> str:
    """``certified lower bound`` and ``within x %`` columns (blank without a proof)."""
    section = table.manifest.get("global_bound")
    if not section:
        return f"{'':>11} {'':>7}"
    gap = section.get("relative_gap")
    within = "" if gap is None else f"{100 * gap:.2f}%"
    return f"{section['value']:>11.6g} {within:>7}"


def _lattice_model_dirs(folder: Path) -> list[Path]:
    """``folder`` if it holds a lattice code model, else its subfolders that do."""
    from quicdesign.lattice import MODEL_KIND
    from quicdesign.table import MANIFEST_FILE, _read_manifest

    def is_model(path):
        if not (path / MANIFEST_FILE).is_file():
            return False
        try:
            return _read_manifest(path / MANIFEST_FILE)["parameters"].get("kind") == MODEL_KIND
        except (TableError, KeyError, AttributeError):
            return False

    if is_model(folder):
        return [folder]
    if (folder / MANIFEST_FILE).exists() or not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and is_model(path))


def _verify_lattice_models(folders) -> int:
    from quicdesign.lattice import LatticeCodeModel

    from .lattice import verify_lattice_model

    bad = 0
    for folder in folders:
        try:
            model = LatticeCodeModel.load(folder)
        except TableError as exc:
            print(f"{folder.name:<16} FAILED {exc}")
            bad += 1
            continue
        failures, rate, measured = verify_lattice_model(model)
        bad += bool(failures)
        print(
            f"{folder.name:<16} {'FAILED' if failures else 'ok':<6} lattice {model.lattice}, "
            f"model bits {rate:.4f}/coordinate (recorded {model.manifest['coding']['model_bits']}"
            f"), vNMSE {model.vnmse:.6g} (measured {measured:.6g})"
            + (f" failed: {', '.join(failures)}" if failures else "")
        )
    return 1 if bad else 0


def _cmd_tables_verify(args) -> int:
    from quicdesign.bound import check_global_bound

    from .verify import verify

    if args.path and (lattice := _lattice_model_dirs(Path(args.path))):
        return _verify_lattice_models(lattice)
    tables = collection_tables(Path(args.path) if args.path else shipped_tables_dir())
    bad = 0
    for table in tables:
        report = verify(table)
        try:
            check = check_global_bound(table)
            bound_text = (
                "no bound"
                if check is None
                else f"bound {check.recomputed:.6g} (within {100 * check.relative_gap:.2f}%)"
            )
            bound_ok = True
        except TableError as exc:
            bound_text, bound_ok = f"bound REFUSED: {exc}", False
        ok = report.ok and bound_ok
        bad += not ok
        coding = ""
        if table.code_model is not None:
            coding = (
                f"entropy-coded, rate {table.nominal_rate:g} "
                f"(expected {table.bits_per_coordinate:.4f} bits/coordinate) "
            )
        print(
            f"{table.name:<16} {'ok' if ok else 'FAILED':<6} {coding}bias {report.max_bias:.1e} "
            f"simplex {report.max_simplex_violation:.1e} vNMSE {report.recomputed_vnmse:.6g} "
            f"(recorded {report.recorded_vnmse}) {bound_text}"
            + (f" failed: {', '.join(report.failures)}" if report.failures else "")
        )
    return 1 if bad else 0


def exact_vnmse(table) -> float:
    """vNMSE of ``table`` on N(0, 1), recomputed exactly (``quicdesign tables diff``)."""
    from .distributions import StandardNormal
    from .objective import evaluate

    return evaluate(table.receiver, StandardNormal(), *table.support, gradient=False).vnmse


def register_design(commands) -> None:
    """Add the ``design`` verb to the top-level subparsers ``commands``."""
    design = commands.add_parser("design", help="design tables and print their quality")
    design.add_argument(
        "--defaults",
        action="store_true",
        help="design every shipped table (b = 1..8 defaults and l = 8 extras)",
    )
    add_int_list_option(
        design, "--bits", "bits", 1, DESIGN_MAX_BITS, f"bit widths in 1..{DESIGN_MAX_BITS}", "1-4"
    )
    add_int_list_option(
        design,
        "--shared-bits",
        "shared_bits",
        0,
        DESIGN_MAX_SHARED_BITS,
        f"shared bits l in 0..{DESIGN_MAX_SHARED_BITS}",
        "the shipped l of each b",
    )
    design.add_argument(
        "--tail-prob", type=probability, help="tail probability p, e.g. 1/512 (default: 1/512)"
    )
    design.add_argument(
        "--input-model",
        choices=("rotated", "direct"),
        default="rotated",
        help="rotated: for Encoder (inputs become ~N(0,1)); direct: for DirectEncoder, "
        "designed for --distribution after unit-RMS scaling (default: rotated)",
    )
    design.add_argument(
        "--distribution",
        type=_distribution,
        help="value law for --input-model direct: normal, t:DF, laplace, logistic or "
        "samples:FILE.npy, a float array read without pickle (default: normal)",
    )
    design.add_argument(
        "--out", help="write the tables and an index to this folder (default: print only)"
    )
    design.add_argument(
        "--force",
        action="store_true",
        help="replace tables of the same name already in --out",
    )
    design.add_argument(
        "--jobs",
        type=bounded_int("jobs", -1, MAX_JOBS),
        default=-1,
        help="parallel workers; -1 means all cores (default: -1)",
    )
    design.add_argument("--cache-dir", help="design cache folder, table format (default: no cache)")
    design.add_argument(
        "--starts",
        type=bounded_int("starts", 1, MAX_STARTS),
        default=4,
        help=f"optimizer starts per table, 1..{MAX_STARTS} (default: 4)",
    )
    design.add_argument(
        "--no-certify", action="store_true", help="skip the LP certificate (default: certify)"
    )
    design.add_argument(
        "--bound-seconds",  # also the scalar-floor budget of --entropy designs
        type=real("bound seconds", 0.0, 3600.0),
        default=5.0,
        help="ascent budget per table for the certified global lower bound, 0..3600; "
        "b <= 4 tables with l < 8 first refine an l = 8 design to start from "
        "(0: the design's own multipliers only, one DP; default: 5)",
    )
    add_int_list_option(
        design,
        "--entropy",
        "entropy rate",
        1,
        7,
        "design entropy-coded tables for these bits per coordinate, 1..7",
        "none",
    )
    design.add_argument(
        "--overhead-bits",
        type=real("overhead_bits", 0.0, 1.0),
        default=0.002,
        help="per-coordinate wire overhead budgeted by --entropy designs (default: 0.002)",
    )
    add_progress_option(design, "table")
    design.set_defaults(run=_cmd_design)


def register_tables_verify(tables) -> None:
    """Add the ``verify`` verb to the subparsers of ``quicdesign tables``."""
    check = tables.add_parser("verify", help="re-verify tables (needs the design extra)")
    check.add_argument(
        "--path",
        help="table, collection or lattice code model folder (e.g. tables/lattice; default: "
        "the shipped fixed-rate tables)",
    )
    check.set_defaults(run=_cmd_tables_verify)
