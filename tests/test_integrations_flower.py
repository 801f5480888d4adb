"""quicdesign.integrations.flower: the client mod, the strategy wrapper and a simulation."""

import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn is needed by the example app")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from quicdesign.compressors import EDEN, QuicFL  # noqa: E402
from quicdesign.integrations.flower import (  # noqa: E402
    KEY_CLIENT_ID,
    KEY_ROUND_SEED,
    PAYLOAD_KEY,
    PAYLOAD_STYPE,
    QuicFLMod,
    QuicFLStrategy,
    flower_round_seed,
)
from quicdesign.integrations.flower_example import (  # noqa: E402
    initial_arrays,
    make_client_app,
)

RUN_ID = 77
NUM_NODES = 4
# Flower node ids are 64-bit; the strategy must map them to dense 32-bit client ids.
NODE_IDS = [2**40 + 7 * k for k in range(NUM_NODES)]


class LoopbackGrid(Grid):
    """A Grid that hands every message straight to a ClientApp in this process."""

    def __init__(self, client_app, node_ids=NODE_IDS):
        self.client_app = client_app
        self.node_ids = list(node_ids)
        self._run = types.SimpleNamespace(run_id=RUN_ID)
        self.sent = []

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            context = Context(
                run_id=RUN_ID,
                node_id=node_id,
                node_config={
                    "partition-id": self.node_ids.index(node_id),
                    "num-partitions": len(self.node_ids),
                },
                state=RecordDict(),
                run_config={},
            )
            replies.append(self.client_app(message, context))
        return replies


@pytest.fixture(autouse=True, scope="module")
def server_task_identity():
    """Messages need the identity a running ServerApp sets; set it as one would."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # Flower < 1.38 builds messages without one
        yield
        return
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _fedavg():
    return FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)


def _flat(record: ArrayRecord):
    return np.concatenate([a.reshape(-1).astype(np.float64) for a in record.to_numpy_ndarrays()])


def _train_message(arrays, config, node_id=NODE_IDS[0], message_type=MessageType.TRAIN):
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content, node_id, message_type)


def _global_arrays():
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal((30, 20)).astype(np.float32)),
            "b": Array(rng.standard_normal(20).astype(np.float64)),
            "scale": Array(np.ones(3, dtype=np.float16)),
        }
    )


def _shifted_reply(delta_seed, num_examples=10):
    """A train function whose reply is the global model plus a known random delta."""

    def train(msg, ctxt):
        arrays = msg.content["arrays"]
        rng = np.random.default_rng(delta_seed)
        shifted = {
            k: Array((v + rng.standard_normal(v.shape)).astype(v.dtype))
            for k, v in zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
        }
        metrics = MetricRecord({"num-examples": num_examples, "loss": 1.0})
        content = RecordDict({"arrays": ArrayRecord(shifted), "metrics": metrics})
        return Message(content, reply_to=msg)

    return train


def _delta(delta_seed, arrays):
    rng = np.random.default_rng(delta_seed)
    reference = arrays.to_numpy_ndarrays()
    shifted = [(v + rng.standard_normal(v.shape)).astype(v.dtype) for v in reference]
    pairs = zip(shifted, reference, strict=True)
    return np.concatenate([(s.astype(np.float64) - r).reshape(-1) for s, r in pairs])


# --------------------------------------------------------------------------- the mod


def test_mod_replaces_the_update_by_one_payload():
    compressor = QuicFL(bits=8)
    arrays = _global_arrays()
    message = _train_message(arrays, {KEY_ROUND_SEED: 123, KEY_CLIENT_ID: 5})
    reply = QuicFLMod(compressor)(message, None, _shifted_reply(1))
    assert not reply.has_error()
    record = reply.content["arrays"]
    assert list(record.keys()) == [PAYLOAD_KEY]
    assert record[PAYLOAD_KEY].stype == PAYLOAD_STYPE
    assert reply.content["metrics"]["num-examples"] == 10  # metrics untouched
    decoded = compressor.decode(record[PAYLOAD_KEY].data, dim=623, round_seed=123)
    delta = _delta(1, arrays)
    # 8-bit QUIC-FL: vNMSE ~ 2e-5, so a tight relative error; a wrong sign or key order fails
    assert np.sum((decoded - delta) ** 2) < 1e-3 * np.sum(delta**2)
    # 8 bits per rotated coordinate (623 padded to 1024) plus a 36-byte header, not 32
    assert len(record[PAYLOAD_KEY].data) <= 1024 + 36 + 8 * 5


def test_mod_passes_other_messages_through():
    arrays = _global_arrays()
    message = _train_message(arrays, {}, message_type=MessageType.EVALUATE)
    calls = []

    def evaluate(msg, ctxt):
        calls.append(msg)
        return Message(RecordDict({"metrics": MetricRecord({"acc": 0.5})}), reply_to=msg)

    reply = QuicFLMod(QuicFL())(message, None, evaluate)
    assert calls == [message] and reply.content["metrics"]["acc"] == 0.5


@pytest.mark.parametrize("missing", [KEY_ROUND_SEED, KEY_CLIENT_ID])
def test_mod_gives_an_error_reply_when_a_config_key_is_missing(missing):
    config = {KEY_ROUND_SEED: 1, KEY_CLIENT_ID: 2}
    del config[missing]
    called = []
    reply = QuicFLMod(QuicFL())(
        _train_message(_global_arrays(), config), None, lambda m, c: called.append(m)
    )
    assert reply.has_error() and not called
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert missing in reply.error.reason


def test_mod_refuses_replies_that_do_not_match_the_global_model():
    def renamed(msg, ctxt):
        arrays = ArrayRecord({"other": Array(np.zeros(3, dtype=np.float32))})
        return Message(RecordDict({"arrays": arrays}), reply_to=msg)

    message = _train_message(_global_arrays(), {KEY_ROUND_SEED: 1, KEY_CLIENT_ID: 2})
    reply = QuicFLMod(QuicFL())(message, None, renamed)
    assert reply.has_error() and "keys" in reply.error.reason
    # an error reply of the app passes through untouched
    failing = lambda m, c: Message(Error(code=0, reason="app failed"), reply_to=m)  # noqa: E731
    assert QuicFLMod(QuicFL())(message, None, failing).error.reason == "app failed"


def test_stock_fedavg_refuses_payload_replies_loudly():
    message = _train_message(_global_arrays(), {KEY_ROUND_SEED: 1, KEY_CLIENT_ID: 0})
    reply = QuicFLMod(QuicFL())(message, None, _shifted_reply(2))
    with pytest.raises(TypeError, match="serialization type"):
        _fedavg().aggregate_train(1, [reply])


# --------------------------------------------------------------------------- the strategy


def _configured(strategy, arrays, server_round=1):
    grid = LoopbackGrid(client_app=None)
    return grid, list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))


def test_strategy_gives_each_node_its_own_config():
    strategy = QuicFLStrategy(_fedavg(), QuicFL(), seed=9)
    _, messages = _configured(strategy, _global_arrays())
    configs = [m.content["config"] for m in messages]
    assert sorted(c[KEY_CLIENT_ID] for c in configs) == list(range(NUM_NODES))
    assert {c[KEY_ROUND_SEED] for c in configs} == {flower_round_seed(9, RUN_ID, 1)}
    assert all(c["server-round"] == 1 for c in configs)
    assert len({id(m.content) for m in messages}) == NUM_NODES
    # ids are stable across rounds; seeds change with round, run and seed
    _, again = _configured(strategy, _global_arrays(), server_round=2)
    ids = {m.metadata.dst_node_id: m.content["config"][KEY_CLIENT_ID] for m in messages}
    assert ids == {m.metadata.dst_node_id: m.content["config"][KEY_CLIENT_ID] for m in again}
    # each round its own seed, so a reply replayed from an earlier round is refused
    assert (
        {m.content["config"][KEY_ROUND_SEED] for m in again}
        == {flower_round_seed(9, RUN_ID, 2)}
        != {flower_round_seed(9, RUN_ID, 1)}
    )
    seeds = {flower_round_seed(s, r, t) for s in (0, 1) for r in (1, 2) for t in (1, 2)}
    assert len(seeds) == 8 and max(seeds) < 2**63


def test_strategy_adds_a_config_when_the_inner_strategy_sends_none():
    class NoConfig(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            return [
                Message(RecordDict({"arrays": arrays}), node_id, MessageType.TRAIN)
                for node_id in grid.get_node_ids()
            ]

    strategy = QuicFLStrategy(NoConfig(), QuicFL(), seed=2)
    _, messages = _configured(strategy, _global_arrays())
    assert [m.content["config"][KEY_CLIENT_ID] for m in messages] == list(range(NUM_NODES))


def _replies(strategy, arrays, examples=(10, 30, 20, 40)):
    _, messages = _configured(strategy, arrays)
    mod = QuicFLMod(strategy.compressor, rng=np.random.default_rng(0))
    return [
        mod(m, None, _shifted_reply(k, num_examples=n))
        for k, (m, n) in enumerate(zip(messages, examples, strict=True))
    ]


def test_strategy_aggregates_with_one_aggregator_weighted_by_examples():
    compressor = QuicFL(bits=4)
    strategy = QuicFLStrategy(_fedavg(), compressor, seed=3)
    arrays = _global_arrays()
    replies = _replies(strategy, arrays)
    result, metrics = strategy.aggregate_train(1, replies)
    # original keys, shapes and dtypes
    assert list(result.keys()) == list(arrays.keys())
    for got, want in zip(result.to_numpy_ndarrays(), arrays.to_numpy_ndarrays(), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
    # the same as adding the payloads by hand with the example counts as weights
    aggregator = compressor.aggregator(623, flower_round_seed(3, RUN_ID, 1))
    for reply, weight in zip(replies, (10, 30, 20, 40), strict=True):
        aggregator.add(reply.content["arrays"][PAYLOAD_KEY].data, weight)
    expected = _flat(arrays) + aggregator.result()
    np.testing.assert_allclose(_flat(result)[:620], expected[:620], rtol=1e-6, atol=1e-6)
    assert metrics["loss"] == 1.0  # the wrapped FedAvg's metric aggregation
    assert strategy.uplink_bytes == sum(len(r.content["arrays"][PAYLOAD_KEY].data) for r in replies)


def test_decoding_each_reply_gives_the_same_fedavg_mean():
    arrays = _global_arrays()
    one = QuicFLStrategy(_fedavg(), QuicFL(bits=4), seed=3)
    each = QuicFLStrategy(_fedavg(), QuicFL(bits=4), seed=3, decode_each=True)
    replies_one, replies_each = _replies(one, arrays), _replies(each, arrays)
    result_one, _ = one.aggregate_train(1, replies_one)
    result_each, _ = each.aggregate_train(1, replies_each)
    # the weighted mean is linear, so decoding each payload first changes only rounding
    np.testing.assert_allclose(_flat(result_each), _flat(result_one), rtol=1e-5, atol=1e-5)


def test_bad_replies_are_refused_and_the_rest_aggregated():
    compressor = QuicFL(bits=4)
    strategy = QuicFLStrategy(_fedavg(), compressor, seed=3)
    arrays = _global_arrays()
    replies = _replies(strategy, arrays)
    # another round's payload, a truncated payload, plain arrays, and an error reply
    other_round = QuicFLStrategy(_fedavg(), compressor, seed=4)
    replies[2] = _replies(other_round, arrays)[2]
    data = replies[3].content["arrays"][PAYLOAD_KEY].data
    truncated = Array(dtype="uint8", shape=(10,), stype=PAYLOAD_STYPE, data=data[:10])
    replies[3].content["arrays"] = ArrayRecord({PAYLOAD_KEY: truncated})
    plain = _shifted_reply(5)(_configured(strategy, arrays)[1][0], None)
    error = Message(Error(code=0, reason="boom"), reply_to=_configured(strategy, arrays)[1][1])
    result, _ = strategy.aggregate_train(1, replies + [plain, error])
    expected, _ = strategy.aggregate_train(1, replies[:2])
    np.testing.assert_array_equal(_flat(result), _flat(expected))
    assert strategy.uplink_bytes == 2 * sum(
        len(r.content["arrays"][PAYLOAD_KEY].data) for r in replies[:2]
    )


def test_strategy_refuses_unconfigured_rounds_and_bad_arguments():
    strategy = QuicFLStrategy(_fedavg(), QuicFL())
    with pytest.raises(ValueError, match="not configured"):
        strategy.aggregate_train(1, [])
    with pytest.raises(ValueError):
        QuicFLStrategy("FedAvg", QuicFL())
    with pytest.raises(ValueError):
        QuicFLStrategy(_fedavg(), QuicFL(), seed=-1)


def test_evaluate_and_summary_delegate():
    class Recording(FedAvg):
        calls = []

        def summary(self):
            self.calls.append("summary")

        def configure_evaluate(self, *args):
            self.calls.append("configure_evaluate")
            return ["m"]

        def aggregate_evaluate(self, *args):
            self.calls.append("aggregate_evaluate")
            return MetricRecord({"acc": 1.0})

    strategy = QuicFLStrategy(Recording(), QuicFL())
    strategy.summary()
    assert strategy.configure_evaluate(1, _global_arrays(), ConfigRecord(), None) == ["m"]
    assert strategy.aggregate_evaluate(1, [])["acc"] == 1.0
    assert Recording.calls == ["summary", "configure_evaluate", "aggregate_evaluate"]


def _run_loopback(strategy, compressor, rounds=3):
    grid = LoopbackGrid(make_client_app(compressor))
    return strategy.start(grid=grid, initial_arrays=initial_arrays(0), num_rounds=rounds).arrays


@pytest.fixture(scope="module")
def fedavg_reference():
    """fp32 FedAvg of the example app over 3 rounds (client training is deterministic)."""
    return _flat(_run_loopback(_fedavg(), None))


@pytest.mark.parametrize("compressor", [QuicFL(bits=4), EDEN(bits=4)], ids=["quicfl", "eden"])
def test_strategy_in_process_tracks_fp32_fedavg(compressor, fedavg_reference):
    strategy = QuicFLStrategy(_fedavg(), compressor, seed=1)
    start = _flat(initial_arrays(0))
    final = _flat(_run_loopback(strategy, compressor))
    # 4-bit compression with vNMSE ~ 1e-2 per client and 4 clients: the aggregated update
    # is off by ~ sqrt(1e-2 / 4) = 5 % per round; allow 15 % of the distance travelled
    travelled = np.linalg.norm(fedavg_reference - start)
    assert np.linalg.norm(final - fedavg_reference) < 0.15 * travelled
    bits = 32 * strategy.uplink_bytes / strategy.dense_uplink_bytes
    # b = 4 plus padding to 5 x 1024 rotated coordinates (5 %), header and chunk scales
    assert 4.0 < bits < 4.6, bits


# --------------------------------------------------------------------------- simulation

_SIMULATION = """
import json, sys
import numpy as np
from quicdesign.compressors import QuicFL
from quicdesign.integrations.flower_example import run_example
outcome = run_example(QuicFL(bits=4), num_supernodes=4, num_rounds=3, num_cpus=2)
flat = np.concatenate([a.reshape(-1) for a in outcome["arrays"].to_numpy_ndarrays()])
json.dump({"flat": flat.astype(float).tolist(), "uplink_bytes": outcome["uplink_bytes"],
           "dense_uplink_bytes": outcome["dense_uplink_bytes"],
           "accuracy": outcome["accuracy"]}, sys.stdout)
"""


@pytest.mark.slow
def test_run_simulation_with_ray_tracks_fp32_fedavg(fedavg_reference):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    # its own process group, so a stuck Ray start is killed with its daemons by the timeout
    process = subprocess.Popen(
        [sys.executable, "-c", _SIMULATION],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("run_simulation did not finish within 240 s")
    done = types.SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    start = _flat(initial_arrays(0))
    travelled = np.linalg.norm(fedavg_reference - start)
    final = np.array(outcome["flat"])
    assert np.linalg.norm(final - fedavg_reference) < 0.15 * travelled
    bits = 32 * outcome["uplink_bytes"] / outcome["dense_uplink_bytes"]
    assert 4.0 < bits < 4.6, bits
    assert outcome["accuracy"]["3"] > 0.85


def test_ray_start_is_retried_after_a_timeout_and_bounded(monkeypatch):
    """Ray's raylet has a fixed 30 s start deadline that a loaded machine misses now and then."""
    from quicdesign.integrations import flower_example

    calls = []

    def fake_ray(failures):
        def init(**kwargs):
            calls.append(kwargs)
            if len(calls) <= failures:
                raise Exception("The current node timed out during startup.")

        return types.SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: None)

    monkeypatch.setitem(sys.modules, "ray", fake_ray(failures=2))
    flower_example._start_ray(2)
    assert len(calls) == 3 and calls[-1]["num_cpus"] == 2
    assert "PYTHONPATH" in calls[-1]["runtime_env"]["env_vars"]
    calls.clear()
    monkeypatch.setitem(sys.modules, "ray", fake_ray(failures=3))
    with pytest.raises(Exception, match="timed out"):
        flower_example._start_ray(2)
    assert len(calls) == 3
