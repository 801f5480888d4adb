"""Table save/load round trips, tampering, versions, shipped tables."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import quicdesign
from quicdesign import (
    Table,
    TableChecksumError,
    TableError,
    TableNotFoundError,
    TableVersionError,
    load_table,
)
from quicdesign.reference import QUIC_FL_VNMSE, values
from quicdesign.table import write_index

OFFICIAL = values(QUIC_FL_VNMSE)


def make_table(rng, bits=2, shared_bits=2, tail_prob=1 / 512):
    values = np.sort(rng.normal(size=(2**shared_bits, 2**bits)) * 2, axis=1)
    # Every row's end messages lie outside [lower, upper] = [-3, 3], so the sender covers
    # the support for any draw and Table() accepts it (pushing the ends by a fixed amount
    # did not: a row whose smallest draw exceeded 2 left -3 uncovered, e.g. b=1, l=0).
    values[:, 0] = np.minimum(values[:, 0], -3.0) - 2.0
    values[:, -1] = np.maximum(values[:, -1], 3.0) + 2.0
    return Table(
        values,
        bits=bits,
        shared_bits=shared_bits,
        tail_prob=tail_prob,
        lower=-3.0,
        upper=3.0,
        manifest={"quality": {"vnmse": 0.5}},
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(1, 4), st.integers(0, 4), st.integers(0, 2**32 - 1))
@example(1, 0, 6)  # the draw that the old strategy turned into a table Table() refuses
def test_save_load_round_trip(tmp_path, bits, shared_bits, seed):
    table = make_table(np.random.default_rng(seed), bits, shared_bits)
    folder = table.save(tmp_path / f"t{seed}-{bits}-{shared_bits}")
    loaded = Table.load(folder)
    assert loaded == table
    np.testing.assert_array_equal(loaded.receiver, table.receiver)
    assert (loaded.bits, loaded.shared_bits, loaded.tail_prob) == (bits, shared_bits, 1 / 512)
    assert loaded.vnmse == 0.5
    assert loaded.manifest == table.manifest


def test_tampered_array_is_rejected(tmp_path):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    data = bytearray((folder / "receiver.f64").read_bytes())
    data[5] ^= 0x01
    (folder / "receiver.f64").write_bytes(bytes(data))
    with pytest.raises(TableChecksumError, match="sha256"):
        Table.load(folder)


def test_truncated_array_is_rejected_before_reading(tmp_path):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    (folder / "receiver.f64").write_bytes(b"\0" * 8)
    with pytest.raises(TableError, match="bytes, expected"):
        Table.load(folder)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["parameters"].__setitem__("upper", 2.9),
        lambda m: m["quality"].__setitem__("vnmse", 0.1),
        lambda m: m["arrays"]["receiver"].__setitem__("sha256", "0" * 64),
    ],
)
def test_tampered_manifest_is_rejected(tmp_path, edit):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TableChecksumError):
        Table.load(folder)


def _rewrite(folder, edit):
    """Edit a manifest and sign it again (both self-hashes valid)."""
    from quicdesign.table import _serialize_manifest

    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_bytes(_serialize_manifest(manifest))


def _write_format_1_0(folder):
    """Turn a saved table into what release 1.0 wrote: canonical-JSON self-hash only."""
    from quicdesign.table import _canonical_json, _sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("manifest_sha256", "manifest_bytes_sha256"):
        manifest.pop(key)
    manifest["parameters"].pop("exact")
    manifest["format"]["minor"] = 0
    manifest["manifest_sha256"] = _sha256(_canonical_json(manifest))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def test_format_1_0_manifests_are_still_read_and_checked(tmp_path):
    table = make_table(np.random.default_rng(3))
    folder = table.save(tmp_path / "t")
    _write_format_1_0(folder)
    assert Table.load(folder) == table
    text = (folder / "manifest.json").read_text().replace('"vnmse": 0.5', '"vnmse": 0.25')
    (folder / "manifest.json").write_text(text)
    with pytest.raises(TableChecksumError, match="manifest sha256"):
        Table.load(folder)


def test_manifest_bytes_hash_needs_no_json_canonicalizer(tmp_path):
    """A port may spell numbers its own way and omit the 1.0 hash: only raw bytes count."""
    from quicdesign.table import manifest_bytes_digest

    table = make_table(np.random.default_rng(4))
    folder = table.save(tmp_path / "t")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("manifest_sha256")
    manifest["manifest_bytes_sha256"] = "0" * 64
    text = json.dumps(manifest, separators=(", ", ": ")).replace('"vnmse": 0.5', '"vnmse": 5E-1')
    raw = text.encode()
    raw = raw.replace(b'"0' + b"0" * 63 + b'"', f'"{manifest_bytes_digest(raw)}"'.encode())
    (folder / "manifest.json").write_bytes(raw)
    assert Table.load(folder) == table
    # one changed byte anywhere (here: whitespace) is refused
    (folder / "manifest.json").write_bytes(raw.replace(b", ", b",  ", 1))
    with pytest.raises(TableChecksumError, match="bytes sha256"):
        Table.load(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw.replace(b'_bytes_sha256": "', b'_bytes_sha256": "x'), "hex"),
        (lambda raw: raw[:-2] + b', "manifest_sha256": "' + b"0" * 64 + b'"}\n', "more than once"),
        (lambda raw: raw.replace(b'"format"', b'"formats"', 1), "not a quicdesign-table"),
    ],
)
def test_malformed_self_hashes_are_refused(tmp_path, damage, message):
    folder = make_table(np.random.default_rng(5)).save(tmp_path / "t")
    path = folder / "manifest.json"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TableError, match=message):
        Table.load(folder)


def test_exact_hex_parameters_must_equal_the_numbers(tmp_path):
    table = make_table(np.random.default_rng(6))
    folder = table.save(tmp_path / "t")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["parameters"]["exact"] == {
        "tail_prob": "0x1.0000000000000p-9",
        "lower": "-0x1.8000000000000p+1",
        "upper": "0x1.8000000000000p+1",
    }
    _rewrite(folder, lambda m: m["parameters"]["exact"].__setitem__("upper", "0x1.8p+2"))
    with pytest.raises(TableError, match="exact.upper"):
        Table.load(folder)
    _rewrite(folder, lambda m: m["parameters"]["exact"].__setitem__("upper", "three"))
    with pytest.raises(TableError, match="float.hex"):
        Table.load(folder)


def test_unknown_major_version_is_refused_even_with_a_valid_checksum(tmp_path):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    _rewrite(folder, lambda m: m["format"].__setitem__("major", 2))
    with pytest.raises(TableVersionError, match="major version 2"):
        Table.load(folder)


def test_newer_minor_version_is_accepted(tmp_path):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    _rewrite(folder, lambda m: m["format"].__setitem__("minor", 7))
    assert Table.load(folder).bits == 2


def test_path_traversal_in_array_file_is_refused(tmp_path):
    folder = make_table(np.random.default_rng(0)).save(tmp_path / "t")
    _rewrite(folder, lambda m: m["arrays"]["receiver"].__setitem__("file", "../evil.bin"))
    with pytest.raises(TableError, match="plain file name"):
        Table.load(folder)


def test_biased_table_is_refused():
    with pytest.raises(TableError, match="biased"):
        Table([[-1.0, 1.0]], bits=1, shared_bits=0, tail_prob=0.01, lower=-2.0, upper=2.0)


def test_not_json_and_missing_manifest(tmp_path):
    with pytest.raises(TableNotFoundError):
        Table.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(TableError, match="JSON"):
        Table.load(tmp_path)


def test_collection_index_lookup_and_index_checksum(tmp_path):
    rng = np.random.default_rng(1)
    for shared_bits in (1, 3):
        table = make_table(rng, 2, shared_bits)
        table.save(tmp_path / table.name)
    write_index(tmp_path, {2: make_table(rng, 2, 1).name})
    assert load_table(2, path=tmp_path).shared_bits == 1
    assert load_table(2, 3, path=tmp_path).shared_bits == 3
    with pytest.raises(TableNotFoundError, match="available"):
        load_table(3, path=tmp_path)
    manifest = tmp_path / make_table(rng, 2, 3).name / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(TableChecksumError, match="index"):
        load_table(2, 3, path=tmp_path)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_shipped_default_loads_and_is_unbiased(bits):
    import solvers

    table = load_table(bits)
    assert table.receiver.shape == (2**table.shared_bits, 2**bits)
    assert table.tail_prob == pytest.approx(1 / 512)
    assert table.threshold == pytest.approx(3.0972690781987846, rel=1e-12)
    report = solvers.verify(table, grid_points=2001)
    assert report.ok, report
    assert table.manifest["design"]["certificate"]["ok"]


@pytest.mark.parametrize("bits, shared_bits", sorted(OFFICIAL))
def test_shipped_tables_beat_official_tables(bits, shared_bits):
    assert load_table(bits).shared_bits == shared_bits
    assert load_table(bits, shared_bits).vnmse < OFFICIAL[bits, shared_bits]
    assert load_table(bits, 8).vnmse <= load_table(bits, shared_bits).vnmse


def test_shipped_tables_are_small():
    folder = quicdesign.shipped_tables_dir()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    # Receivers are tiny; most bytes are the lower-bound proofs (edges and multipliers,
    # up to 15360 cells for b = 4), ~1.3 MB in all.
    assert total < 2_000_000


def test_import_quicdesign_stays_numpy_only():
    code = (
        "import sys, quicdesign, quicdesign.cli; "
        "heavy = [m for m in ('cvxpy', 'highspy', 'joblib', 'solvers', 'scipy', 'torch', 'tqdm')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_without_manifest_drops_sections_and_keeps_the_quantizer_and_proof():
    shipped = quicdesign.load_table(2)
    tagged = shipped.with_manifest(cache={"key": "k"})
    assert tagged.manifest["cache"] == {"key": "k"}
    plain = tagged.without_manifest("cache", "absent-section")
    assert "cache" not in plain.manifest
    assert plain == shipped and plain.manifest == shipped.manifest
    if shipped.manifest.get("global_bound") is not None:
        edges, multipliers = plain.bound_arrays()
        np.testing.assert_array_equal(edges, shipped.bound_arrays()[0])
        np.testing.assert_array_equal(multipliers, shipped.bound_arrays()[1])
    assert "global_bound" not in shipped.without_manifest("global_bound").manifest
