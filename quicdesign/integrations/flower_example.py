"""Runnable Flower example: FedAvg with and without QUIC-FL on scikit-learn digits.

``python -m quicdesign.integrations.flower_example`` simulates 4 supernodes with Flower's
``run_simulation`` (Ray, local) twice — plain FedAvg and ``QuicFLStrategy(FedAvg(...))``
with ``QuicFLMod`` on the clients — and prints uplink bytes and test accuracy of both.

The model is a one-hidden-layer MLP in numpy (4,874 parameters), so the example needs only
the ``flower`` extra and scikit-learn. :func:`make_client_app` and :func:`make_server_app`
are the two apps; with a compressor they use the mod and the strategy wrapper.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quicdesign._argtypes import add_compressor_options, bounded_int
from quicdesign.compressors import make_compressor

from .flower import QuicFLMod, QuicFLStrategy

__all__ = [
    "digits_partition",
    "evaluate_arrays",
    "initial_arrays",
    "make_client_app",
    "make_server_app",
    "run_example",
]

HIDDEN = 64
_KEYS = ("hidden.weight", "hidden.bias", "out.weight", "out.bias")


def _digits(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)


def digits_partition(partition_id, num_partitions):
    """Training examples of one client: every ``num_partitions``-th row of the split."""
    x_train, _, y_train, _ = _digits()
    return x_train[partition_id::num_partitions], y_train[partition_id::num_partitions]


def initial_arrays(seed=0) -> ArrayRecord:
    """The global model before round 1 (float32 arrays under fixed keys)."""
    rng = np.random.default_rng(seed)
    shapes = [(64, HIDDEN), (HIDDEN,), (HIDDEN, 10), (10,)]
    values = [
        (rng.standard_normal(shape) / np.sqrt(shape[0]) if len(shape) == 2 else np.zeros(shape))
        for shape in shapes
    ]
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in zip(_KEYS, values, strict=True)})


def _forward(params, x):
    w1, b1, w2, b2 = params
    hidden = np.maximum(x @ w1 + b1, 0.0)
    logits = hidden @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return hidden, probs


def _train(params, x, y, *, epochs=2, lr=0.2, batch=32, seed=0):
    w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            xb, yb = x[index], y[index]
            hidden, probs = _forward((w1, b1, w2, b2), xb)
            grad_logits = probs
            grad_logits[np.arange(len(yb)), yb] -= 1.0
            grad_logits /= len(yb)
            grad_hidden = (grad_logits @ w2.T) * (hidden > 0)
            w2 -= lr * hidden.T @ grad_logits
            b2 -= lr * grad_logits.sum(axis=0)
            w1 -= lr * xb.T @ grad_hidden
            b1 -= lr * grad_hidden.sum(axis=0)
    return [p.astype(np.float32) for p in (w1, b1, w2, b2)]


def evaluate_arrays(arrays: ArrayRecord, x=None, y=None) -> tuple[float, float]:
    """(cross-entropy loss, accuracy) of a model on the digits test split by default."""
    if x is None:
        _, x, _, y = _digits()
    _, probs = _forward(arrays.to_numpy_ndarrays(), x)
    loss = float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(probs.argmax(axis=1) == y))


def make_client_app(compressor=None) -> ClientApp:
    """A ClientApp that trains locally; with a compressor it sends QUIC-FL payloads."""
    app = ClientApp(mods=[] if compressor is None else [QuicFLMod(compressor)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = context.node_config["partition-id"], context.node_config["num-partitions"]
        x, y = digits_partition(*partition)
        arrays = msg.content["arrays"]
        server_round = msg.content["config"]["server-round"]
        trained = _train(arrays.to_numpy_ndarrays(), x, y, seed=1000 * server_round + partition[0])
        pairs = zip(arrays.keys(), trained, strict=True)
        reply_arrays = ArrayRecord({k: Array(v) for k, v in pairs})
        metrics = MetricRecord({"num-examples": len(x)})
        return Message(RecordDict({"arrays": reply_arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        loss, accuracy = evaluate_arrays(msg.content["arrays"])
        metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": 1})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def make_server_app(compressor=None, *, num_rounds=10, seed=0, outcome=None) -> ServerApp:
    """A ServerApp running FedAvg (wrapped in QuicFLStrategy when given a compressor).

    ``outcome``, a dict, receives the final arrays, the per-round test accuracy and the
    uplink bytes (the ServerApp runs in the calling process under ``run_simulation``).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
        if compressor is not None:
            strategy = QuicFLStrategy(strategy, compressor, seed=seed)
        accuracy = {}

        def central_evaluate(server_round, arrays):
            loss, accuracy[server_round] = evaluate_arrays(arrays)
            return MetricRecord({"loss": loss, "accuracy": accuracy[server_round]})

        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(seed),
            num_rounds=num_rounds,
            timeout=120,
            evaluate_fn=central_evaluate,
        )
        if outcome is not None:
            outcome["arrays"] = result.arrays
            outcome["accuracy"] = accuracy
            dim = sum(a.size for a in result.arrays.to_numpy_ndarrays())
            if compressor is None:  # every node sends float32 arrays every round
                outcome["uplink_bytes"] = 4 * dim * num_rounds * len(list(grid.get_node_ids()))
            else:
                outcome["uplink_bytes"] = strategy.uplink_bytes
            outcome["dense_uplink_bytes"] = 4 * dim * num_rounds * len(list(grid.get_node_ids()))

    return app


_RAY_START_ATTEMPTS = 3


def _start_ray(num_cpus, attempts=_RAY_START_ATTEMPTS):
    """Start local Ray for ``run_simulation``, retrying a start that timed out.

    Ray gives its raylet a fixed 30 s to register; on a loaded machine that start fails now
    and then, and inside ``run_simulation`` the failure leaves the ServerApp waiting for
    replies until its round timeout. Flower's Ray backend reuses a running Ray, so
    starting it here (with the runtime environment Flower would give it) is equivalent.
    """
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(filter(None, [*sys.path, os.environ.get("PYTHONPATH")]))
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            )
            return
        except Exception as error:  # Ray raises a bare Exception on a start timeout
            ray.shutdown()
            if attempt == attempts:
                raise
            print(f"Ray did not start ({error}); retry {attempt}/{attempts - 1}", file=sys.stderr)


def run_example(compressor=None, *, num_supernodes=4, num_rounds=10, num_cpus=2) -> dict:
    """Simulate the example with Flower's ``run_simulation`` (Ray, local); return outcome."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a test
    _start_ray(num_cpus)
    outcome: dict = {}
    run_simulation(
        server_app=make_server_app(compressor, num_rounds=num_rounds, outcome=outcome),
        client_app=make_client_app(compressor),
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "include_dashboard": False},
        },
    )
    return outcome


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m quicdesign.integrations.flower_example",
        description="Flower simulation: FedAvg versus QuicFLStrategy on digits (4 nodes).",
    )
    parser.add_argument(
        "--rounds",
        type=bounded_int("rounds", 1, 10_000),
        default=10,
        help="federated rounds per run (default: 10)",
    )
    add_compressor_options(parser)
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    for label, compressor in (
        ("FedAvg fp32", None),
        (f"{args.compressor} b={args.bits}", make_compressor(args.compressor, bits=args.bits)),
    ):
        print(f"simulating {label}: 4 supernodes, {args.rounds} rounds ...", flush=True)
        rows.append((label, run_example(compressor, num_rounds=args.rounds)))
    print(f"{'strategy':<16} {'uplink bytes':>13} {'bits/coord':>11} {'test accuracy':>14}")
    for label, outcome in rows:
        bits = 32 * outcome["uplink_bytes"] / outcome["dense_uplink_bytes"]
        final = outcome["accuracy"][max(outcome["accuracy"])]
        print(f"{label:<16} {outcome['uplink_bytes']:>13,} {bits:>11.3f} {final:>14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
