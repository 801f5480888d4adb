"""The four FL runners reproduce their pre-refactor trajectories and bit counts exactly.

Each configuration runs a few rounds on fixed seeds; the sha256 of every recorded array
(rounds, metric curves, cumulative bits framed and unframed, per-client counts, final
model) must equal the value recorded from the code before the runners moved onto the
shared training loop (commit bbf0c56fe3cb0533a22802ef1c70eef8fa91f49d).
"""

import hashlib

import numpy as np
import pytest

from quicdesign.compressors import QSGD, CosSGD, QuicFL, RandK
from quicdesign.errors import ParameterError
from quicdesign.fl import (
    BitCounter,
    NoisyQuadratic,
    Participation,
    RoundStep,
    classification_problem,
    heterogeneous_least_squares,
    linear_teacher_dataset,
    run_cossgd,
    run_fedsgd,
    run_intrinsic,
    run_mcm,
    run_signsgd,
    train,
)


def _classification():
    train, test = linear_teacher_dataset(
        num_train=240, num_test=60, num_features=8, num_classes=3, seed=0
    )
    return classification_problem("softmax", train, test, 5, partition="shards", seed=0)


def _fingerprint(history):
    digest = hashlib.sha256()

    def add(name, values):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(np.asarray(values)).tobytes())

    add("rounds", np.asarray(history.rounds, dtype=np.int64))
    for name in sorted(history.metrics):
        add(name, np.asarray(history.metrics[name], dtype=np.float64))
    for name in ("upload_bits", "download_bits", "upload_bits_unframed", "download_bits_unframed"):
        add(name, np.asarray(getattr(history, name), dtype=np.int64))
    counter = history.counter
    for name in ("upload", "download", "upload_framing", "download_framing"):
        add(name, getattr(counter, name))
    if "weights" in history.extras:  # signSGD's learned vote weights
        add("weights", history.extras["weights"])
    add(
        "model",
        np.asarray(
            history.extras["model"]
            if "model" in history.extras
            else history.extras["server"].model,
            dtype=np.float64,
        ),
    )
    return digest.hexdigest()


def _fedsgd(**options):
    return lambda: run_fedsgd(
        _classification(), rounds=4, step_size=0.3, batch_size=8, seed=3, progress=False, **options
    )


def _cossgd(**options):
    return lambda: run_cossgd(
        _classification(), rounds=4, step_size=0.3, batch_size=8, seed=3, progress=False, **options
    )


def _signsgd(rule, **options):
    return lambda: run_signsgd(
        NoisyQuadratic(30, 5, seed=1),
        rule,
        rounds=10,
        step_size=0.05,
        batch_size=[1, 1, 2, 8, 30],
        warmup=1,
        seed=2,
        progress=False,
        **options,
    )


def _intrinsic(variant, **options):
    return lambda: run_intrinsic(
        _classification(),
        variant,
        subspace_dim=6,
        rounds=6,
        step_size=0.5,
        batch_size=8,
        seed=4,
        progress=False,
        **options,
    )


def _mcm(algorithm, **options):
    return lambda: run_mcm(
        heterogeneous_least_squares(6, 5, 30, seed=0),
        algorithm,
        rounds=5,
        step_size=0.05,
        uplink=QSGD(levels=2),
        seed=5,
        progress=False,
        **options,
    )


RUNS = {
    "fedsgd-raw": _fedsgd(),
    "fedsgd-quicfl-record2": _fedsgd(uplink=QuicFL(bits=2), record_every=3),
    "fedsgd-local-steps": _fedsgd(
        local_steps=2,
        local_step_size=0.1,
        uplink=QSGD(levels=4),
        downlink=QSGD(levels=8),
        participation=Participation(per_round=3),
    ),
    "fedsgd-flat-weights": _fedsgd(
        uplink=RandK(k=7), downlink=QSGD(levels=8), downlink_mode="weights", per_tensor=False
    ),
    "fedsgd-downlink-none": _fedsgd(uplink=CosSGD(bits=2), downlink_mode="none"),
    "cossgd-update": _cossgd(bits_up=2, bits_down=4),
    "cossgd-weights-fedavg": _cossgd(
        downlink_mode="weights", local_steps=2, local_step_size=0.1, rounding="deterministic"
    ),
    "signsgd-mv": _signsgd("mv"),
    "signsgd-fv": _signsgd("fv", forgetting=0.9),
    "signsgd-fv-random-ties": _signsgd("fv", tie="random", estimator="per-coordinate"),
    "signsgd-fv-oracle": _signsgd("fv-oracle", record_every=4),
    "intrinsic-static": _intrinsic("static"),
    "intrinsic-static-nostate": _intrinsic(
        "static", stateless_clients=True, participation=Participation(per_round=2)
    ),
    "intrinsic-k-subspace": _intrinsic("k-subspace", num_subspaces=3, record_every=4),
    "intrinsic-k-rand-nostate": _intrinsic(
        "k-subspace",
        num_subspaces=3,
        schedule="random",
        stateless_clients=True,
        participation=Participation(per_round=3),
    ),
    "intrinsic-time-varying": _intrinsic(
        "time-varying", period=2, participation=Participation(per_round=2), projection="srht"
    ),
    "intrinsic-tv-nostate-f64": _intrinsic(
        "time-varying", period=4, stateless_clients=True, wire_dtype="float64"
    ),
    "mcm-sgd": _mcm("sgd"),
    "mcm-diana": _mcm("diana", smart_init=False),
    "mcm-artemis": _mcm("artemis", downlink=QSGD(levels=4)),
    "mcm-mcm": _mcm("mcm", downlink=QSGD(levels=4), step_decay=3),
    "mcm-rand-mcm": _mcm(
        "rand-mcm", downlink=QSGD(levels=4), participation=Participation(per_round=4)
    ),
    "mcm-mc": _mcm("mc", downlink=QSGD(levels=4), record_every=2),
}

EXPECTED = {
    "cossgd-update": "96f3f8d172e76ae9fd02c1a8cdba8c52afa2594818b4ad8b5eeff0fc5a15dbc4",
    "cossgd-weights-fedavg": "e4efe6ba949e5275fbc219e85fcfe5e4892f26e100efb02f79fb32c1a05faa82",
    "fedsgd-downlink-none": "155daac2efc62b948c244e25f8245dcd6dcd06c32674b3e7b612885325f3fc2e",
    "fedsgd-flat-weights": "3d4faaabe13e67e50dc363e7f1beffe78d0ad76e5c99da442209f2a8b112cbff",
    "fedsgd-local-steps": "c1590dc5ded7ecd7b6586aa4ef745c1d1816174319d32d162e24af57f59e1b7e",
    "fedsgd-quicfl-record2": "96cebce947f8e83b4d4e13d66bbc66682ef44b25be1041ea24cf37d846750b70",
    "fedsgd-raw": "0dd414d4ab1dd9fc72d74078e9d3bf4af6c669f1526d1a1cf19694361fc1f536",
    "intrinsic-k-rand-nostate": "584a40286bf5054d5e8bdf723ea7232966dc9e72676582ec78c883d89370929e",
    "intrinsic-k-subspace": "0fbed5a32b42e3ff6ca2ea519b31922b7fa48a41565a0f28cbdf9328d6e0e8f3",
    "intrinsic-static": "7f7ca91dfb4d2968fe772569e8733e010d08d5cdac3c58725b700bf305886908",
    "intrinsic-static-nostate": "0b5d464f32a2a2217dab6f56c574ef5cb811ab87985ce57bffdf85b17d5385cb",
    "intrinsic-time-varying": "e74cf758cebd991d60438b9083d31fabc925bbf824da77b1aa7d51d127f0b4d6",
    "intrinsic-tv-nostate-f64": "5ad124420b59e89f9426eccff89b902f6996174b9c0da12461ba509ed2c24444",
    "mcm-artemis": "4521d3f7907ad35a1618211b51f0f27fffc90d8bbcfe18a15b268bc99713b2ea",
    "mcm-diana": "ab3c95df0df75cab1e776186ccdb427e373d59c4b4588cbab9cf8bc2af58a4c0",
    "mcm-mc": "1f846c87bfa4c51e907f97517d96c5d47e62a703f73ee1029723ccad43f34ba9",
    "mcm-mcm": "bc7b4ca84a49d6cb5ca3b57264b28e040ae4e89375d84fb66182275a319e75e5",
    "mcm-rand-mcm": "5e24ee68ffabbc9e05806f4ab8cf719c491feefab9ebb58bfe303caa42af7f00",
    "mcm-sgd": "12dad091c77369afab3676c02e9e74da655cf385eee10cc938e116528c5e9379",
    "signsgd-fv": "fa506a88c53c6329ff765ecb62e624e5089f1e4667fe4bd6a9cee300052fab20",
    "signsgd-fv-oracle": "2cff1eed0a9cd66021a277f7aae851e77f78580eb37a047b57a01e949947c33b",
    "signsgd-fv-random-ties": "7c5d2fb451fdeafe5d7c2a3ce9fa36716f164582ce83874c3fc9b98ad7ded69c",
    "signsgd-mv": "2662d4df8ef06ac83aa687c90c80ee0b39f8c68a67d1aedf0604a5ef0f953dfa",
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_runner_reproduces_its_pre_refactor_trajectory(name):
    assert _fingerprint(RUNS[name]()) == EXPECTED[name]


class _Counting(RoundStep):
    """A toy algorithm: the model is the number of rounds run."""

    label, config = "toy", {}

    def __init__(self):
        self.counter = BitCounter(1)
        self.value = 0.0

    def model(self):
        return np.array([self.value])

    def step(self, round_index):
        self.value += 1.0
        return (self.value,)


class _Identity:
    def metrics(self, point):
        return {"value": float(point[0])}


def test_train_records_round_zero_every_kth_round_and_the_last_and_calls_back():
    calls = []
    history = train(
        _Identity(),
        _Counting(),
        rounds=7,
        record_every=3,
        callback=lambda t, value: calls.append((t, value)),
        progress=False,
    )
    assert history.rounds == [0, 3, 6, 7]
    assert history.metrics["value"] == [0.0, 3.0, 6.0, 7.0]
    assert calls == [(t, t + 1.0) for t in range(7)]
    assert history.extras["model"].tolist() == [7.0]
    assert history.upload_bits == [0, 0, 0, 0]


@pytest.mark.parametrize("bad", [{"rounds": -1}, {"rounds": 2, "record_every": 0}])
def test_train_refuses_bad_round_counts(bad):
    with pytest.raises(ParameterError):
        train(_Identity(), _Counting(), progress=False, **bad)
