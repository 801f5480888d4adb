"""Shipped tables verify with a from-spec reader that never imports quicdesign."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READER = ROOT / "tests" / "ports" / "verify_tables.py"
COLLECTIONS = [ROOT / "tables", ROOT / "tables" / "entropy"]


def _run_reader(*folders):
    # -I: isolated mode, so neither PYTHONPATH nor the working directory can supply quicdesign
    return subprocess.run(
        [sys.executable, "-I", str(READER), *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_shipped_table_verifies_from_the_spec_alone():
    import quicdesign

    result = _run_reader(*COLLECTIONS)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    expected = {e["directory"] for e in quicdesign.list_tables()}
    expected |= {f"entropy/{e['directory']}" for e in quicdesign.list_tables(COLLECTIONS[1])}
    seen = {line.split()[1].split("tables/", 1)[1]: line.split()[2] for line in lines}
    assert set(seen) == expected
    # the from-spec fingerprint is the one the runtime carries in payloads
    for bits in range(1, 9):
        table = quicdesign.load_table(bits)
        assert seen[table.name] == table.fingerprint.hex()


@pytest.mark.parametrize(
    "target, offset",
    [
        ("b2-l5-p1in512/receiver.f64", 17),
        ("b2-l5-p1in512/manifest.json", 40),
        ("index.json", 100),
    ],
)
def test_the_from_spec_reader_refuses_one_flipped_byte(tmp_path, target, offset):
    copy = tmp_path / "tables"
    shutil.copytree(COLLECTIONS[0], copy, ignore=shutil.ignore_patterns("entropy"))
    assert _run_reader(copy).returncode == 0
    path = copy / target
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))
    result = _run_reader(copy)
    assert result.returncode == 1
    assert "FAILED" in result.stdout
