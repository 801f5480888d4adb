"""A second implementation: the C99 reference decoder/encoder in tests/ports/qdref.c.

It is compiled here with the system C compiler (skipped when there is none) and must
verify shipped tables, refuse tampered ones and hostile payloads, decode Python-made
payloads to ``Aggregator.result()`` within 1e-12, and reproduce the golden payloads of
docs/porting.md byte for byte by encoding.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import quicdesign

from ._wire_layout import to_legacy

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "ports" / "qdref.c"
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
# CI sets QUICDESIGN_REQUIRE_CC=1 so that a missing compiler fails instead of skipping.
pytestmark = pytest.mark.skipif(
    COMPILER is None and not os.environ.get("QUICDESIGN_REQUIRE_CC"),
    reason="no C compiler on this machine",
)

#: docs/porting.md, section 6 (round seed 2026, client 3, numpy.random.default_rng(42)).
GOLDEN = [
    {
        "vector": np.array([1.5, -0.25, 3.0, 0.0, -2.0]),
        "bits": 2,
        "payload_hex": "51445146040500000003000000b42d6e046ac7c8be0205016ac7c8bec7e0ce3d"
        "000000008b707a40eaa5",
        "payload_sha256": "19964d008631f6141e069e9d5c63b433a9fbd1d3116d9e06bf5a77e1d07d4d77",
        # the same encoding in wire version 2 (before the envelope), still read
        "legacy_payload_hex": "51445146020205016ac7c8bec7e0ce3d0500000003000000b42d6e04"
        "000000008b707a40eaa5",
        "legacy_payload_sha256": "f9c290a4019e9258cf6af96282afbb5db81a1bf297eff3fc1cad2440b8c374e3",
        "rotated_mean_sha256": "0f6700ae6dd8332455207b94466d9b2c3ae696ff57b8d2639f9c467a6f6607e7",
        "mean_sha256": "d4b810068fb3f314fd2ef15e79dbb47408858b5abff60ae56c550a91a3d89c75",
    },
    {
        "vector": ((np.arange(3000) * 37) % 101 - 50) / 8.0,
        "bits": 4,
        "payload_sha256": "7e217883675394127dc5dc76e6275be958431b80544c513a7948f8f8c14a47e8",
        "legacy_payload_sha256": "6d50a882c40a25af2092b44eaae7e3a47cd2a0b8869ff3cdcbf410a8e21089c1",
        "rotated_mean_sha256": "a262193fdb36c39cef1173f51cef42f19f037a5ed134e4b2d6a7d1184ee0df4c",
        "mean_sha256": "45cdb9b619a25479441ad9f50a5a9a9ad5ce2fd0be520422f868fc64fbbba63d",
    },
]
ROUND_SEED, CLIENT_ID, RNG_SEED = 2026, 3, 42


@pytest.fixture(scope="module")
def qdref(tmp_path_factory):
    binary = tmp_path_factory.mktemp("port") / "qdref"
    subprocess.run(
        [COMPILER, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2"]
        + ["-o", str(binary), str(SOURCE), "-lm"],
        check=True,
        timeout=120,
    )
    return binary


def _run(binary, *args):
    return subprocess.run(
        [str(binary), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _table_dir(table):
    return quicdesign.shipped_tables_dir() / table.name


def test_verifies_every_shipped_fixed_rate_table(qdref):
    for entry in quicdesign.list_tables():
        table = quicdesign.load_table(entry["bits"], entry["shared_bits"], entry["tail_prob"])
        result = _run(qdref, "verify-table", _table_dir(table))
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["ok", table.fingerprint.hex()]


@pytest.mark.parametrize(
    "target, offset, message",
    [
        ("receiver.f64", 9, "receiver sha256"),
        ("manifest.json", 200, "manifest_bytes_sha256"),
    ],
)
def test_refuses_a_tampered_table(qdref, tmp_path, target, offset, message):
    folder = shutil.copytree(_table_dir(quicdesign.load_table(2)), tmp_path / "t")
    data = bytearray((folder / target).read_bytes())
    data[offset] ^= 0x10
    (folder / target).write_bytes(bytes(data))
    result = _run(qdref, "verify-table", folder)
    assert result.returncode == 1 and message in result.stderr


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("dim", [5, 1500, 20000, 33000])  # 33000: 33 chunks of 1024
def test_decodes_python_payloads_to_the_aggregator_result(qdref, tmp_path, bits, dim):
    table = quicdesign.load_table(bits)
    encoder = quicdesign.QuicFLEncoder(table, round_seed=99)
    aggregator = quicdesign.QuicFLAggregator(table, round_seed=99, dim=dim)
    files = []
    for client in range(3):
        vector = np.random.default_rng([bits, dim, client]).standard_t(3, size=dim)
        payload = encoder.encode(vector, client_id=10 + client, rng=client)
        aggregator.add(payload)
        files.append(tmp_path / f"{client}.bin")
        files[-1].write_bytes(payload)
    result = _run(qdref, "decode", _table_dir(table), 99, dim, tmp_path / "mean.f64", *files)
    assert result.returncode == 0, result.stderr
    mean = np.fromfile(tmp_path / "mean.f64", dtype="<f8")
    np.testing.assert_allclose(mean, aggregator.result(), rtol=0, atol=1e-12)


def _payload_variants(payload):
    """Hostile variants of a valid d = 3, b = 1 payload (41 bytes: 4 codes in one byte)."""

    def edited(offset, data):
        return payload[:offset] + data + payload[offset + len(data) :]

    return {
        "truncated": payload[:-1],
        "header only": payload[:36],
        "fingerprint": edited(25, bytes([payload[25] ^ 1])),
        "config tag": edited(17, bytes([payload[17] ^ 1])),
        "padding": edited(40, bytes([payload[40] | 0x80])),  # bits 4..7 are padding
        "version": edited(4, b"\x09"),
        "magic": edited(0, b"QDQE"),
        "dimension": edited(5, b"\x04\0\0\0"),
        "round": edited(13, b"\0\0\0\0"),
        "chunks": edited(23, b"\x02"),
        "oversized": payload + b"\0",
        "nan norm": edited(36, b"\x00\x00\xc0\x7f"),
    }


def test_refuses_hostile_payloads_and_repeated_clients(qdref, tmp_path):
    table = quicdesign.load_table(1)
    payload = quicdesign.QuicFLEncoder(table, 5).encode(np.arange(3.0), client_id=1, rng=0)
    assert len(payload) == 41
    folder, out = _table_dir(table), tmp_path / "m.f64"
    assert (
        _run(qdref, "decode", folder, 5, 3, out, _write(tmp_path / "ok.bin", payload)).returncode
        == 0
    )
    for name, bad in _payload_variants(payload).items():
        result = _run(qdref, "decode", folder, 5, 3, out, _write(tmp_path / "bad.bin", bad))
        assert result.returncode == 1, name
        with pytest.raises(quicdesign.PayloadError):  # the Python server agrees
            quicdesign.QuicFLAggregator(table, 5, 3).add(bad)
    twice = _run(qdref, "decode", folder, 5, 3, out, tmp_path / "ok.bin", tmp_path / "ok.bin")
    assert twice.returncode == 1 and "twice" in twice.stderr
    # the C port reads the current version only; the Python server also reads version 2
    legacy = _write(tmp_path / "v2.bin", to_legacy(payload))
    refused = _run(qdref, "decode", folder, 5, 3, out, legacy)
    assert refused.returncode == 1 and "version" in refused.stderr
    quicdesign.QuicFLAggregator(table, 5, 3).add(legacy.read_bytes())


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("golden", GOLDEN, ids=["d5", "d3000"])
def test_golden_payloads(qdref, tmp_path, golden):
    table = quicdesign.load_table(golden["bits"])
    vector = golden["vector"]
    payload = quicdesign.QuicFLEncoder(table, ROUND_SEED).encode(vector, CLIENT_ID, rng=RNG_SEED)
    assert hashlib.sha256(payload).hexdigest() == golden["payload_sha256"]
    if "payload_hex" in golden:
        assert payload.hex() == golden["payload_hex"]
    aggregator = quicdesign.QuicFLAggregator(table, ROUND_SEED, vector.size)
    aggregator.add(payload)
    rotated = aggregator.rotated_mean().astype("<f8").tobytes()
    assert hashlib.sha256(rotated).hexdigest() == golden["rotated_mean_sha256"]
    assert (
        hashlib.sha256(aggregator.result().astype("<f8").tobytes()).hexdigest()
        == (golden["mean_sha256"])
    )
    # the payload of wire version 2 (published before the envelope) decodes alike
    legacy = to_legacy(payload)
    assert hashlib.sha256(legacy).hexdigest() == golden["legacy_payload_sha256"]
    if "legacy_payload_hex" in golden:
        assert legacy.hex() == golden["legacy_payload_hex"]
    old = quicdesign.QuicFLAggregator(table, ROUND_SEED, vector.size)
    old.add(legacy)
    assert old.rotated_mean().tobytes() == aggregator.rotated_mean().tobytes()
    assert old.result().tobytes() == aggregator.result().tobytes()
    # the C port: the same payload bytes by encoding, the same rotated mean bit for bit
    vector.astype("<f8").tofile(tmp_path / "x.f64")
    args = (_table_dir(table), ROUND_SEED, CLIENT_ID, RNG_SEED, tmp_path / "x.f64")
    assert _run(qdref, "encode", *args, tmp_path / "c.bin").returncode == 0
    assert (tmp_path / "c.bin").read_bytes() == payload
    (tmp_path / "p.bin").write_bytes(payload)
    decode = (_table_dir(table), ROUND_SEED, vector.size, tmp_path / "r.f64", tmp_path / "p.bin")
    assert _run(qdref, "decode-rotated", *decode).returncode == 0
    assert (
        hashlib.sha256((tmp_path / "r.f64").read_bytes()).hexdigest()
        == (golden["rotated_mean_sha256"])
    )


def test_golden_values_are_the_ones_in_the_porting_guide():
    text = (ROOT / "docs" / "porting.md").read_text()
    for golden in GOLDEN:
        for key, value in golden.items():
            if key not in ("vector", "bits"):
                assert value in text.replace("\n", "").replace(" ", ""), key


def test_ties_and_flat_pieces_follow_the_documented_rule(qdref, tmp_path):
    """Identical rows tie every slope (order by index) and a repeated top level leaves
    zero-width pieces at the end (last_open): the C encoder must agree byte for byte."""
    rows = np.tile([-3.0, -1.0, 3.0, 3.0], (4, 1))
    rows[0, 1] = -0.5  # the last open piece randomizes h = 0, the last flat one h = 3
    table = quicdesign.Table(rows, bits=2, shared_bits=2, tail_prob=0.01, lower=-2.5, upper=2.5)
    rule = table.sender
    assert rule.event_shared[rule._last_open] != rule.event_shared[-1]
    folder = table.save(tmp_path / "ties")
    vector = np.random.default_rng(8).standard_t(3, size=1500)
    payload = quicdesign.QuicFLEncoder(table, 77).encode(vector, client_id=4, rng=6)
    vector.astype("<f8").tofile(tmp_path / "x.f64")
    result = _run(qdref, "encode", folder, 77, 4, 6, tmp_path / "x.f64", tmp_path / "c.bin")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.bin").read_bytes() == payload


@pytest.mark.parametrize("bits, dim", [(1, 7), (2, 3000), (4, 33000), (8, 20000)])
def test_encodes_the_same_bytes_as_python(qdref, tmp_path, bits, dim):
    """Layout v2, exact-order transform, rounded-up norms, sender and coins, bit for bit."""
    table = quicdesign.load_table(bits)
    vector = np.random.default_rng([bits, dim]).standard_t(3, size=dim)
    payload = quicdesign.QuicFLEncoder(table, 31).encode(vector, client_id=5, rng=17)
    vector.astype("<f8").tofile(tmp_path / "x.f64")
    args = (_table_dir(table), 31, 5, 17, tmp_path / "x.f64", tmp_path / "c.bin")
    result = _run(qdref, "encode", *args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.bin").read_bytes() == payload
