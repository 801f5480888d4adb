"""safetensors / npz exports: exact round trips, readable by the libraries, tampering refused."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import quicdesign
from quicdesign import Table, TableChecksumError, TableError
from quicdesign.cli import main

FORMATS = ("safetensors", "npz")


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("which", ["fixed-b3", "entropy-2"])
def test_round_trip_is_exact(tmp_path, file_format, which):
    table = quicdesign.load_table(3) if which == "fixed-b3" else quicdesign.load_entropy_table(2)
    path = table.save(tmp_path / f"t.{file_format}", format=file_format)
    loaded = Table.load(path)
    assert loaded.fingerprint == table.fingerprint
    np.testing.assert_array_equal(loaded.receiver, table.receiver)
    assert (loaded.tail_prob, loaded.lower, loaded.upper) == (
        table.tail_prob,
        table.lower,
        table.upper,
    )
    if table.code_model is not None:
        np.testing.assert_array_equal(loaded.code_model, table.code_model)
    assert loaded.manifest == table.manifest
    # and back to the directory format, bit for bit the same arrays
    back = Table.load(loaded.save(tmp_path / "dir"))
    assert back.manifest == table.manifest


def test_the_libraries_read_the_files_without_quicdesign(tmp_path):
    table = quicdesign.load_table(2)
    tensors = load_file(table.save(tmp_path / "t.safetensors", format="safetensors"))
    np.testing.assert_array_equal(tensors["receiver"], table.receiver)
    with safe_open(str(tmp_path / "t.safetensors"), framework="np") as handle:
        meta = handle.metadata()
    assert float.fromhex(meta["upper"]) == table.upper
    assert meta["fingerprint"] == table.fingerprint.hex()
    assert json.loads(meta["manifest"])["parameters"]["bits"] == 2
    with np.load(table.save(tmp_path / "t.npz", format="npz"), allow_pickle=False) as archive:
        meta = json.loads(archive["metadata"].tobytes())
        np.testing.assert_array_equal(archive["receiver"], table.receiver)
    assert float.fromhex(meta["tail_prob"]) == table.tail_prob


def test_edited_metadata_or_tensor_is_refused(tmp_path):
    table = quicdesign.load_table(2)
    path = table.save(tmp_path / "t.safetensors", format="safetensors")
    with safe_open(str(path), framework="np") as handle:
        meta = handle.metadata()
    tensors = load_file(path)
    save_file(tensors, tmp_path / "lower.safetensors", metadata={**meta, "upper": "0x1.8p+1"})
    with pytest.raises(TableChecksumError, match="fingerprint"):
        Table.load(tmp_path / "lower.safetensors")
    tensors["receiver"] = tensors["receiver"] * (1 + 1e-12)
    save_file(tensors, tmp_path / "scaled.safetensors", metadata=meta)
    with pytest.raises(TableChecksumError, match="fingerprint"):
        Table.load(tmp_path / "scaled.safetensors")
    save_file(tensors, tmp_path / "nometa.safetensors")
    with pytest.raises(TableError, match="quicdesign-table-export"):
        Table.load(tmp_path / "nometa.safetensors")
    (tmp_path / "junk.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(TableError, match="safetensors"):
        Table.load(tmp_path / "junk.safetensors")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(TableError, match="npz"):
        Table.load(tmp_path / "junk.npz")
    with pytest.raises(quicdesign.ParameterError, match="format"):
        table.save(tmp_path / "t.bin", format="pickle")


def test_npz_with_an_object_array_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "evil.npz", metadata=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TableError, match="npz"):
        Table.load(tmp_path / "evil.npz")


@pytest.mark.parametrize("file_format", FORMATS)
def test_cli_exports_every_shipped_table(tmp_path, capsys, file_format):
    assert main(["tables", "export", "--format", file_format, "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob(f"*.{file_format}"))
    assert len(files) == len(quicdesign.list_tables()) + 4
    by_fingerprint = {Table.load(f).fingerprint for f in files}
    assert quicdesign.load_table(8).fingerprint in by_fingerprint
    assert quicdesign.load_entropy_table(1).fingerprint in by_fingerprint
    assert f"exported as {file_format}" in capsys.readouterr().out


def test_npz_that_inflates_beyond_a_table_is_refused_before_inflating(tmp_path):
    metadata = np.frombuffer(b"{}", dtype=np.uint8)
    np.savez_compressed(tmp_path / "bomb.npz", metadata=metadata, receiver=np.zeros(10**7))
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000
    with pytest.raises(TableError, match="too large"):
        Table.load(tmp_path / "bomb.npz")
