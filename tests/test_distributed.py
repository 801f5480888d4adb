"""Sweeps and tree aggregation on real engines: a Dask LocalCluster and a local Ray.

Each engine is started and stopped by its module-scoped fixture (2 workers, 1 thread each).
"""

import os

import numpy as np
import pytest

import quicdesign
from quicdesign import ParameterError, PayloadError, QuicFLEncoder
from quicdesign.compressors import COMPRESSORS, make_compressor
from quicdesign.distributed import _combine, _leaf, aggregate, tree_levels

ROUND = 2**63 + 12345
DIM = 700
SPECS = [(1, 1), (2, 1), (1, 2), (2, 2)]
DESIGN = {"certify": False, "starts": 1, "max_iter": 200}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table():
    return quicdesign.load_table(2)


@pytest.fixture(scope="module")
def payloads(table):
    encoder = QuicFLEncoder(table, ROUND)
    return [
        encoder.encode(np.random.default_rng(client).normal(size=DIM), client, rng=client)
        for client in range(64)
    ]


@pytest.fixture(scope="module")
def weights():
    return [1.0 + client % 5 for client in range(64)]


@pytest.fixture(scope="module")
def serial(table, payloads, weights):
    aggregator = quicdesign.QuicFLAggregator(table, ROUND, DIM)
    for payload, weight in zip(payloads, weights, strict=True):
        aggregator.add(payload, weight)
    return aggregator.result()


@pytest.fixture(scope="module")
def loky_designs():
    from solvers.sweep import sweep

    return sweep(SPECS, n_jobs=2, backend="loky", progress=False, **DESIGN)


def same_designs(results, reference):
    assert [(r.table.bits, r.table.shared_bits) for r in results] == SPECS
    for result, expected in zip(results, reference, strict=True):
        np.testing.assert_array_equal(result.table.receiver, expected.table.receiver)


def tampered(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10
    return bytes(flipped)


# ---------------------------------------------------------------- no engine


def test_in_process_tree_equals_serial(table, payloads, weights, serial):
    for groups in (1, 3, 7, 64):
        result = aggregate(payloads, table, ROUND, DIM, weights=weights, num_groups=groups)
        np.testing.assert_allclose(result.result(), serial, rtol=0, atol=1e-12)
        assert result.count == 64
    assert [tree_levels(n) for n in (1, 2, 3, 8, 9)] == [0, 1, 2, 3, 4]
    assert tree_levels(9, fan_in=3) == 2


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_in_process_tree_for_every_compressor(name):
    compressor = make_compressor(name)
    vectors = np.random.default_rng(5).normal(size=(9, 200))
    payloads = [
        compressor.encode(v, round_seed=ROUND, client_id=c, rng=c) for c, v in enumerate(vectors)
    ]
    serial = compressor.aggregator(200, ROUND)
    for payload in payloads:
        serial.add(payload, 2.0)
    tree = aggregate(payloads, compressor, ROUND, 200, weights=[2.0] * 9, num_groups=4)
    np.testing.assert_allclose(tree.result(), serial.result(), rtol=0, atol=1e-12)
    assert tree.total_weight == serial.total_weight


def test_aggregate_refuses_bad_arguments(table, payloads):
    with pytest.raises(ParameterError, match="at least one"):
        aggregate([], table, ROUND, DIM)
    with pytest.raises(ParameterError, match="weights"):
        aggregate(payloads[:2], table, ROUND, DIM, weights=[1.0])
    with pytest.raises(ParameterError, match="client must be"):
        aggregate(payloads, table, ROUND, DIM, client="spark")
    with pytest.raises(PayloadError):  # a payload of another round fails the whole round
        aggregate(payloads, table, ROUND + 1, DIM, num_groups=4)


def test_sweep_refuses_missing_engines():
    from solvers.sweep import sweep

    with pytest.raises(ParameterError, match="distributed.Client"):
        sweep(SPECS[:1], backend="dask", progress=False, **DESIGN)
    with pytest.raises(ParameterError, match="ray.init"):
        sweep(SPECS[:1], backend="ray", progress=False, **DESIGN)


def test_sweep_honours_an_enclosing_parallel_config(loky_designs):
    from joblib import parallel_config

    from solvers.sweep import sweep

    with parallel_config(backend="threading"):
        same_designs(sweep(SPECS, n_jobs=2, progress=False, **DESIGN), loky_designs)


# ---------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_sweep_equals_loky(dask_client, loky_designs, capsys):
    from solvers.sweep import sweep

    results = sweep(SPECS, backend="dask", progress=True, **DESIGN)
    same_designs(results, loky_designs)
    assert "4/4" in capsys.readouterr().err  # the bar reached the end


def test_dask_tree_equals_serial(dask_client, table, payloads, weights, serial):
    result = aggregate(payloads, table, ROUND, DIM, weights=weights, client=dask_client)
    np.testing.assert_allclose(result.result(), serial, rtol=0, atol=1e-12)
    assert result.clients == frozenset(range(64))
    keyed = aggregate(payloads, table, ROUND, DIM, client=dask_client, num_groups=5, key=b"k")
    assert keyed.count == 64


@pytest.mark.parametrize("name", ["eden", "countsketch", "quicfl-ec"])
def test_dask_tree_for_other_compressors(dask_client, name):
    compressor = make_compressor(name)
    vectors = np.random.default_rng(3).normal(size=(12, DIM))
    payloads = [
        compressor.encode(v, round_seed=ROUND, client_id=c, rng=c) for c, v in enumerate(vectors)
    ]
    serial = compressor.aggregator(DIM, ROUND)
    for payload in payloads:
        serial.add(payload)
    result = aggregate(payloads, compressor, ROUND, DIM, client=dask_client, num_groups=3)
    np.testing.assert_allclose(result.result(), serial.result(), rtol=0, atol=1e-12)


def test_dask_refuses_a_shard_tampered_in_transit(dask_client, table, payloads):
    client = dask_client
    left = client.submit(_leaf, table, ROUND, DIM, payloads[:8], [1.0] * 8, None)
    right = client.submit(_leaf, table, ROUND, DIM, payloads[8:16], [1.0] * 8, None)
    corrupted = client.submit(tampered, right)
    with pytest.raises(PayloadError, match="checksum"):
        client.submit(_combine, table, ROUND, DIM, None, left, corrupted).result()
    combined = client.submit(_combine, table, ROUND, DIM, None, left, right).result()
    assert quicdesign.shard.from_bytes(table, combined).count == 16


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a tip
    # Ray gives its raylet a fixed 30 s to register; on a machine loaded by other jobs that
    # can fail, so start up to three times before giving up.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_sweep_equals_loky(ray_session, loky_designs):
    from solvers.sweep import sweep

    same_designs(sweep(SPECS, backend="ray", progress=False, **DESIGN), loky_designs)


def test_ray_tree_equals_serial(ray_session, table, payloads, weights, serial):
    result = aggregate(payloads, table, ROUND, DIM, weights=weights, client="ray", num_groups=6)
    np.testing.assert_allclose(result.result(), serial, rtol=0, atol=1e-12)
    assert result.count == 64


def test_ray_merges_read_only_shards_and_refuses_tampering(ray_session, table, payloads):
    ray = ray_session
    left = quicdesign.QuicFLAggregator(table, ROUND, DIM)
    right = quicdesign.QuicFLAggregator(table, ROUND, DIM)
    for client, payload in enumerate(payloads[:10]):
        (left if client < 5 else right).add(payload)

    @ray.remote
    def merge_remote(a, b):
        # arguments come out of the object store: their arrays are read-only
        return a.merged(b).to_bytes()

    merged = quicdesign.shard.from_bytes(
        table, ray.get(merge_remote.remote(ray.put(left), ray.put(right)))
    )
    assert merged.count == 10 and left.count == 5
    leaf = ray.remote(_leaf).remote(table, ROUND, DIM, payloads[:4], [1.0] * 4, None)
    bad = ray.remote(tampered).remote(leaf)
    with pytest.raises(PayloadError, match="checksum"):
        try:
            ray.get(ray.remote(_combine).remote(table, ROUND, DIM, None, bad))
        except ray.exceptions.RayTaskError as error:
            raise error.as_instanceof_cause() from None
