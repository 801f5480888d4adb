"""Hostile table files and collections: every one is refused with a TableError, quickly.

Cases are generated systematically: tables of field edits (re-signed, so only the loader's
own checks stand in the way), raw manifest bytes, file types (symlinks, FIFOs, devices),
index entries, and a hypothesis fuzz over JSON values put into every manifest field.
"""

import json
import os
import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicdesign import Table, TableError, TableNotFoundError, list_tables, load_table
from quicdesign.cli import main
from quicdesign.table import (
    MAX_INDEX_BYTES,
    MAX_MANIFEST_BYTES,
    _serialize_manifest,
    _sha256,
    write_index,
)

from .test_table_format import make_table


@contextmanager
def deadline(seconds=5):
    """Fail (instead of hanging the suite) if a read blocks on a FIFO or a device."""

    def expire(signum, frame):
        raise AssertionError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def resign(folder, edit):
    """Edit manifest.json and recompute its self-hashes, as anyone can."""
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_bytes(_serialize_manifest(manifest))


def setter(section, key, value):
    def edit(manifest):
        manifest[section][key] = value

    return edit


@pytest.fixture
def table_dir(tmp_path):
    return make_table(np.random.default_rng(0)).save(tmp_path / "t")


@pytest.fixture
def collection(tmp_path):
    folder = tmp_path / "collection"
    rng = np.random.default_rng(1)
    make_table(rng, bits=1, shared_bits=1).save(folder / "b1-l1")
    make_table(rng, bits=2, shared_bits=2).save(folder / "b2-l2")
    make_table(rng, bits=2, shared_bits=3).save(folder / "b2-l3")
    write_index(folder)
    return folder


# -- manifest fields (re-signed) -------------------------------------------------------
PARAMETER_CASES = [
    ("bits", -1),
    ("bits", 0),
    ("bits", 17),
    ("bits", "abc"),
    ("bits", "2"),
    ("bits", 2.0),
    ("bits", 3e10),
    ("bits", True),
    ("bits", None),
    ("bits", [2]),
    ("bits", {"a": 1}),
    ("bits", 10**40),
    ("shared_bits", 3e10),
    ("shared_bits", 30_000_000_000),
    ("shared_bits", -1),
    ("shared_bits", 13),
    ("shared_bits", "x"),
    ("shared_bits", 1e308),
    ("shared_bits", False),
    ("tail_prob", "abc"),
    ("tail_prob", 2),
    ("tail_prob", 0),
    ("tail_prob", -1e-3),
    ("tail_prob", None),
    ("tail_prob", [0.1]),
    ("tail_prob", 1e308),
    ("lower", "abc"),
    ("lower", None),
    ("lower", []),
    ("lower", 10**400),
    ("lower", True),
    ("lower", 3.5),
    ("upper", "3"),
    ("upper", -3.5),
    ("upper", {"x": 1}),
]


@pytest.mark.parametrize("key, value", PARAMETER_CASES)
def test_hostile_parameters_are_refused(table_dir, key, value):
    resign(table_dir, setter("parameters", key, value))
    with pytest.raises(TableError):
        Table.load(table_dir)


def test_huge_shape_is_refused_before_reading(table_dir, monkeypatch):
    import quicdesign.table as table_module

    def no_read(*args):
        raise AssertionError("an array was read before the shape was range-checked")

    monkeypatch.setattr(table_module, "_read_array", no_read)
    for bits, shared_bits in [(16, 12), (16, 5), (11, 10)]:
        resign(table_dir, setter("parameters", "bits", bits))
        resign(table_dir, setter("parameters", "shared_bits", shared_bits))
        with pytest.raises(TableError, match="cells"):
            Table.load(table_dir)


def array_setter(key, value):
    def edit(manifest):
        manifest["arrays"]["receiver"][key] = value

    return edit


ARRAY_CASES = [
    *[
        ("file", name)
        for name in [
            "../evil.f64",
            "..",
            ".",
            "",
            "/etc/passwd",
            "a/b",
            "a\0b",
            ".hidden",
            "x" * 300,
            "C:\\evil",
            5,
            None,
            ["receiver.f64"],
        ]
    ],
    ("dtype", "<f4"),
    ("dtype", [">f8"]),
    ("dtype", {"<f8": 1}),
    ("dtype", None),
    ("shape", [4]),
    ("shape", "4x4"),
    ("shape", None),
    ("sha256", None),
    ("sha256", 0),
]


@pytest.mark.parametrize("key, value", ARRAY_CASES)
def test_hostile_array_entries_are_refused(table_dir, key, value):
    resign(table_dir, array_setter(key, value))
    with pytest.raises(TableError):
        Table.load(table_dir)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.__setitem__("arrays", []),
        lambda m: m.__setitem__("arrays", {"receiver": "receiver.f64"}),
        lambda m: m["arrays"].__setitem__("extra", m["arrays"]["receiver"]),
        lambda m: m.__setitem__("parameters", [1, 2]),
        lambda m: m.__setitem__("format", "quicdesign-table"),
        lambda m: m["format"].__setitem__("major", "1"),
        lambda m: m.__setitem__("fingerprint", "00" * 8),
    ],
)
def test_hostile_manifest_structure_is_refused(table_dir, edit):
    resign(table_dir, edit)
    with pytest.raises(TableError):
        Table.load(table_dir)


# -- raw manifest bytes ----------------------------------------------------------------
RAW_MANIFESTS = [
    b"",
    b"null",
    b"[]",
    b"1",
    b'"manifest"',
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b"{" * 100_000,
    json.dumps(json.loads("[" * 40 + "]" * 40)).encode(),
    b'{"a": ' * 40 + b"1" + b"}" * 40,
    b'{"format": ' + b"9" * 5000 + b"}",
    b'{"parameters": {"bits": ' + b"1" * 5000 + b"}}",
    b'{"x": NaN}',
    b'{"x": -Infinity}',
    b'{"x": 1e999}',
    b" " * (MAX_MANIFEST_BYTES + 1),
]


@pytest.mark.parametrize("raw", RAW_MANIFESTS, ids=lambda raw: repr(raw[:12]) + str(len(raw)))
def test_hostile_manifest_bytes_are_refused(table_dir, raw):
    (table_dir / "manifest.json").write_bytes(raw)
    with pytest.raises(TableError):
        Table.load(table_dir)


# -- file types: never followed, never blocking ----------------------------------------
def _fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _symlink_to(target):
    def make(path):
        path.unlink(missing_ok=True)
        path.symlink_to(target)

    return make


def _directory(path):
    path.unlink(missing_ok=True)
    path.mkdir()


FILE_KINDS = {
    "fifo": _fifo,
    "dev-zero": _symlink_to("/dev/zero"),
    "dev-null": _symlink_to("/dev/null"),
    "symlink-to-valid-copy": None,  # filled in by the test (a valid file elsewhere)
    "dangling-symlink": _symlink_to("/nonexistent/quicdesign"),
    "directory": _directory,
}


@pytest.mark.parametrize("target", ["manifest.json", "receiver.f64"])
@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_special_files_are_refused_without_blocking(tmp_path, table_dir, target, kind):
    make = FILE_KINDS[kind]
    if make is None:
        copy = tmp_path / "elsewhere"
        copy.write_bytes((table_dir / target).read_bytes())
        make = _symlink_to(copy)
    make(table_dir / target)
    with deadline(), pytest.raises(TableError):
        Table.load(table_dir)


def test_oversized_array_file_is_refused_by_size(table_dir):
    with open(table_dir / "receiver.f64", "ab") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB claimed, nothing read
    with deadline(), pytest.raises(TableError, match="exceeds"):
        Table.load(table_dir)


def test_nul_in_the_path_is_a_table_error(tmp_path):
    for call in (
        lambda: Table.load(tmp_path / "a\0b"),
        lambda: load_table(1, path=tmp_path / "a\0b"),
        lambda: list_tables(tmp_path / "a\0b"),
    ):
        with pytest.raises(TableError):
            call()


# -- collections -----------------------------------------------------------------------
def edit_index(folder, edit):
    index = json.loads((folder / "index.json").read_text())
    edit(index)
    (folder / "index.json").write_text(json.dumps(index))


def entry_setter(key, value):
    def edit(index):
        index["tables"][0][key] = value

    return edit


INDEX_CASES = [
    *[
        entry_setter("directory", name)
        for name in ["..", ".", "", "/", "/tmp", "a/b", "a\0b", ".hidden", "../collection", 5, None]
    ],
    entry_setter("bits", -1),
    entry_setter("bits", "abc"),
    entry_setter("bits", True),
    entry_setter("bits", 2.5),
    entry_setter("shared_bits", 3e10),
    entry_setter("tail_prob", "x"),
    entry_setter("tail_prob", 5),
    entry_setter("threshold", None),
    entry_setter("vnmse", "low"),
    entry_setter("manifest_sha256", None),
    lambda index: index["tables"].__setitem__(0, "b1-l1"),
    lambda index: index.__setitem__("tables", {"b1-l1": {}}),
    lambda index: index.__setitem__("defaults", ["b1-l1"]),
    lambda index: index["defaults"].__setitem__("1", "not-listed"),
    lambda index: index["defaults"].__setitem__("1", 7),
    lambda index: index.__setitem__("tables", index["tables"] * 2000),
    lambda index: index.__setitem__("format", None),
]


@pytest.mark.parametrize("edit", INDEX_CASES)
def test_hostile_index_entries_are_refused_everywhere(collection, edit, capsys):
    edit_index(collection, edit)
    for call in (
        lambda: list_tables(collection),
        lambda: load_table(1, path=collection),
        lambda: load_table(2, shared_bits=2, path=collection),
    ):
        with pytest.raises(TableError):
            call()
    for argv in (
        ["tables", "list", "--path", str(collection)],
        ["tables", "show", "1", "--path", str(collection)],
        ["tables", "verify", "--path", str(collection)],
    ):
        assert main(argv) == 2
        assert_one_error_line(capsys)


def assert_one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quicdesign: error:"), err


RAW_INDEXES = [
    b"[" * 100_000,
    b'{"format": ' + b"7" * 5000 + b"}",
    b"\x00\x01",
    b" " * (MAX_INDEX_BYTES + 1),
    b'{"format": {"name": "quicdesign-table-index", "major": 1}, "tables": NaN}',
]


@pytest.mark.parametrize("raw", RAW_INDEXES, ids=lambda raw: repr(raw[:12]) + str(len(raw)))
def test_hostile_index_bytes_are_refused(collection, raw, capsys):
    (collection / "index.json").write_bytes(raw)
    with pytest.raises(TableError):
        list_tables(collection)
    assert main(["tables", "list", "--path", str(collection)]) == 2
    assert_one_error_line(capsys)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_special_index_files_are_refused_without_blocking(collection, kind):
    FILE_KINDS[kind](collection / "index.json")
    with deadline(), pytest.raises(TableError):
        list_tables(collection)


def test_symlinked_table_directory_outside_the_collection_is_refused(tmp_path, collection):
    outside = make_table(np.random.default_rng(9), bits=1, shared_bits=1).save(tmp_path / "out")
    index = json.loads((collection / "index.json").read_text())
    (collection / "b1-l1").rename(tmp_path / "moved")
    (collection / "b1-l1").symlink_to(outside)
    entry = next(e for e in index["tables"] if e["directory"] == "b1-l1")
    entry["manifest_sha256"] = _sha256((outside / "manifest.json").read_bytes())
    (collection / "index.json").write_text(json.dumps(index))
    with pytest.raises(TableError, match="symlink|real directory"):
        load_table(1, path=collection)


def test_listed_directory_that_is_a_file_is_refused(collection):
    import shutil

    shutil.rmtree(collection / "b1-l1")
    (collection / "b1-l1").write_text("not a directory")
    with pytest.raises(TableError):
        load_table(1, path=collection)


# -- fuzz: any JSON value in any manifest field ----------------------------------------
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = [
    ("parameters", "bits"),
    ("parameters", "shared_bits"),
    ("parameters", "tail_prob"),
    ("parameters", "lower"),
    ("parameters", "upper"),
    ("arrays", "receiver"),
    ("format", "major"),
    (None, "arrays"),
    (None, "parameters"),
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(FIELDS), JSON_VALUES)
def test_fuzzed_manifest_fields_load_or_raise_table_error(table_dir, field, value):
    original = (table_dir / "manifest.json").read_bytes()
    section, key = field

    def edit(manifest):
        (manifest if section is None else manifest[section])[key] = value

    resign(table_dir, edit)
    try:
        table = Table.load(table_dir)
    except TableError:
        pass
    else:  # accepted only if it is still a consistent, unbiased table
        assert table.receiver.shape == (table.num_shared, table.num_messages)
    finally:
        (table_dir / "manifest.json").write_bytes(original)


# -- defaults and collection writes ----------------------------------------------------
def test_one_default_rule_for_the_shipped_tables():
    default = load_table(2)
    assert load_table(2, tail_prob=1 / 512) == default
    assert load_table(2, shared_bits=default.shared_bits) == default
    assert load_table(2, shared_bits=8).shared_bits == 8


def test_default_rule_without_recorded_defaults(collection):
    edit_index(collection, lambda index: index.__setitem__("defaults", {}))
    assert load_table(2, path=collection).shared_bits == 2  # fewest shared bits
    assert load_table(2, tail_prob=1 / 512, path=collection).shared_bits == 2
    (collection / "index.json").unlink()
    write_index(collection)
    index = json.loads((collection / "index.json").read_text())
    assert index["defaults"] == {"1": "b1-l1", "2": "b2-l2"}


def test_write_index_keeps_recorded_defaults_and_every_table(collection):
    write_index(collection, {2: "b2-l3"})
    make_table(np.random.default_rng(5), bits=3, shared_bits=1).save(collection / "b3-l1")
    write_index(collection, {3: "b3-l1"})
    index = json.loads((collection / "index.json").read_text())
    assert index["defaults"] == {"1": "b1-l1", "2": "b2-l3", "3": "b3-l1"}
    assert {e["directory"] for e in index["tables"]} == {"b1-l1", "b2-l2", "b2-l3", "b3-l1"}
    assert load_table(2, path=collection).shared_bits == 3
    with pytest.raises(TableError, match="not in"):
        write_index(collection, {4: "missing"})


def test_write_index_skips_symlinked_and_hidden_directories(tmp_path, collection):
    outside = make_table(np.random.default_rng(3), bits=4, shared_bits=0).save(tmp_path / "o")
    (collection / "link").symlink_to(outside)
    make_table(np.random.default_rng(4), bits=4, shared_bits=0).save(collection / ".hidden")
    write_index(collection)
    listed = {e["directory"] for e in list_tables(collection)}
    assert listed == {"b1-l1", "b2-l2", "b2-l3"}
    with pytest.raises(TableNotFoundError):
        load_table(4, path=collection)


def test_tables_list_accepts_one_table_directory(table_dir, capsys):
    assert main(["tables", "list", "--path", str(table_dir)]) == 0
    assert "t" in capsys.readouterr().out.split()
    assert list_tables(table_dir)[0]["bits"] == 2


@pytest.mark.parametrize("kind", ["parent", "absolute", "nested"])
def test_index_entries_cannot_reach_a_valid_table_outside(tmp_path, kind):
    outer = make_table(np.random.default_rng(7), bits=1, shared_bits=1).save(tmp_path / "outer")
    folder = outer / "collection"
    make_table(np.random.default_rng(8), bits=2, shared_bits=1).save(folder / "b2")
    write_index(folder)
    directory = {"parent": "..", "absolute": str(outer), "nested": "b2/.."}[kind]
    sha = _sha256((outer / "manifest.json").read_bytes())
    edit_index(
        folder,
        entry_setter("directory", directory),
    )
    edit_index(folder, entry_setter("manifest_sha256", sha))
    edit_index(folder, entry_setter("bits", 1))
    edit_index(folder, entry_setter("shared_bits", 1))
    edit_index(folder, lambda index: index.__setitem__("defaults", {}))
    with pytest.raises(TableError, match="plain name"):
        load_table(1, path=folder)
