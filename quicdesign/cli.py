"""The ``quicdesign`` command line: a thin shell over the Python API.

``design`` and ``tables verify`` import the design layer (``solvers``) lazily; every
other command needs the runtime only. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._argtypes import bounded_int, int_list, probability, real
from ._limits import DESIGN_MAX_BITS, DESIGN_MAX_SHARED_BITS, MAX_JOBS, MAX_STARTS
from ._validate import writable_dir
from .errors import ParameterError, QuicDesignError, TableError
from .table import list_tables, load_table, shipped_tables_dir, table_name, write_index

__all__ = ["main", "REFERENCE_VNMSE"]

#: Official QUIC-FL tables (p = 1/512) and EDEN, from the paper notes.
REFERENCE_VNMSE = {(1, 6): 1.4670, (2, 5): 0.2149, (3, 4): 0.04312, (4, 4): 0.009684}
EDEN_VNMSE = {1: 0.5708, 2: 0.1331, 3: 0.03578, 4: 0.009592}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"quicdesign: error: {message}\n")


def _cmd_design_entropy(args) -> int:
    from solvers.bound import attach_floor, entropy_floor
    from solvers.rate import design_entropy_coded

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
        table, eden = result.table, EDEN_VNMSE.get(rate)
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
    from ._export import read_npy

    with open(path, "rb") as stream:
        samples = read_npy(stream, _MAX_SAMPLE_FILE_BYTES)
    if samples.dtype.kind != "f" or samples.size < 2 or not np.all(np.isfinite(samples)):
        raise ValueError(f"{path} must hold at least 2 finite floats")
    return samples.ravel()


def _cmd_design(args) -> int:
    if args.entropy:
        return _cmd_design_entropy(args)
    from solvers.design import DEFAULT_TAIL_PROB, DesignSpec
    from solvers.sweep import DEFAULT_SHARED_BITS, default_specs, sweep

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
    _attach_bounds(results, args.bound_seconds)
    wall = time.perf_counter() - began
    print(_quality_report(results))
    print(f"\n{len(results)} tables designed in {wall:.1f} s wall (n_jobs={args.jobs})")
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


def _attach_bounds(results, seconds) -> None:
    """Certify every designed table against the global lower bound (in place)."""
    from solvers.bound import attach_bound, lower_bound

    for result in results:
        table = result.table
        # A refined l = 8 design gives far better starting multipliers (b <= 4 only: larger
        # b would make that design slow); a zero budget keeps the one-DP start.
        start = 8 if seconds > 0 and table.bits <= 4 and table.shared_bits < 8 else None
        bound = lower_bound(table, seconds=seconds, start=start)
        result.table = attach_bound(result.table, bound)
        result.bound = bound


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
        official = REFERENCE_VNMSE.get((t.bits, t.shared_bits))
        eden = EDEN_VNMSE.get(t.bits)
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


def _cmd_tables_list(args) -> int:
    folder = Path(args.path) if args.path else shipped_tables_dir()
    entries = list_tables(folder)  # refuse a bad path before printing anything
    print(
        f"{'msg bits':>8} {'shared':>6} {'tail_prob':>10} {'threshold':>9} {'vNMSE':>11} "
        f"{'bits/coord':>10} {'coding':>8}  directory"
    )
    for e in entries:
        vnmse = "" if e.get("vnmse") is None else format(e["vnmse"], ".6g")
        expected = e.get("expected_bits")
        coding = "fixed" if expected is None else "entropy"
        per_coordinate = e["bits"] + 64 * e["tail_prob"] if expected is None else expected
        print(
            f"{e['bits']:>8} {e['shared_bits']:>6} {e['tail_prob']:>10.4g} {e['threshold']:>9.4f} "
            f"{vnmse:>11} {per_coordinate:>10.4f} {coding:>8}  {e['directory']}"
        )
    return 0


def _cmd_tables_show(args) -> int:
    import json

    import numpy as np

    table = load_table(args.bits, args.shared_bits, args.tail_prob, path=args.path)
    print(repr(table))
    with np.printoptions(precision=5, suppress=True, linewidth=120):
        print("receiver R[h, x]:")
        print(table.receiver)
    manifest = table.manifest
    print(json.dumps({k: manifest[k] for k in ("quality", "design") if k in manifest}, indent=2))
    return 0


def _cmd_tables_verify(args) -> int:
    from solvers.verify import verify

    from .bound import check_global_bound

    tables = _collection_tables(Path(args.path) if args.path else shipped_tables_dir())
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
        print(
            f"{table.name:<16} {'ok' if ok else 'FAILED':<6} bias {report.max_bias:.1e} "
            f"simplex {report.max_simplex_violation:.1e} vNMSE {report.recomputed_vnmse:.6g} "
            f"(recorded {report.recorded_vnmse}) {bound_text}"
            + (f" failed: {', '.join(report.failures)}" if report.failures else "")
        )
    return 1 if bad else 0


def _collection_tables(folder: Path):
    """Every table of a table directory or collection (validated on load)."""
    from .table import Table, _is_table_dir, _load_entry, _read_index

    if _is_table_dir(folder):
        return [Table.load(folder)]
    return [_load_entry(folder, entry) for entry in _read_index(folder)["tables"]]


def _cmd_tables_export(args) -> int:
    out = writable_dir(args.out)
    if args.path:
        tables = [(t.name, t) for t in _collection_tables(Path(args.path))]
    else:
        tables = [(t.name, t) for t in _collection_tables(shipped_tables_dir())]
        entropy = _collection_tables(shipped_tables_dir() / "entropy")
        tables += [(f"entropy-{t.name}", t) for t in entropy]
    for name, table in tables:
        target = table.save(out / f"{name}.{args.format}", format=args.format)
        print(f"{target}  fingerprint {table.fingerprint.hex()}")
    print(f"{len(tables)} tables exported as {args.format} to {out}")
    return 0


def _exact_vnmse(table) -> tuple[float | None, str]:
    """vNMSE on N(0, 1) recomputed exactly (design extra) or the recorded value."""
    try:
        from solvers.distributions import StandardNormal
        from solvers.objective import evaluate
    except ImportError:
        return table.vnmse, "recorded"
    value = evaluate(table.receiver, StandardNormal(), *table.support, gradient=False).vnmse
    return value, "recomputed"


def _cmd_tables_diff(args) -> int:
    import numpy as np

    from .table import Table

    tables = [Table.load(Path(args.a)), Table.load(Path(args.b))]
    for label, path, table in zip("AB", (args.a, args.b), tables, strict=True):
        print(f"{label}: {path}  {table!r}  fingerprint {table.fingerprint.hex()}")
    a, b = tables
    fields = ("bits", "shared_bits", "tail_prob", "lower", "upper")
    differ = [
        f"{f} {getattr(a, f)!r} vs {getattr(b, f)!r}"
        for f in fields
        if getattr(a, f) != getattr(b, f)
    ]
    print("parameters: " + ("identical" if not differ else "differ: " + "; ".join(differ)))
    if a.receiver.shape == b.receiver.shape:
        delta = np.abs(a.receiver - b.receiver)
        h, x = np.unravel_index(int(np.argmax(delta)), delta.shape)
        print(
            f"max |dR|: {delta[h, x]:.3e} at h={h}, x={x} (max |R| {np.abs(a.receiver).max():.4g})"
        )
    else:
        print(f"max |dR|: receivers differ in shape {a.receiver.shape} vs {b.receiver.shape}")
    (va, source), (vb, _) = _exact_vnmse(a), _exact_vnmse(b)
    if va is not None and vb is not None:
        print(f"vNMSE on N(0,1) ({source}): A {va:.9g}  B {vb:.9g}  B/A - 1 = {vb / va - 1:+.3e}")
    if a.code_model is not None or b.code_model is not None:
        same_model = (
            a.code_model is not None
            and b.code_model is not None
            and np.array_equal(a.code_model, b.code_model)
        )
        print(f"code model: {'identical' if same_model else 'differs'}")
    same = a.fingerprint == b.fingerprint
    print(
        "same table: payloads are interchangeable"
        if same
        else "different tables: payloads made with one are refused by the other"
    )
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quicdesign`` command."""
    from . import __version__

    parser = _Parser(
        prog="quicdesign",
        description="Design, inspect and benchmark near-optimal unbiased quantizers "
        "(QUIC-FL) and run federated-learning experiments.",
    )
    parser.add_argument("--version", action="version", version=f"quicdesign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    design = commands.add_parser("design", help="design tables and print their quality")
    design.add_argument(
        "--defaults",
        action="store_true",
        help="design every shipped table (b = 1..8 defaults and l = 8 extras)",
    )
    design.add_argument(
        "--bits",
        type=int_list("bits", 1, DESIGN_MAX_BITS),
        help=f"bit widths in 1..{DESIGN_MAX_BITS}, e.g. 1-4 or 1,2,8 (default: 1-4)",
    )
    design.add_argument(
        "--shared-bits",
        type=int_list("shared_bits", 0, DESIGN_MAX_SHARED_BITS),
        help=f"shared bits l in 0..{DESIGN_MAX_SHARED_BITS} (default: per b)",
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
    design.add_argument("--cache-dir", help="design cache folder, table format (off by default)")
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
    design.add_argument(
        "--entropy",
        type=int_list("entropy rate", 1, 7),
        help="design entropy-coded tables for these bits per coordinate (1..7)",
    )
    design.add_argument(
        "--overhead-bits",
        type=real("overhead_bits", 0.0, 1.0),
        default=0.002,
        help="per-coordinate wire overhead budgeted by --entropy designs (default: 0.002)",
    )
    design.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress: a bar on a terminal, one line per table otherwise (default: on)",
    )
    design.set_defaults(run=_cmd_design)

    tables = commands.add_parser("tables", help="list, show or verify stored tables")
    table_cmds = tables.add_subparsers(dest="tables_command", required=True, parser_class=_Parser)
    listing = table_cmds.add_parser("list", help="list a table collection")
    listing.add_argument("--path", help="collection or table folder (default: shipped tables)")
    listing.set_defaults(run=_cmd_tables_list)
    show = table_cmds.add_parser("show", help="print one table and its provenance")
    show.add_argument("bits", type=bounded_int("bits", 1, 16), help="message bits b")
    show.add_argument(
        "--shared-bits",
        type=bounded_int("shared_bits", 0, 12),
        help="shared bits l (default: the collection's default table for b)",
    )
    show.add_argument(
        "--tail-prob", type=probability, help="tail probability p, e.g. 1/512 (default: as l)"
    )
    show.add_argument("--path", help="table or collection folder (default: shipped tables)")
    show.set_defaults(run=_cmd_tables_show)
    check = table_cmds.add_parser("verify", help="re-verify tables (needs the design extra)")
    check.add_argument("--path", help="table or collection folder (default: shipped tables)")
    check.set_defaults(run=_cmd_tables_verify)
    export = table_cmds.add_parser(
        "export", help="write tables as safetensors or npz files (all parameters in metadata)"
    )
    export.add_argument(
        "--format",
        choices=("safetensors", "npz"),
        required=True,
        help="safetensors (needs the export extra) or npz",
    )
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument(
        "--path", help="table or collection folder (default: shipped tables, entropy included)"
    )
    export.set_defaults(run=_cmd_tables_export)
    diff = table_cmds.add_parser(
        "diff", help="compare two tables: fingerprints, max |dR|, vNMSE (exit 1 if different)"
    )
    diff.add_argument("a", help="table folder or .safetensors/.npz file")
    diff.add_argument("b", help="table folder or .safetensors/.npz file")
    diff.set_defaults(run=_cmd_tables_diff)

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands) -> None:
    """Register ``bench`` and ``fl`` commands when their modules are present."""
    import importlib

    for module_name in ("quicdesign.bench.cli", "quicdesign.fl.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.register(commands)


#: The extra (pyproject.toml) that installs each optional module.
_EXTRA_OF_MODULE = {
    "cvxpy": "design",
    "highspy": "design",
    "joblib": "design",
    "solvers": "design",
    "matplotlib": "bench",
    "sklearn": "bench",
    "threadpoolctl": "bench",
    "constriction": "entropy",
    "torch": "torch",
    "flwr": "flower",
    "dask": "dask",
    "distributed": "dask",
    "ray": "ray",
    "numba": "fast",
    "safetensors": "export",
}


def _extra_providing(module: str | None, args) -> str:
    top = (module or "").split(".")[0]
    if top in _EXTRA_OF_MODULE:
        return _EXTRA_OF_MODULE[top]
    # scipy and tqdm come with both: name the extra of the command that needed them
    return "design" if args.command in ("design", "tables") else "bench"


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # output piped into `head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (QuicDesignError, OSError) as exc:
        # One line whatever the message holds (paths, nested reasons).
        print(f"quicdesign: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quicdesign: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        extra = _extra_providing(exc.name, args)
        print(
            f"quicdesign: error: {exc.name} is needed here; pip install 'quicdesign[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
