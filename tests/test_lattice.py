"""Dithered lattice compressors (issue 18): nearest points, dither spec, exact unbiasedness,
error law, code model table format and hostile payloads."""

import itertools
import json
import math

import numpy as np
import pytest

from quicdesign._rans import LANES
from quicdesign.compressors import LatticeD4, LatticeE8, make_compressor
from quicdesign.compressors._common import HEADER_SIZE
from quicdesign.errors import (
    ParameterError,
    PayloadError,
    TableChecksumError,
    TableError,
)
from quicdesign.lattice import (
    LATTICES,
    LatticeCodeModel,
    block_code_lengths,
    load_lattice_model,
    nearest_lattice_point,
)
from quicdesign.randomness import DITHER_VERSION, dither_uniforms

ROUND = 11


def _brute_force(x, spec):
    """Nearest point among all floor/ceil roundings with even sum (and the 1/2 coset)."""
    best, best_distance = None, math.inf
    shifts = (0.0, 0.5) if spec.cosets == 2 else (0.0,)
    for shift in shifts:
        base = np.floor(x - shift)
        for offsets in itertools.product((0, 1), repeat=x.size):
            y = base + np.array(offsets)
            if int(y.sum()) % 2:
                continue
            distance = float(np.sum((x - shift - y) ** 2))
            if distance < best_distance:
                best, best_distance = y + shift, distance
    return best


@pytest.mark.parametrize("name", ["e8", "d4"])
def test_nearest_point_matches_brute_force(name):
    spec = LATTICES[name]
    x = np.random.default_rng(1).uniform(-3, 3, size=(spec.block, 60))  # blocks as columns
    y, coset = nearest_lattice_point(x, spec)
    assert np.all(y.sum(axis=0) % 2 == 0)
    for row, point, c in zip(x.T, y.T, coset, strict=True):
        assert np.allclose(point + 0.5 * c, _brute_force(row, spec))


def test_dither_stream_golden_vector():
    # pinned (docs/randomness.md, lattice dither v1); a port must reproduce these doubles
    assert DITHER_VERSION == 1
    golden = [
        "0x1.b5de149dda131p-1",
        "0x1.51afa15689048p-4",
        "0x1.86b35250234bap-2",
        "0x1.284ea29c917a0p-5",
    ]
    values = dither_uniforms(123456789, 42, 4)
    assert [float.hex(float(v)) for v in values] == golden
    assert np.array_equal(dither_uniforms(123456789, 42, 9)[:4], values)  # stable prefix
    assert not np.array_equal(dither_uniforms(123456789, 43, 4), values)


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
@pytest.mark.parametrize("bits", [1, 4])
def test_exactly_unbiased_and_error_as_designed(cls, bits):
    """Mean of T independent dithers: E||mean - x||^2 = vnmse ||x||^2 / T exactly
    (the error is uniform on the cell, independent of x); accept 0.7x..1.4x, which a
    chi-square with 256 * T degrees of freedom leaves with probability < 1e-6."""
    compressor = cls(bits=bits)
    dim, trials = 256, 200
    x = np.random.default_rng(2).lognormal(size=dim)
    decoded = np.array(
        [
            compressor.decode(
                compressor.encode(x, round_seed=t, client_id=3), dim=dim, round_seed=t
            )
            for t in range(trials)
        ]
    )
    vnmse = compressor.expected_vnmse
    single = np.mean(np.sum((decoded - x) ** 2, axis=1)) / np.sum(x**2)
    assert 0.85 * vnmse < single < 1.15 * vnmse
    mean_error = np.sum((decoded.mean(axis=0) - x) ** 2) / np.sum(x**2)
    assert 0.7 * vnmse / trials < mean_error < 1.4 * vnmse / trials


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
def test_dither_is_the_spec_stream_on_0_2(cls):
    """Uniform on [0, 2)^n (2 Z^n is a sublattice: the error is uniform on the cell)."""
    compressor = cls(bits=2)
    stage = compressor.stages.stages[1]
    state = compressor.stages.client_state(100, ROUND, 9, None)
    n = stage.model.block
    blocks = -(-compressor.stages.stages[0].output_dim(100) // n)
    expected = 2.0 * dither_uniforms(ROUND, 9, blocks * n).reshape(-1, n).T
    assert np.array_equal(
        stage._dither(state, compressor.stages.stages[0].output_dim(100)), expected
    )


@pytest.mark.parametrize("dim", [1, 7, 9, 70000])
def test_awkward_lengths_round_trip(dim):
    """Padding, several rotation chunks and a partial last block (layout of the input)."""
    compressor = LatticeE8(bits=4)
    x = np.random.default_rng(dim).normal(size=dim)
    decoded = compressor.decode(
        compressor.encode(x, round_seed=ROUND, client_id=0), dim=dim, round_seed=ROUND
    )
    assert decoded.shape == (dim,)
    assert np.sum((decoded - x) ** 2) < 8 * compressor.expected_vnmse * np.sum(x**2) + 1e-12


def test_server_sums_in_the_rotated_domain():
    compressor = LatticeE8(bits=2)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 500))
    payloads = [compressor.encode(v, round_seed=ROUND, client_id=i) for i, v in enumerate(vectors)]
    aggregator = compressor.aggregator(500, ROUND)
    for payload in payloads:
        aggregator.add(payload)
    separately = [compressor.decode(p, dim=500, round_seed=ROUND) for p in payloads]
    assert np.allclose(aggregator.result(), np.mean(separately, axis=0), atol=1e-12)
    pipeline = compressor.stages
    assert pipeline.sum_depth == 1  # summed after the lattice stage, rotation inverted once


def test_rate_and_vnmse_meet_the_design():
    compressor = LatticeE8(bits=4)
    dim = 2**14
    x = np.random.default_rng(4).normal(size=dim)
    payload = compressor.encode(x, round_seed=ROUND, client_id=0)
    model = compressor.resolved_model()
    assert abs(8 * len(payload) / dim - model.expected_bits) < 0.05
    assert model.vnmse <= 0.0050


def _spike_after_rotation(compressor, dim):
    """A vector whose rotation is one spike of height sqrt(dim): far outside the code."""
    spike = np.zeros(dim)
    spike[5] = math.sqrt(dim)
    state = compressor.stages.server_state(dim, ROUND)
    return compressor.stages.stages[0].invert(spike, None, state, dim)


def test_far_out_coordinates_are_escaped_and_round_trip():
    compressor = LatticeE8(bits=3)
    x = _spike_after_rotation(compressor, 1024)
    payload = compressor.encode(x, round_seed=ROUND, client_id=0)
    assert int.from_bytes(payload[HEADER_SIZE + 4 : HEADER_SIZE + 8], "little") > 0  # escape count
    decoded = compressor.decode(payload, dim=1024, round_seed=ROUND)
    error = np.sum((decoded - x) ** 2) / np.sum(x**2)
    assert error < 3 * compressor.expected_vnmse


def _valid(compressor, dim=300, client=1):
    x = np.random.default_rng(5).normal(size=dim)
    return compressor.encode(x, round_seed=ROUND, client_id=client)


def _body_fields(payload, chunks):
    offset = HEADER_SIZE + 4 * chunks
    escapes, words = np.frombuffer(payload[offset : offset + 8], "<u4")
    return offset, int(escapes), int(words)


def test_hostile_payloads_are_refused_and_leave_no_trace():
    compressor = LatticeE8(bits=2)
    payload = _valid(compressor)
    aggregator = compressor.aggregator(300, ROUND)
    aggregator.add(_valid(compressor, client=2))
    before = aggregator.result().copy()
    offset, escapes, words = _body_fields(payload, 1)
    data = bytearray(payload)
    cases = {
        "truncated": payload[:-4],
        "oversized": payload + b"\0\0\0\0",
        "huge word count": payload[: offset + 4]
        + (2**31).to_bytes(4, "little")
        + payload[offset + 8 :],
        "escape count beyond the values": payload[:offset]
        + (10**6).to_bytes(4, "little")
        + payload[offset + 4 :],
        "flipped stream byte": bytes(data[:-3]) + bytes([data[-3] ^ 0x55]) + bytes(data[-2:]),
        "bad digest": payload[: offset + 8] + bytes(8) + payload[offset + 16 :],
        # the coded stream (8 u32 states after the escapes, then u16 words)
        "state below the coder's range": payload[: offset + 16] + bytes(4) + payload[offset + 20 :],
        "changed state": bytes(data[: offset + 16])
        + bytes([data[offset + 16] ^ 1])
        + bytes(data[offset + 17 :]),
        "word dropped, count adjusted": payload[: offset + 4]
        + (words - 1).to_bytes(4, "little")
        + payload[offset + 8 : -2],
        "word added, count adjusted": payload[: offset + 4]
        + (words + 1).to_bytes(4, "little")
        + payload[offset + 8 :]
        + b"\x12\x34",
        "zero words": payload[: offset + 4]
        + (0).to_bytes(4, "little")
        + payload[offset + 8 : offset + 16 + 4 * LANES],
        "negative norm": payload[:HEADER_SIZE]
        + np.float32(-1).tobytes()
        + payload[HEADER_SIZE + 4 :],
        "nan norm": payload[:HEADER_SIZE]
        + np.float32(np.nan).tobytes()
        + payload[HEADER_SIZE + 4 :],
    }
    for label, bad in cases.items():
        with pytest.raises(PayloadError):
            aggregator.add(bad)
        assert aggregator.count == 1, label
    # another client's dither: the points decode differently and the digest catches it
    other = bytearray(payload)
    other[9:13] = (7).to_bytes(4, "little")
    with pytest.raises(PayloadError):
        aggregator.add(bytes(other))
    assert np.array_equal(aggregator.result(), before)


def test_an_in_range_escape_is_refused():
    compressor = LatticeE8(bits=3)
    x = _spike_after_rotation(compressor, 1024)
    payload = bytearray(compressor.encode(x, round_seed=ROUND, client_id=0))
    offset, escapes, words = _body_fields(bytes(payload), 1)
    assert escapes > 0
    start = offset + 16  # the first escape
    original = int(np.frombuffer(bytes(payload[start : start + 4]), "<i4")[0])
    payload[start : start + 4] = np.int32(original & 1).tobytes()  # in range, same parity
    with pytest.raises(PayloadError, match="in range"):
        compressor.decode(bytes(payload), dim=1024, round_seed=ROUND)


def test_model_table_round_trip_and_tampering(tmp_path):
    model = load_lattice_model("e8", 2)
    assert model.expected_bits == pytest.approx(2.0, abs=0.01)  # fresh-sample estimate
    saved = model.save(tmp_path / "m")
    again = LatticeCodeModel.load(saved)
    assert again.fingerprint == model.fingerprint and again.scale == model.scale
    weights = saved / "weights.f64"
    raw = bytearray(weights.read_bytes())
    raw[3] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(TableChecksumError):
        LatticeCodeModel.load(saved)
    model.save(tmp_path / "k")
    manifest = json.loads((tmp_path / "k" / "manifest.json").read_text())
    assert manifest["parameters"]["kind"] == "lattice-code-model"
    with pytest.raises(TableError):  # an ordinary receiver table is not a lattice model
        LatticeCodeModel.load(
            __import__("quicdesign.table", fromlist=["shipped_tables_dir"]).shipped_tables_dir()
            / "entropy"
            / "rate2-l6"
        )
    with pytest.raises(TableError, match="class_mass"):
        LatticeCodeModel("e8", 1.0, model.weights, model.class_mass * 2)
    with pytest.raises(TableError):
        LatticeCodeModel("e8", float("nan"), model.weights, model.class_mass)


def test_model_of_another_lattice_is_refused():
    with pytest.raises(ParameterError):
        LatticeE8(model=load_lattice_model("d4", 1)).encode(
            np.ones(8), round_seed=ROUND, client_id=0
        )
    with pytest.raises(ParameterError):
        make_compressor("lattice-e8", bits=5).encode(np.ones(8), round_seed=ROUND, client_id=0)


def test_coded_length_is_the_model_code_length():
    """The rANS stream costs the model's ideal code length: the information in the words
    and final states (less the encoder's start states) is within 0.2 % of it."""
    compressor = LatticeE8(bits=1)
    dim = 2**13
    x = np.random.default_rng(6).normal(size=dim)
    payload = compressor.encode(x, round_seed=ROUND, client_id=0)
    model = compressor.resolved_model()
    stage = compressor.stages.stages[1]
    state = compressor.stages.client_state(dim, ROUND, 0, None)
    rotated, _ = compressor.stages.stages[0].apply(np.asarray(x, float), state)
    chunks = rotated.reshape(8, -1) if dim >= 8 * 1024 else rotated.reshape(1, -1)
    unit = chunks / np.linalg.norm(chunks, axis=1, keepdims=True) * math.sqrt(chunks.shape[1])
    dither = stage._dither(state, dim)
    y, coset = nearest_lattice_point(unit.reshape(-1, 8).T / model.scale + dither, model.spec)
    ideal = float(np.sum(block_code_lengths(model, dither, y, coset)))
    offset, escapes, words = _body_fields(payload, chunks.shape[0])
    assert escapes == 0
    states = np.frombuffer(payload[offset + 16 : offset + 16 + 4 * LANES], "<u4")
    assert len(payload) == offset + 16 + 4 * LANES + 2 * words
    information = 16 * words + float(np.sum(np.log2(states.astype(float)))) - 16 * LANES
    assert 0.999 * ideal <= information <= 1.002 * ideal


def test_bench_dme_reports_stratified_by_correlation_and_plots_the_lattice(tmp_path, capsys):
    from quicdesign.cli import main

    status = main(
        [
            "bench", "dme", "--small", "--compressors", "quicfl-ec", "lattice-e8",
            "--bits", "1", "4", "--families", "normal", "--clients", "1", "--trials", "1",
            "--out", str(tmp_path), "--no-progress", "--stratified",
        ]
    )  # fmt: skip
    assert status == 0
    table = (tmp_path / "stratified.md").read_text().splitlines()
    correlations = [line.split("|")[3].strip() for line in table[2:]]
    assert correlations == ["1", "0.99", "0.9", "0.5"] * 3  # b = 1, 2, 4
    assert (tmp_path / "dme_near_bound.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lattice-e8 |" in (tmp_path / "dme.md").read_text()


def test_certified_scalar_floor_is_the_envelope_of_the_shipped_proofs():
    from quicdesign.bench.dme_plots import certified_scalar_floor

    _, anchors = certified_scalar_floor([1.0])
    assert len(anchors) == 4
    floor, _ = certified_scalar_floor([rate for rate, _ in anchors])
    for value, (_, anchor) in zip(floor, anchors, strict=True):
        assert value == pytest.approx(anchor, rel=1e-12)  # each proof is tightest at its rate
    floor, _ = certified_scalar_floor([1.0, 2.0, 3.0, 4.0])
    lattice = [load_lattice_model("e8", r) for r in (1, 2, 3, 4)]
    for model, value in zip(lattice, floor, strict=True):
        assert model.expected_bits <= 4.01 and model.vnmse < value  # past the scalar floor


def test_bench_lattice_reports_ratios(capsys):
    from quicdesign.bench.lattice import bench_lattice

    rows = bench_lattice(dim=512, bits=(2,), clients=2, repeats=1, progress=False)
    assert [r["scheme"] for r in rows] == ["quicfl-ec", "lattice-e8", "lattice-d4"]
    assert rows[0]["encode_ratio"] == 1.0 and all(r["encode_ms"] > 0 for r in rows)
    assert "x ec" in capsys.readouterr().out


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_numpy_and_compiled_coders_write_the_same_bytes(cls, bits, monkeypatch):
    """The lattice payload is byte for byte the same with the numba kernels (nearest
    point, model rows, rANS) and the numpy reference (partial blocks, several rotation
    chunks and escapes included), and each side decodes the other's payload."""
    pytest.importorskip("numba")
    compressor = cls(bits=bits)
    for dim in (1, 7, 1001, 4096, 70_001):
        rng = np.random.default_rng(dim + bits)
        vectors = [rng.standard_t(3, dim)]
        if dim == 4096:
            vectors.append(_spike_after_rotation(compressor, dim))  # escapes
        for x in vectors:
            monkeypatch.setenv("QUICDESIGN_KERNELS", "auto")
            compiled = compressor.encode(x, round_seed=ROUND, client_id=3)
            decoded = compressor.decode(compiled, dim=dim, round_seed=ROUND)
            monkeypatch.setenv("QUICDESIGN_KERNELS", "numpy")
            assert compressor.encode(x, round_seed=ROUND, client_id=3) == compiled, dim
            np.testing.assert_array_equal(
                compressor.decode(compiled, dim=dim, round_seed=ROUND), decoded
            )


def _server_state(compressor, payloads, dim, weights):
    aggregator = compressor.aggregator(dim, ROUND)
    for payload, weight in zip(payloads, weights, strict=True):
        aggregator.add(payload, weight)
    return aggregator._sum.tobytes(), aggregator.result().tobytes()


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_compiled_lattice_server_is_bit_identical_to_numpy(cls, bits, monkeypatch):
    """The fused decode kernel gives the numpy path's sums bit for bit (escapes, partial
    blocks and several rotation chunks included), and both accept the same payloads."""
    pytest.importorskip("numba")
    compressor = cls(bits=bits)
    for dim in (1, 7, 1001, 4096, 70_001):
        rng = np.random.default_rng(dim + 10 * bits)
        vectors = list(rng.standard_t(3, size=(3, dim)))
        if dim == 4096:
            vectors.append(_spike_after_rotation(compressor, dim))  # escapes
        payloads = [
            compressor.encode(v, round_seed=ROUND, client_id=i) for i, v in enumerate(vectors)
        ]
        weights = rng.uniform(0.5, 2.0, len(payloads))
        monkeypatch.setenv("QUICDESIGN_KERNELS", "numpy")
        reference = _server_state(compressor, payloads, dim, weights)
        monkeypatch.setenv("QUICDESIGN_KERNELS", "auto")
        assert _server_state(compressor, payloads, dim, weights) == reference, dim


def _refusal(compressor, payload, dim):
    try:
        compressor.aggregator(dim, ROUND).add(payload)
    except PayloadError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
def test_compiled_lattice_decoder_refuses_as_numpy(cls, monkeypatch):
    """Corrupted streams, states and escapes: the kernel refuses every payload the numpy
    path refuses, with the same message."""
    pytest.importorskip("numba")
    compressor = cls(bits=3)
    dim = 1024
    payload = compressor.encode(
        _spike_after_rotation(compressor, dim), round_seed=ROUND, client_id=0
    )
    offset, escapes, words = _body_fields(payload, 1)
    assert escapes > 0
    rng = np.random.default_rng(1)
    cases = []
    stream_start = offset + 16 + 4 * escapes + 4 * LANES
    for _ in range(40):  # flipped bits in the states and the stream
        data = bytearray(payload)
        data[int(rng.integers(offset + 16 + 4 * escapes, len(data)))] ^= 1 << int(rng.integers(8))
        cases.append(bytes(data))
    model = compressor.resolved_model()
    edges = (model.k_min, model.k_min - 1, model.k_min - 2)
    edges += tuple(model.k_min + model.num_symbols + v for v in (-1, 0, 1))
    for position in range(escapes):  # in range, edges, wrong parity, too large
        start = offset + 16 + 4 * position
        for value in (3, 10**6 + 1, 10**6, 2**30 + 2, 2**30, -(2**30) - 2, *edges):
            data = bytearray(payload)
            data[start : start + 4] = np.int32(value).tobytes()
            cases.append(bytes(data))
    cases.append(  # one escape fewer listed than coded
        payload[:offset]
        + (escapes - 1).to_bytes(4, "little")
        + payload[offset + 4 : offset + 16]
        + payload[offset + 20 :]
    )
    for cut in (2, 4, 20):  # words missing, count adjusted
        cases.append(
            payload[: offset + 4]
            + (words - cut // 2).to_bytes(4, "little")
            + payload[offset + 8 : len(payload) - cut]
        )
    assert stream_start < len(payload)
    refused = 0
    for case in cases:
        monkeypatch.setenv("QUICDESIGN_KERNELS", "numpy")
        reference = _refusal(compressor, case, dim)
        monkeypatch.setenv("QUICDESIGN_KERNELS", "auto")
        assert _refusal(compressor, case, dim) == reference
        refused += reference is not None
    assert refused >= len(cases) - 5  # nearly every corruption is caught


def test_point_digest_is_the_documented_hash():
    """blake2b-64 (person ``quicdesign.lat2``) of k as little-endian i32 in (n, blocks) C
    order, then the coset bits as bytes, whatever the arrays' dtype and layout."""
    import hashlib

    from quicdesign.compressors.lattice import _digest

    rng = np.random.default_rng(2)
    k = rng.integers(-(2**30), 2**30, size=(5, 8))
    coset = rng.integers(0, 2, size=8)
    data = k.astype("<i4").tobytes() + coset.astype(np.uint8).tobytes()
    expected = hashlib.blake2b(data, digest_size=8, person=b"quicdesign.lat2").digest()
    for points in (k, k.astype(np.int32), np.asfortranarray(k), k.T.copy().T):
        assert _digest(points, coset) == expected
    assert _digest(k, coset.astype(np.uint8)) == expected
    assert _digest(k[:, ::-1], coset) != expected


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
def test_a_refused_payload_leaves_the_decoder_work_arrays_harmless(cls):
    """The compiled decoder reuses its arrays across an aggregator's payloads: a refused
    payload between two valid ones changes nothing."""
    compressor = cls(bits=1)
    dim = 3000
    rng = np.random.default_rng(4)
    first, second = (
        compressor.encode(rng.normal(size=dim), round_seed=ROUND, client_id=i) for i in (1, 2)
    )
    bad = bytearray(compressor.encode(rng.normal(size=dim), round_seed=ROUND, client_id=3))
    bad[-5] ^= 0x10
    clean = compressor.aggregator(dim, ROUND)
    tried = compressor.aggregator(dim, ROUND)
    clean.add(first)
    tried.add(first)
    with pytest.raises(PayloadError):
        tried.add(bytes(bad))
    clean.add(second)
    tried.add(second)
    assert tried.result().tobytes() == clean.result().tobytes()
