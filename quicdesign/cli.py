"""The ``quicdesign`` command line: a thin shell over the Python API.

The runtime's own verbs (``tables list``, ``tables show``) live here; every other verb
registers itself through the ``quicdesign.commands`` entry points (``design`` and
``tables verify`` from the design layer, ``bench`` and ``fl`` from the lab), so this
module never imports them. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from pathlib import Path

from ._argtypes import bounded_int, probability
from ._validate import writable_dir
from .errors import ParameterError, QuicDesignError
from .table import list_tables, load_entropy_table, load_table, shipped_tables_dir

__all__ = [
    "main",
    "build_parser",
    "collection_tables",
    "registered_commands",
    "ENTRY_POINT_GROUP",
    "EVALUATOR_GROUP",
]

#: Entry-point group of CLI verbs. An entry's name is the verb's path ("design",
#: "tables.verify"); its object is a function ``register(subparsers)`` adding that verb
#: to the subparsers of its parent (the top level, or ``tables``).
ENTRY_POINT_GROUP = "quicdesign.commands"
# Kept equal to [project.entry-points."quicdesign.commands"] in pyproject.toml (a test
# checks it), for runs from a source tree where no metadata is installed.
_OWN_COMMANDS = {
    "design": "solvers.cli:register_design",
    "tables.verify": "solvers.cli:register_tables_verify",
    "bench": "quicdesign.bench.cli:register",
    "fl": "quicdesign.fl.cli:register",
}
#: Entry-point group of design-layer helpers the runtime verbs use when installed.
EVALUATOR_GROUP = "quicdesign.evaluators"
_OWN_EVALUATORS = {"vnmse": "solvers.cli:exact_vnmse"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"quicdesign: error: {message}\n")


def _cmd_tables_list(args) -> int:
    folder = Path(args.path) if args.path else shipped_tables_dir()
    entries = list_tables(folder)  # refuse a bad path before printing anything
    # rate: the nominal bits per coordinate (b, or an entropy table's design rate);
    # bits/coord: what a coordinate costs on average (b + 64 p, or the expected code length)
    print(
        f"{'rate':>5} {'coding':>8} {'msg bits':>8} {'shared':>6} {'tail_prob':>10} "
        f"{'threshold':>9} {'vNMSE':>11} {'bits/coord':>10}  directory"
    )
    for e in entries:
        vnmse = "" if e.get("vnmse") is None else format(e["vnmse"], ".6g")
        expected = e.get("expected_bits")
        if expected is None:
            coding, rate, per_coordinate = "fixed", f"{e['bits']}", e["bits"] + 64 * e["tail_prob"]
        else:
            nominal = e.get("nominal_rate")
            coding, rate, per_coordinate = "entropy", f"{nominal:g}" if nominal else "?", expected
        print(
            f"{rate:>5} {coding:>8} {e['bits']:>8} {e['shared_bits']:>6} {e['tail_prob']:>10.4g} "
            f"{e['threshold']:>9.4f} {vnmse:>11} {per_coordinate:>10.4f}  {e['directory']}"
        )
    return 0


def _cmd_tables_show(args) -> int:
    import json

    import numpy as np

    from .table import _is_table_dir

    entries = list_tables(args.path)  # validates --path
    if args.path and _is_table_dir(Path(args.path)):
        table = collection_tables(Path(args.path))[0]
        chosen = table.bits if table.nominal_rate is None else table.nominal_rate
        if args.bits is not None and args.bits != chosen:
            raise ParameterError(f"{args.path} holds {table!r}, not b = {args.bits}")
    elif args.bits is None:
        raise ParameterError("name the table: quicdesign tables show B [--shared-bits L]")
    elif entries and all(e.get("expected_bits") is not None for e in entries):
        # an entropy-coded collection is indexed by nominal rate, as load_entropy_table
        if args.shared_bits is not None or args.tail_prob is not None:
            raise ParameterError("an entropy-coded collection is chosen by its rate alone")
        table = load_entropy_table(args.bits, path=args.path)
    else:
        table = load_table(args.bits, args.shared_bits, args.tail_prob, path=args.path)
    print(repr(table))
    with np.printoptions(precision=5, suppress=True, linewidth=120):
        print("receiver R[h, x]:")
        print(table.receiver)
    manifest = table.manifest
    print(json.dumps({k: manifest[k] for k in ("quality", "design") if k in manifest}, indent=2))
    return 0


def collection_tables(folder: Path):
    """Every table of a table directory or collection (validated on load)."""
    from .table import Table, _is_table_dir, _load_entry, _read_index

    if _is_table_dir(folder):
        return [Table.load(folder)]
    return [_load_entry(folder, entry) for entry in _read_index(folder)["tables"]]


def _cmd_tables_export(args) -> int:
    out = writable_dir(args.out)
    if args.path:
        tables = [(t.name, t) for t in collection_tables(Path(args.path))]
    else:
        tables = [(t.name, t) for t in collection_tables(shipped_tables_dir())]
        entropy = collection_tables(shipped_tables_dir() / "entropy")
        tables += [(f"entropy-{t.name}", t) for t in entropy]
    for name, table in tables:
        target = table.save(out / f"{name}.{args.format}", format=args.format)
        print(f"{target}  fingerprint {table.fingerprint.hex()}")
    print(f"{len(tables)} tables exported as {args.format} to {out}")
    return 0


def _exact_vnmse(table) -> tuple[float | None, str]:
    """vNMSE on N(0, 1) recomputed by the design layer when installed, else as recorded.

    The evaluator is found through the ``quicdesign.evaluators`` entry point ``vnmse``,
    so this module never imports the design layer.
    """
    module_name, _, function = _registered(EVALUATOR_GROUP, _OWN_EVALUATORS)["vnmse"].partition(":")
    try:
        evaluate = getattr(importlib.import_module(module_name), function)
        return evaluate(table), "recomputed"
    except ImportError:
        return table.vnmse, "recorded"


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


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The argument parser of the ``quicdesign`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments about to be parsed: only the registered verbs they can name are
        imported (so ``tables list`` never loads the design layer). None: all verbs.
    """
    from . import __version__

    parser = _Parser(
        prog="quicdesign",
        description="Design, inspect and benchmark near-optimal unbiased quantizers "
        "(QUIC-FL) and run federated-learning experiments.",
    )
    parser.add_argument("--version", action="version", version=f"quicdesign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tables = commands.add_parser(
        "tables", help="list, show, export, compare or verify stored tables"
    )
    table_cmds = tables.add_subparsers(dest="tables_command", required=True, parser_class=_Parser)
    listing = table_cmds.add_parser("list", help="list a table collection")
    listing.add_argument("--path", help="collection or table folder (default: shipped tables)")
    listing.set_defaults(run=_cmd_tables_list)
    show = table_cmds.add_parser("show", help="print one table and its provenance")
    show.add_argument(
        "bits",
        type=bounded_int("bits", 1, 16),
        nargs="?",
        help="message bits b; for a collection of entropy-coded tables, the nominal rate "
        "(default: required unless --path is one table)",
    )
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

    _add_registered_commands({"": commands, "tables": table_cmds}, argv)
    return parser


def registered_commands() -> dict[str, str]:
    """Command name -> ``"module:function"`` of every CLI verb that registers itself.

    Verbs come from the ``quicdesign.commands`` entry points of installed distributions;
    this distribution's own (declared in ``pyproject.toml``) are also known when it runs
    from a source tree without installed metadata.
    """
    return _registered(ENTRY_POINT_GROUP, _OWN_COMMANDS)


def _registered(group: str, own: dict) -> dict[str, str]:
    found = dict(own)
    try:
        for entry in importlib.metadata.entry_points(group=group):
            found[entry.name] = entry.value
    except Exception:  # noqa: BLE001 - broken metadata elsewhere must not break the CLI
        pass
    return found


def _wanted(path: str, argv) -> bool:
    """Whether the verb ``path`` can be named by ``argv`` (its words agree so far)."""
    if argv is None:
        return True
    words = [word for word in argv if not word.startswith("-")]
    return all(a == b for a, b in zip(path.split("."), words, strict=False))


def _add_registered_commands(groups, argv) -> None:
    """Let every registered verb that ``argv`` may name add its parser."""
    for path, target in sorted(registered_commands().items()):
        parent, _, name = path.rpartition(".")
        if parent not in groups or not _wanted(path, argv):
            continue
        module_name, _, function = target.partition(":")
        try:
            register = getattr(importlib.import_module(module_name), function)
        except ModuleNotFoundError as exc:
            if exc.name is None or module_name.startswith(exc.name):
                continue  # the verb's own module is not installed: no such verb
            _add_missing_dependency(groups[parent], name, exc)
            continue
        register(groups[parent])


def _add_missing_dependency(commands, name, error) -> None:
    """A verb whose module needs an extra that is not installed: running it says so."""
    # "\0" as the option prefix: every word, options included, lands in ``rest``
    stub = commands.add_parser(
        name, help=f"(needs {error.name})", add_help=False, prefix_chars="\0"
    )
    stub.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args):
        raise error

    stub.set_defaults(run=run)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
