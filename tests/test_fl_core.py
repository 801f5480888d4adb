"""Simulator building blocks: problems, partitions, participation, the wire, histories."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from quicdesign.errors import ParameterError, PayloadError
from quicdesign.fl import (
    MLP,
    BitCounter,
    LinearRegression,
    LogisticRegression,
    NoisyQuadratic,
    Participation,
    Partition,
    RawFloats,
    SoftmaxRegression,
    broadcast,
    classification_problem,
    client_batch_sizes,
    dirichlet_partition,
    heterogeneous_least_squares,
    iid_partition,
    linear_teacher_dataset,
    send_each,
    shard_partition,
    sklearn_dataset,
    teacher_dataset,
)


def test_import_needs_numpy_only():
    code = (
        "import sys, quicdesign.fl, quicdesign.fl.cli; "
        "print(sorted(m for m in ('scipy', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert output == "[]"


@pytest.mark.parametrize(
    "model", [MLP(5, 7, 3), SoftmaxRegression(5, 3), LogisticRegression(5), LinearRegression(5)]
)
@pytest.mark.parametrize("shared", [False, True])
def test_model_gradients_match_finite_differences(model, shared):
    rng = np.random.default_rng(0)
    k, b = 3, 4
    params = rng.normal(size=(1 if shared else k, model.num_params))
    features = rng.normal(size=(k, b, 5))
    if model.regression:
        targets = rng.normal(size=(k, b))
    else:
        targets = rng.integers(0, 2 if isinstance(model, LogisticRegression) else 3, (k, b))
    weights = np.full((k, b), 1 / b)
    losses, grads = model.loss_and_grad(params, features, targets, weights)
    full = np.broadcast_to(params, (k, model.num_params)).copy()
    numeric = np.zeros_like(full)
    for i in range(model.num_params):
        step = np.zeros_like(full)
        step[:, i] = 1e-6
        numeric[:, i] = (
            model.loss_and_grad(full + step, features, targets, weights)[0]
            - model.loss_and_grad(full - step, features, targets, weights)[0]
        ) / 2e-6
    np.testing.assert_allclose(grads, numeric, atol=1e-7)
    loss, _ = model.evaluate(full[0], features[0], targets[0])
    assert loss == pytest.approx(losses[0], rel=1e-12)
    sizes = [s.stop - s.start for _, s in model.tensor_slices]
    assert sum(sizes) == model.num_params


def test_shared_and_per_client_points_give_the_same_gradients():
    train, test = teacher_dataset(num_train=300, num_test=50, seed=1)
    problem = classification_problem("mlp", train, test, 6, partition="iid", hidden=8)
    point = problem.initial_point(0)
    clients, batches = np.array([0, 2, 5]), np.array([4, 0, 9])
    shared = problem.gradients(point, clients, batches, np.random.default_rng(3))
    tiled = problem.gradients(np.tile(point, (3, 1)), clients, batches, np.random.default_rng(3))
    np.testing.assert_allclose(shared, tiled, atol=1e-12)


def test_full_local_batches_average_to_the_full_gradient():
    problem = heterogeneous_least_squares(5, 4, 30, seed=2)
    point = np.random.default_rng(0).normal(size=4)
    local = problem.gradients(point, np.arange(5), np.zeros(5, dtype=int), None)
    # equal client sizes: the mean of local gradients is the global gradient
    np.testing.assert_allclose(local.mean(axis=0), problem.full_gradient(point), atol=1e-12)
    assert problem.loss(problem.solution) == pytest.approx(problem.optimum_loss)
    assert np.linalg.norm(problem.full_gradient(problem.solution)) < 1e-9


def test_minibatches_come_from_the_clients_own_samples():
    problem = heterogeneous_least_squares(3, 2, 10, seed=0)
    # give each client constant, distinguishable features: gradients reveal the client
    problem.train.features[:] = np.repeat([[1.0, 0], [0, 1.0], [1.0, 1.0]], 10, axis=0)
    problem.train.targets[:] = 0
    grads = problem.gradients(
        np.ones(2), np.array([2, 0, 1]), np.array([5, 3, 1]), np.random.default_rng(0)
    )
    np.testing.assert_allclose(grads, [[2, 2], [1, 0], [0, 1]])


def test_noisy_quadratic_noise_shrinks_with_batch_size():
    problem = NoisyQuadratic(2000, 3, noise_std=4.0, seed=0)
    grads = problem.gradients(
        problem.center, np.arange(3), np.array([1, 16, 0]), np.random.default_rng(0)
    )
    assert grads[0].std() == pytest.approx(4.0, rel=0.05)
    assert grads[1].std() == pytest.approx(1.0, rel=0.05)
    assert np.all(grads[2] == 0)
    assert problem.loss(problem.center) == 0.0


def test_partitions_cover_every_sample_once():
    labels = np.repeat(np.arange(5), 40)
    for partition in (
        iid_partition(200, 7, seed=1),
        shard_partition(labels, 10, shards_per_client=2, seed=1),
        dirichlet_partition(labels, 6, alpha=0.3, seed=1),
    ):
        assert np.array_equal(np.sort(partition.order), np.arange(200))
        assert partition.sizes.sum() == 200 and partition.sizes.min() >= 1
    shards = shard_partition(labels, 10, shards_per_client=2, seed=1)
    # two label-sorted shards: each client sees at most two classes
    assert max(np.unique(labels[shards.client_indices(c)]).size for c in range(10)) <= 2
    iid = iid_partition(200, 7, seed=1)
    assert iid.sizes.max() - iid.sizes.min() <= 1
    skewed = dirichlet_partition(labels, 6, alpha=0.05, seed=2)
    classes_per_client = [np.unique(labels[skewed.client_indices(c)]).size for c in range(6)]
    assert min(classes_per_client) < 5
    with pytest.raises(ParameterError):
        Partition(np.arange(3), np.array([2, 0, 1]))


def test_participation_sampling():
    rng = np.random.default_rng(0)
    assert np.array_equal(Participation().sample(5, rng), np.arange(5))
    fixed = Participation(per_round=3)
    assert all(len(fixed.sample(10, rng)) == 3 for _ in range(20))
    assert fixed.inclusion_probability(10) == 0.3
    rate = np.mean([len(Participation(rate=0.25).sample(40, rng)) for _ in range(200)]) / 40
    assert rate == pytest.approx(0.25, abs=0.02)
    with pytest.raises(ParameterError):
        Participation(rate=0.5, per_round=2)
    with pytest.raises(ParameterError):
        Participation(rate=0)
    assert list(client_batch_sizes([1, 2], 2)) == [1, 2]
    with pytest.raises(ParameterError):
        client_batch_sizes([1, 2], 3)


def test_raw_floats_and_bit_counters_use_real_payloads():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 10))
    counter = BitCounter(5)
    decoded = send_each(
        RawFloats("float32"), vectors, [4, 0, 4], round_seed=1, rng=rng, counter=counter
    )
    np.testing.assert_array_equal(decoded, vectors.astype(np.float32))
    # every payload: the 21-byte envelope, then the values (10 float32 = 40 bytes)
    assert list(counter.upload) == [8 * 61, 0, 0, 0, 2 * 8 * 61]
    assert list(counter.upload_framing) == [8 * 21, 0, 0, 0, 2 * 8 * 21]
    value = broadcast(
        RawFloats("float64"), vectors[0], [1, 2], round_seed=1, rng=rng, counter=counter
    )
    assert np.array_equal(value, vectors[0])
    assert list(counter.download) == [0, 808, 808, 0, 0] and counter.broadcast == 808
    assert counter.total_upload == 3 * 488 and counter.total_download == 2 * 808
    assert counter.total_upload_unframed == 3 * 320
    assert counter.total_download_unframed == 2 * 640
    raw = RawFloats()
    aggregator = raw.aggregator(10, 0)
    payload = raw.encode(vectors[0], round_seed=0, client_id=3)
    assert payload[:5] == b"QDRF\x04" and len(payload) == 21 + 40
    for bad, needle in (
        (b"\x00" * 7, "magic"),
        (payload[:7], "truncated"),
        (payload[:-1], "bytes"),
        (raw.encode(vectors[0], round_seed=1, client_id=3), "round"),
        (raw.encode(vectors[0, :9], round_seed=0, client_id=3), "dimension"),
        (RawFloats("float64").encode(vectors[0], round_seed=0, client_id=3), "parameters"),
    ):
        with pytest.raises(PayloadError, match=needle):
            aggregator.add(bad)
    assert aggregator.count == 0
    aggregator.add(payload)
    with pytest.raises(PayloadError, match="already added"):
        aggregator.add(payload)
    assert aggregator.count == 1
    with pytest.raises(PayloadError, match="round"):
        raw.decode_batch([payload], dim=10, round_seed=1)
    with pytest.raises(ParameterError):
        RawFloats("int8")


def test_protocol_compressor_payloads_are_counted_from_their_length():
    from quicdesign.compressors import QSGD

    compressor = QSGD(levels=3)
    counter = BitCounter(2)
    send_each(
        compressor,
        np.ones((2, 50)),
        [0, 1],
        round_seed=3,
        rng=np.random.default_rng(0),
        counter=counter,
    )
    assert list(counter.upload) == [8 * compressor.payload_size(50)] * 2


def test_state_and_history_objects_pickle():
    from quicdesign.fl import run_signsgd

    history = run_signsgd(
        NoisyQuadratic(20, 3), "fv", rounds=5, step_size=0.1, batch_size=2, warmup=2
    )
    again = pickle.loads(pickle.dumps(history))
    assert again.metrics == history.metrics
    assert np.array_equal(again.extras["state"].agreements, history.extras["state"].agreements)
    rows = list(history.rows())
    assert len(rows) == 6 and rows[-1]["round"] == 5 and "upload_bits" in rows[0]


def test_bundled_sklearn_datasets_and_synthetic_teachers():
    train, test = sklearn_dataset("digits", seed=0)
    assert train.num_features == 64 and train.num_classes == 10
    assert len(train) + len(test) == 1797
    np.testing.assert_allclose(train.features.mean(axis=0), 0, atol=1e-9)
    cancer, _ = sklearn_dataset("breast_cancer")
    assert cancer.num_classes == 2 and cancer.num_features == 30
    problem = classification_problem("logistic", cancer, None, 4, partition="dirichlet", alpha=1.0)
    assert set(problem.metrics(np.zeros(problem.dim))) == {"loss", "accuracy"}
    with pytest.raises(ParameterError):
        sklearn_dataset("mnist")
    teacher_train, _ = teacher_dataset(num_train=500, num_test=10, seed=0)
    assert np.bincount(teacher_train.targets).min() > 20  # every class is present
    linear_train, _ = linear_teacher_dataset(num_train=100, num_test=10, num_classes=3)
    assert set(np.unique(linear_train.targets)) <= {0, 1, 2}
