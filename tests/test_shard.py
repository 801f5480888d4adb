"""Shard format, pure merges and pickling of aggregators and tables (docs/shard-format.md)."""

import hashlib
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import quicdesign
from quicdesign import ParameterError, PayloadError, QuicFLAggregator, QuicFLEncoder
from quicdesign.compressors import COMPRESSORS, make_compressor
from quicdesign.shard import _HEADER, SHARD_MAGIC, from_bytes, read_state, shard_size, to_bytes

from ._fuzz import MUTATIONS, mutate

ROUND = 0xFEDCBA9876543210  # needs all 64 bits: shards carry the full seed
DIM = 300


@pytest.fixture(scope="module")
def table():
    return quicdesign.load_table(2)


def filled(table, clients, dim=DIM, round_seed=ROUND):
    encoder = QuicFLEncoder(table, round_seed)
    aggregator = QuicFLAggregator(table, round_seed, dim)
    for client in clients:
        vector = np.random.default_rng(client).normal(size=dim)
        aggregator.add(encoder.encode(vector, client, rng=client), weight=1 + client % 3)
    return aggregator


def snapshot(aggregator):
    return (aggregator.clients, aggregator.total_weight, aggregator._sum.tobytes())


def reseal(body: bytes, key=b"") -> bytes:
    """Recompute the checksum, as an attacker who knows the (unkeyed) format can."""
    digest = hashlib.blake2b(body, digest_size=32, key=key, person=b"quicdesign.shd1").digest()
    return body + digest


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_every_scheme_round_trips_through_bytes_and_pickle(name):
    compressor = make_compressor(name)
    aggregator = compressor.aggregator(DIM, ROUND)
    rng = np.random.default_rng(1)
    for client in (5, 2, 9):
        aggregator.add(compressor.encode(rng.normal(size=DIM), round_seed=ROUND, client_id=client))
    data = aggregator.to_bytes()
    back = type(aggregator).from_bytes(compressor, data)
    assert back.clients == {2, 5, 9} and back.total_weight == aggregator.total_weight
    np.testing.assert_array_equal(back.result(), aggregator.result())
    unpickled = pickle.loads(pickle.dumps(aggregator))
    np.testing.assert_array_equal(unpickled.result(), aggregator.result())
    # the clients travel sorted and the full seed is in the header
    state = read_state(data)
    assert state.clients.tolist() == [2, 5, 9] and state.round_seed == ROUND


def test_layout_is_the_documented_one(table):
    aggregator = filled(table, [3, 1])
    data = aggregator.to_bytes()
    total = aggregator._sum.reshape(-1)
    assert len(data) == shard_size(total.size, 2) == 45 + 8 + 8 * total.size + 32
    magic, version, scheme, fingerprint, seed, dim, size, count, weight = _HEADER.unpack_from(data)
    assert (magic, version, scheme) == (SHARD_MAGIC, 1, b"QDQF")
    assert (fingerprint, seed, dim, size, count) == (table.fingerprint, ROUND, DIM, total.size, 2)
    assert weight == aggregator.total_weight
    assert np.frombuffer(data, "<u4", 2, 45).tolist() == [1, 3]
    np.testing.assert_array_equal(np.frombuffer(data, "<f8", total.size, 53), total)
    assert data[-32:] == reseal(data[:-32])[-32:]


def test_pickles_ship_only_what_cannot_be_regenerated(table):
    for name in sorted(COMPRESSORS):  # empty aggregators at d = 2^18: the sum and little else
        aggregator = make_compressor(name).aggregator(2**18, ROUND)
        assert len(pickle.dumps(aggregator)) <= 1.1 * aggregator._sum.nbytes, name
    # the stored arrays (receiver, code model, bound arrays) and the manifest; none of the
    # sender rule's derived tables
    stored = sum(array.nbytes for _, array in table._array_files().values())
    assert len(pickle.dumps(table)) < stored + len(repr(table.manifest)) + 1024
    back = pickle.loads(pickle.dumps(table))
    assert back == table and back.vnmse == table.vnmse
    entropy_table = quicdesign.load_entropy_table(2)
    assert pickle.loads(pickle.dumps(entropy_table)).fingerprint == entropy_table.fingerprint


def test_merged_is_pure_and_works_on_read_only_arrays(table):
    left, right = filled(table, range(0, 4)), filled(table, range(4, 8))
    before = snapshot(left), snapshot(right)
    for aggregator in (left, right):  # like arrays handed out by Ray's object store
        aggregator._sum.setflags(write=False)
    combined = left.merged(right)
    assert (snapshot(left), snapshot(right)) == before
    serial = filled(table, range(8))
    np.testing.assert_allclose(combined.result(), serial.result(), rtol=0, atol=1e-12)
    assert combined.count == 8
    combined.add(QuicFLEncoder(table, ROUND).encode(np.ones(DIM), 99, rng=0))  # still usable
    assert left.count == 4


def test_merge_of_shard_bytes_equals_serial(table):
    parts = [filled(table, range(start, start + 3)) for start in (0, 3, 6)]
    shards = [part.to_bytes() for part in parts]
    result = quicdesign.merge(shards, table)
    np.testing.assert_allclose(result.result(), filled(table, range(9)).result(), atol=1e-12)
    mixed = quicdesign.merge([parts[0], shards[1], parts[2]], table)
    np.testing.assert_array_equal(mixed.result(), result.result())
    assert parts[0].count == 3
    with pytest.raises(ParameterError, match="table or compressor"):
        quicdesign.merge(shards)
    with pytest.raises(ParameterError, match="at least one"):
        quicdesign.merge([])
    with pytest.raises(ParameterError, match="count twice"):
        quicdesign.merge([parts[0], parts[0].to_bytes()], table)


def test_keyed_checksum(table):
    data = filled(table, [1]).to_bytes(key=b"cluster secret")
    assert from_bytes(table, data, key=b"cluster secret").clients == {1}
    for key in (None, b"other"):
        with pytest.raises(PayloadError, match="checksum"):
            from_bytes(table, data, key=key)
    for bad_key in (b"k" * 65, "text"):
        with pytest.raises(ParameterError, match="key must be bytes"):
            filled(table, [1]).to_bytes(key=bad_key)


def corrupt_fields(table):
    """Shards that pass the checksum (resealed) but carry bad or foreign fields."""
    good = filled(table, [1, 2]).to_bytes()
    body = bytearray(good[:-32])
    size = filled(table, [1]).to_bytes()  # a valid one-client shard for reference
    cases = {}

    def patch(name, offset, fmt, value):
        edited = bytearray(body)
        struct.pack_into(fmt, edited, offset, value)
        cases[name] = (reseal(bytes(edited)), None)

    patch("version", 4, "<B", 2)
    patch("scheme", 5, "<4s", b"QDSQ")
    patch("fingerprint", 9, "<8s", b"\0" * 8)
    patch("round", 17, "<Q", ROUND ^ 1)
    patch("dim", 25, "<I", DIM + 1)  # same rotated size: only the expectation catches it
    patch("zero dim", 25, "<I", 0)
    patch("weight nan", 37, "<d", float("nan"))
    patch("weight negative", 37, "<d", -1.0)
    patch("clients unsorted", 45, "<I", 7)
    patch("sum nan", 53, "<d", float("inf"))
    patch("huge count", 33, "<I", 2**32 - 1)
    patch("huge sum", 29, "<I", 2**32 - 1)
    cases["flipped"] = (good[:60] + bytes([good[60] ^ 1]) + good[61:], "checksum")
    cases["truncated"] = (good[:-1], "truncated")
    cases["magic"] = (b"XXXX" + good[4:], "magic")
    cases["empty"] = (b"", "truncated")
    assert len(size) < len(good)
    return cases


def test_hostile_shards_are_refused_and_change_nothing(table):
    target = filled(table, [40, 41])
    before = snapshot(target)
    for name, (data, message) in corrupt_fields(table).items():
        # the receiver knows its round and dimension: a resealed shard of another one fails
        with pytest.raises(PayloadError, match=message):
            from_bytes(table, data, round_seed=ROUND, dim=DIM)
        with pytest.raises(PayloadError):
            target.merge(quicdesign.shard.from_bytes(table, data, round_seed=ROUND, dim=DIM))
        with pytest.raises(PayloadError):
            quicdesign.merge([target, data], table)
        assert snapshot(target) == before, name
    with pytest.raises(PayloadError, match="must be bytes, got str"):
        from_bytes(table, "text")


def test_foreign_shards_are_refused(table):
    data = filled(table, [1]).to_bytes()
    with pytest.raises(PayloadError, match="fingerprint"):
        from_bytes(quicdesign.load_table(3), data)
    with pytest.raises(PayloadError, match="another round"):
        from_bytes(table, data, round_seed=ROUND - 1)
    with pytest.raises(PayloadError, match="dimension"):
        from_bytes(table, data, dim=DIM + 1)
    with pytest.raises(PayloadError, match="scheme"):
        from_bytes(make_compressor("sq"), data)
    sq = make_compressor("sq", bits=2)
    sq_shard = sq.aggregator(DIM, ROUND).to_bytes()
    with pytest.raises(PayloadError, match="fingerprint"):
        from_bytes(make_compressor("sq", bits=3), sq_shard)
    with pytest.raises(PayloadError, match="not decoded with a table"):
        from_bytes(table, sq_shard)
    with pytest.raises(ParameterError, match="Table or a Compressor"):
        from_bytes("table", data)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=MUTATIONS.map(lambda edit: [edit]))
def test_fuzzed_shards_never_load(table, edits):
    data = to_bytes(filled(table, [1, 2]))
    mutated = mutate(data, edits)
    if mutated != data:
        with pytest.raises(PayloadError):
            from_bytes(table, mutated)
