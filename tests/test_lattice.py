"""Dithered lattice compressors (issue 18): nearest points, dither spec, exact unbiasedness,
error law, code model table format and hostile payloads."""

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from quicdesign._rans import LANES
from quicdesign.compressors import LatticeD4, LatticeE8, make_compressor
from quicdesign.compressors._common import HEADER_SIZE
from quicdesign.compressors.lattice import BODY_VERSION, _bfloat16_scales
from quicdesign.errors import (
    InputVectorError,
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
    assert _body_fields(payload, 1).escapes > 0
    decoded = compressor.decode(payload, dim=1024, round_seed=ROUND)
    error = np.sum((decoded - x) ** 2) / np.sum(x**2)
    assert error < 3 * compressor.expected_vnmse


def _valid(compressor, dim=300, client=1):
    x = np.random.default_rng(5).normal(size=dim)
    return compressor.encode(x, round_seed=ROUND, client_id=client)


def _body_fields(payload, chunks):
    """Parse a body version 3 lattice payload: after the u16 chunk scales, the LEB128
    escape count, the digest, the escapes, the state-length mask and 3- or 4-byte
    states, then the u16 words (as many as the length leaves)."""
    at = HEADER_SIZE + 2 * chunks
    fields = SimpleNamespace(count_at=at, escapes=0)
    shift = 0
    while True:
        byte = payload[at]
        at += 1
        fields.escapes |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    fields.digest_at = at
    fields.escapes_at = at + 8
    fields.mask_at = fields.escapes_at + 4 * fields.escapes
    mask, at = payload[fields.mask_at], fields.mask_at + 1
    fields.state_at, fields.states = [], []
    for lane in range(LANES):
        size = 3 + ((mask >> lane) & 1)
        fields.state_at.append(at)
        fields.states.append(int.from_bytes(payload[at : at + size], "little"))
        at += size
    fields.mask = mask
    fields.words_at = at
    fields.words = (len(payload) - at) // 2
    return fields


def test_hostile_payloads_are_refused_and_leave_no_trace():
    compressor = LatticeE8(bits=2)
    payload = _valid(compressor)
    aggregator = compressor.aggregator(300, ROUND)
    aggregator.add(_valid(compressor, client=2))
    before = aggregator.result().copy()
    body = _body_fields(payload, 1)
    count, mask, words_at = body.count_at, body.mask_at, body.words_at
    assert body.escapes == 0 and 0 < body.mask < 255  # short and long states both present
    short = next(lane for lane in range(LANES) if not (body.mask >> lane) & 1)
    first = body.state_at[0]
    data = bytearray(payload)

    def with_mask(value, states):
        return payload[:mask] + bytes([value]) + states + payload[words_at:]

    long_form = bytearray(payload[mask + 1 : words_at])
    long_form[body.state_at[short] - mask - 1 + 3 : body.state_at[short] - mask - 1 + 3] = b"\0"
    cases = {
        "truncated": payload[:-4],
        "oversized": payload + b"\0\0\0\0",
        "odd stream length": payload + b"\0",
        "ends inside the coder states": payload[: words_at - 2],
        "escape count beyond the values": payload[:count] + b"\xc0\x84\x3d" + payload[count + 1 :],
        "escape count not in shortest form": payload[:count] + b"\x80\x00" + payload[count + 1 :],
        "escape count past five bytes": payload[:count] + b"\xff" * 6 + payload[count + 1 :],
        "escape count beyond the body": payload[:count] + b"\x7f" + payload[count + 1 :],
        "flipped stream byte": bytes(data[:-3]) + bytes([data[-3] ^ 0x55]) + bytes(data[-2:]),
        "bad digest": payload[: body.digest_at] + bytes(8) + payload[body.digest_at + 8 :],
        "state below the coder's range": payload[: body.state_at[short]]
        + bytes(3)
        + payload[body.state_at[short] + 3 :],
        "state in 4 bytes though below 2**24": with_mask(body.mask | 1 << short, long_form),
        "flipped state-length mask": with_mask(
            body.mask ^ 1 << short, payload[mask + 1 : words_at]
        ),
        "changed state": bytes(data[:first]) + bytes([data[first] ^ 1]) + bytes(data[first + 1 :]),
        "word dropped": payload[:-2],
        "word added": payload + b"\x12\x34",
        "zero words": payload[:words_at],
        "negative scale": payload[:HEADER_SIZE]
        + np.uint16(0xBF80).tobytes()  # -1.0
        + payload[HEADER_SIZE + 2 :],
        "nan scale": payload[:HEADER_SIZE]
        + np.uint16(0x7FC0).tobytes()
        + payload[HEADER_SIZE + 2 :],
        "infinite scale": payload[:HEADER_SIZE]
        + np.uint16(0x7F80).tobytes()
        + payload[HEADER_SIZE + 2 :],
        "subnormal scale (never sent)": payload[:HEADER_SIZE]
        + np.uint16(0x0001).tobytes()
        + payload[HEADER_SIZE + 2 :],
        "largest subnormal scale": payload[:HEADER_SIZE]
        + np.uint16(0x007F).tobytes()
        + payload[HEADER_SIZE + 2 :],
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
    body = _body_fields(bytes(payload), 1)
    assert body.escapes > 0
    start = body.escapes_at  # the first escape
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
    _, scales = _bfloat16_scales(np.linalg.norm(chunks, axis=1).astype(np.float32))
    unit = chunks / scales[:, None] * math.sqrt(chunks.shape[1])
    dither = stage._dither(state, dim)
    y, coset = nearest_lattice_point(unit.reshape(-1, 8).T / model.scale + dither, model.spec)
    ideal = float(np.sum(block_code_lengths(model, dither, y, coset)))
    body = _body_fields(payload, chunks.shape[0])
    assert body.escapes == 0
    states = np.array(body.states)
    assert len(payload) == body.words_at + 2 * body.words
    information = 16 * body.words + float(np.sum(np.log2(states.astype(float)))) - 16 * LANES
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
    fields = _body_fields(payload, 1)
    escapes = fields.escapes
    assert 0 < escapes < 128  # a one-byte count
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(40):  # flipped bits in the state lengths, the states and the stream
        data = bytearray(payload)
        data[int(rng.integers(fields.mask_at, len(data)))] ^= 1 << int(rng.integers(8))
        cases.append(bytes(data))
    model = compressor.resolved_model()
    edges = (model.k_min, model.k_min - 1, model.k_min - 2)
    edges += tuple(model.k_min + model.num_symbols + v for v in (-1, 0, 1))
    for position in range(escapes):  # in range, edges, wrong parity, too large
        start = fields.escapes_at + 4 * position
        for value in (3, 10**6 + 1, 10**6, 2**30 + 2, 2**30, -(2**30) - 2, *edges):
            data = bytearray(payload)
            data[start : start + 4] = np.int32(value).tobytes()
            cases.append(bytes(data))
    cases.append(  # one escape fewer listed than coded
        payload[: fields.count_at]
        + bytes([escapes - 1])
        + payload[fields.count_at + 1 : fields.escapes_at]
        + payload[fields.escapes_at + 4 :]
    )
    for cut in (2, 4, 20):  # words missing
        cases.append(payload[:-cut])
    assert fields.words > 10
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


def test_chunk_scales_are_bfloat16_rounded_to_nearest_and_overflow_is_refused():
    codes, values = _bfloat16_scales(np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38, 0.0]))
    # 1 + 2^-8 is a tie (to even: 1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6 (the next even)
    assert list(codes) == [0x3F80, 0x3F80, 0x3F82, 0x7F62, 0]
    assert values[2] == 1.0 + 2**-6 and values[4] == 0.0
    with pytest.raises(InputVectorError, match="bfloat16"):
        _bfloat16_scales(np.array([np.finfo(np.float32).max]))


def test_decoder_scales_by_exactly_the_value_the_client_used():
    """Client and server both use the bfloat16 scale: the decoded rotated vector is
    ``scale / sqrt(m) * s (q - w)`` with ``q`` the nearest point of the input normalized
    by that scale (a float32 norm on either side would be off by up to 2**-9)."""
    compressor = LatticeE8(bits=4)
    dim = 2**14
    x = np.random.default_rng(12).lognormal(size=dim)
    payload = compressor.encode(x, round_seed=ROUND, client_id=3)
    state = compressor.stages.client_state(dim, ROUND, 3, None)
    rotate = compressor.stages.stages[0]
    chunks = rotate.apply(np.asarray(x, float), state)[0].reshape(8, -1)
    codes, scales = _bfloat16_scales(np.linalg.norm(chunks, axis=1).astype(np.float32))
    assert np.array_equal(np.frombuffer(payload[HEADER_SIZE : HEADER_SIZE + 16], "<u2"), codes)
    assert not np.array_equal(scales, np.linalg.norm(chunks, axis=1).astype(np.float32))
    m, stage = chunks.shape[1], compressor.stages.stages[1]
    model = stage.model
    dither = stage._dither(state, dim)
    unit = chunks / scales[:, None] * math.sqrt(m)
    y, coset = nearest_lattice_point(unit.reshape(-1, 8).T / model.scale + dither, model.spec)
    points = (model.scale * (y + 0.5 * coset - dither)).T.reshape(8, m)
    expected = points * (scales / math.sqrt(m))[:, None]
    decoded = compressor.decode(payload, dim=dim, round_seed=ROUND)
    assert np.allclose(rotate.apply(decoded, state)[0].reshape(8, m), expected, atol=1e-9)


def test_a_payload_of_the_previous_body_version_is_refused():
    """Body version 2 (float32 norms, explicit word count) is refused by its config tag."""
    assert BODY_VERSION == 3
    compressor = LatticeE8(bits=2)
    old = LatticeE8(bits=2)
    old._config = lambda: (*compressor._config()[:-1], "body2")
    payload = bytearray(_valid(compressor))
    payload[17:21] = _valid(old)[17:21]  # the envelope's config tag of a version 2 writer
    with pytest.raises(PayloadError, match="config|parameters"):
        compressor.decode(bytes(payload), dim=300, round_seed=ROUND)


def test_point_entropy_sees_a_wrong_model_and_not_the_shipped_one():
    """The shipped product model costs (almost) nothing over H(point | dither); a model
    with twice the variance (square roots of the weights) costs bits the estimator sees."""
    from solvers.lattice import point_entropy

    model = load_lattice_model("d4", 2)
    shipped = point_entropy(model, samples=300, cell_samples=1024, seed=3)
    # the paired gap's noise plus the O(1 / cell_samples) bias of the log of a mean
    assert abs(shipped["gap"]) < 4 * shipped["gap_stderr"] + 0.002
    assert shipped["entropy"] == pytest.approx(2.0, abs=0.05)
    wide = np.sqrt(model.weights)
    masses = np.stack((wide[:, 0::2].sum(axis=1), wide[:, 1::2].sum(axis=1)), axis=1)
    wrong = LatticeCodeModel("d4", model.scale, wide, masses)
    worse = point_entropy(wrong, samples=300, cell_samples=1024, seed=3)
    assert worse["gap"] > 0.05 and worse["gap"] > 5 * worse["gap_stderr"]
    assert worse["entropy"] == pytest.approx(shipped["entropy"], abs=1e-12)  # same points


def test_tables_verify_checks_lattice_models_and_refuses_a_wrong_one(tmp_path, capsys):
    from quicdesign.cli import main

    shipped = load_lattice_model("e8", 1)
    shipped.save(tmp_path / "good")
    # the same manifest over weights of twice the variance: valid checksums, wrong rate
    wide = np.sqrt(shipped.weights)
    masses = np.stack((wide[:, 0::2].sum(axis=1), wide[:, 1::2].sum(axis=1)), axis=1)
    LatticeCodeModel("e8", shipped.scale, wide, masses, shipped.manifest).save(tmp_path / "wide")
    assert main(["tables", "verify", "--path", str(tmp_path / "good")]) == 0
    assert main(["tables", "verify", "--path", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "good             ok" in out and "wide             FAILED" in out and "model_bits" in out
    weights = tmp_path / "good" / "weights.f64"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert main(["tables", "verify", "--path", str(tmp_path / "good")]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**32 - 1])
def test_escape_count_leb128_round_trip(value):
    from quicdesign._wire import PayloadReader, PayloadWriter
    from quicdesign.compressors.lattice import _read_count, _write_count

    writer = PayloadWriter()
    _write_count(writer, value)
    data = writer.to_bytes()
    assert len(data) == max(1, -(-value.bit_length() // 7))
    reader = PayloadReader(data)
    assert _read_count(reader, "count", 2**32 - 1) == value
    assert reader.remaining == 0
    if value:
        with pytest.raises(PayloadError, match="more than"):
            _read_count(PayloadReader(data), "count", value - 1)
    padded = data[:-1] + bytes([data[-1] | 0x80, 0])  # the same value, one byte longer
    with pytest.raises(PayloadError, match="shortest" if len(padded) <= 5 else "past 5"):
        _read_count(PayloadReader(padded), "count", 2**32 - 1)


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
def test_payloads_and_sums_are_byte_identical_between_numpy_and_compiled(cls, monkeypatch):
    pytest.importorskip("numba")
    from quicdesign._kernels import KERNELS_ENV

    spike = _spike_after_rotation(cls(bits=3), 1024)  # escapes too
    vectors = [np.random.default_rng(13).normal(size=1024), spike]
    results = {}
    for kernels in ("numpy", "auto"):
        monkeypatch.setenv(KERNELS_ENV, kernels)
        compressor = cls(bits=3)
        payloads = [
            compressor.encode(v, round_seed=ROUND, client_id=i) for i, v in enumerate(vectors)
        ]
        aggregator = compressor.aggregator(1024, ROUND)
        for payload in payloads:
            aggregator.add(payload)
        results[kernels] = (payloads, aggregator.result().tobytes())
    assert results["numpy"] == results["auto"]
    assert _body_fields(results["numpy"][0][1], 1).escapes > 0


@pytest.mark.parametrize("cls", [LatticeE8, LatticeD4])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_compiled_point_coder_matches_numpy_at_the_escape_edges(cls, bits, monkeypatch):
    """Points around both ends of the code's range (every symbol next to the escape):
    the compiled encoder gives the numpy stream, escapes and digest."""
    pytest.importorskip("numba")
    stage = cls(bits=bits).stages.stages[1]
    model, n = stage.model, stage.model.block
    rng = np.random.default_rng(bits)
    blocks = 600
    low, high = model.k_min - 4, model.k_min + model.num_symbols + 4
    y = rng.integers(low, high, size=(n, blocks)).astype(np.float64)
    y[-1] += y.sum(axis=0) % 2  # even sums
    coset = rng.integers(0, model.spec.cosets, size=blocks)
    uniforms = rng.random(n * blocks)
    coded = {}
    for kernels in ("numpy", "auto"):
        monkeypatch.setenv("QUICDESIGN_KERNELS", kernels)
        states, words, escapes, digest = stage._code(y, coset, uniforms)
        coded[kernels] = (states.tobytes(), words.tobytes(), escapes.tobytes(), digest)
    assert coded["numpy"] == coded["auto"]
    assert len(coded["numpy"][2]) > 4 * 50  # many escapes, on both sides


def test_lattice_contribution_is_the_plain_one_and_bounds_both_signs():
    """The stage's cheaper contribution gives Stage.contribution's values, and refuses a
    decoded magnitude beyond 2**192 on either side of zero."""
    from quicdesign.rotation import RotationLayout
    from quicdesign.stages import Stage

    compressor = LatticeE8(bits=2)
    stage = compressor.stages.stages[1]
    dim = 3000
    state = compressor.stages.server_state(dim, ROUND)
    layout = RotationLayout.for_dim(dim)
    unit = np.random.default_rng(3).normal(size=layout.rotated_dim)
    norms = np.linspace(0.5, 2.0, layout.num_chunks)
    mine = stage.contribution(None, (norms, unit), state, dim, 0.7)
    plain = Stage.contribution(stage, None, (norms, unit), state, dim, 0.7)
    assert mine.tobytes() == plain.tobytes()
    for sign in (1.0, -1.0):
        spike = np.zeros(layout.rotated_dim)
        spike[5] = sign * 2.0**30
        huge = np.full(layout.num_chunks, 2.0**175)
        with pytest.raises(PayloadError, match="2\\*\\*192"):
            stage.contribution(None, (huge, spike), state, dim, 1.0)
