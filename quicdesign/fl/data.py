"""Datasets (synthetic and scikit-learn's bundled ones) and client partitions.

scikit-learn is imported only inside :func:`sklearn_dataset`, so ``import quicdesign.fl``
stays numpy-only. Nothing is downloaded: ``load_digits`` and ``load_breast_cancer`` ship
with scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quicdesign._validate import check_int, check_positive_float, check_probability
from quicdesign.errors import ParameterError

from ._common import generator

__all__ = [
    "Dataset",
    "Partition",
    "iid_partition",
    "shard_partition",
    "dirichlet_partition",
    "teacher_dataset",
    "linear_teacher_dataset",
    "sklearn_dataset",
    "train_test_split",
]


@dataclass(frozen=True)
class Dataset:
    """Features and targets of one split.

    Attributes
    ----------
    features : numpy.ndarray
        ``(n, f)`` float64.
    targets : numpy.ndarray
        ``(n,)``: class labels ``0..num_classes-1`` (int64), or real values for regression.
    num_classes : int
        Number of classes, 0 for regression.
    """

    features: np.ndarray
    targets: np.ndarray
    num_classes: int = 0

    def __post_init__(self):
        if self.features.ndim != 2 or self.targets.shape != (self.features.shape[0],):
            raise ParameterError(
                f"features must be (n, f) and targets (n,), got {self.features.shape} "
                f"and {self.targets.shape}"
            )

    def __len__(self):
        return self.features.shape[0]

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return self.features.shape[1]


@dataclass(frozen=True)
class Partition:
    """Which training samples each client holds.

    Attributes
    ----------
    order : numpy.ndarray
        Sample indices grouped by client: client ``c`` holds
        ``order[starts[c]:starts[c] + sizes[c]]``.
    sizes : numpy.ndarray
        Samples per client (every client holds at least one).
    """

    order: np.ndarray
    sizes: np.ndarray

    def __post_init__(self):
        if self.sizes.ndim != 1 or self.sizes.size == 0 or np.any(self.sizes < 1):
            raise ParameterError("every client must hold at least one sample")
        if self.order.shape != (int(self.sizes.sum()),):
            raise ParameterError("order must list exactly sum(sizes) sample indices")

    @classmethod
    def from_sizes(cls, sizes):
        """Contiguous blocks: client ``c`` holds the next ``sizes[c]`` samples."""
        sizes = np.asarray(sizes, dtype=np.int64)
        return cls(np.arange(int(sizes.sum()), dtype=np.int64), sizes)

    @classmethod
    def from_groups(cls, groups):
        """One index array per client."""
        groups = [np.asarray(g, dtype=np.int64) for g in groups]
        return cls(np.concatenate(groups), np.array([g.size for g in groups], dtype=np.int64))

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return self.sizes.size

    @property
    def starts(self) -> np.ndarray:
        """Offset of each client's block in ``order``."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def client_indices(self, client) -> np.ndarray:
        """Sample indices of one client."""
        start = int(self.starts[client])
        return self.order[start : start + int(self.sizes[client])]


def iid_partition(num_samples, num_clients, *, seed=0) -> Partition:
    """Shuffle the samples and deal them into near-equal client shares."""
    num_samples = check_int(num_samples, "num_samples", 1)
    num_clients = check_int(num_clients, "num_clients", 1, num_samples)
    order = generator(seed, "partition-iid").permutation(num_samples)
    sizes = np.full(num_clients, num_samples // num_clients, dtype=np.int64)
    sizes[: num_samples % num_clients] += 1
    return Partition(order.astype(np.int64), sizes)


def shard_partition(labels, num_clients, *, shards_per_client=2, seed=0) -> Partition:
    """Label-sorted shards: sort by label, cut into equal shards, give each client a few.

    With two shards per client most clients see only one or two classes (the
    pathological non-iid split of McMahan et al.).
    """
    labels = np.asarray(labels)
    num_clients = check_int(num_clients, "num_clients", 1)
    shards_per_client = check_int(shards_per_client, "shards_per_client", 1)
    num_shards = num_clients * shards_per_client
    if num_shards > labels.size:
        raise ParameterError(
            f"{num_shards} shards need at least as many samples, got {labels.size}"
        )
    rng = generator(seed, "partition-shards")
    # random tie-breaking inside a label so shards of the same class differ between seeds
    order = np.lexsort((rng.random(labels.size), labels))
    shards = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return Partition.from_groups([np.concatenate([shards[s] for s in row]) for row in assignment])


def dirichlet_partition(labels, num_clients, *, alpha=0.5, seed=0, max_tries=100) -> Partition:
    """Per-class Dirichlet(alpha) client proportions; small alpha is more skewed.

    Draws are repeated (at most ``max_tries`` times) until every client holds a sample.
    """
    labels = np.asarray(labels)
    num_clients = check_int(num_clients, "num_clients", 1, labels.size)
    alpha = check_positive_float(alpha, "alpha")
    rng = generator(seed, "partition-dirichlet")
    classes = np.unique(labels)
    for _ in range(max_tries):
        owner = np.empty(labels.size, dtype=np.int64)
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            counts = np.diff(cuts, prepend=0, append=members.size)
            owner[members] = np.repeat(np.arange(num_clients), counts)
        sizes = np.bincount(owner, minlength=num_clients)
        if np.all(sizes > 0):
            return Partition(np.argsort(owner, kind="stable").astype(np.int64), sizes)
    raise ParameterError(
        f"Dirichlet(alpha={alpha}) left a client empty in {max_tries} draws; raise alpha "
        "or lower num_clients"
    )


def train_test_split(dataset, *, test_fraction=0.2, seed=0):
    """Shuffle and split a dataset into ``(train, test)``."""
    test_fraction = check_probability(test_fraction, "test_fraction")
    order = generator(seed, "train-test-split").permutation(len(dataset))
    num_test = max(1, int(round(test_fraction * len(dataset))))
    if num_test >= len(dataset):
        raise ParameterError("test_fraction leaves no training samples")
    test, train = order[:num_test], order[num_test:]
    pick = lambda idx: Dataset(dataset.features[idx], dataset.targets[idx], dataset.num_classes)  # noqa: E731
    return pick(train), pick(test)


def teacher_dataset(
    *,
    num_train=5000,
    num_test=1000,
    num_features=20,
    num_classes=5,
    teacher_hidden=32,
    teacher_scale=2.0,
    seed=0,
):
    """Gaussian inputs labelled by a random two-layer tanh teacher network.

    Returns
    -------
    (Dataset, Dataset)
        Train and test splits; labels are the teacher's argmax.
    """
    num_train = check_int(num_train, "num_train", 1)
    num_test = check_int(num_test, "num_test", 1)
    num_features = check_int(num_features, "num_features", 1)
    num_classes = check_int(num_classes, "num_classes", 2)
    teacher_hidden = check_int(teacher_hidden, "teacher_hidden", 1)
    rng = generator(seed, "teacher")
    first = rng.normal(
        scale=teacher_scale / np.sqrt(num_features), size=(num_features, teacher_hidden)
    )
    second = rng.normal(scale=1 / np.sqrt(teacher_hidden), size=(teacher_hidden, num_classes))
    features = rng.normal(size=(num_train + num_test, num_features))
    labels = np.argmax(np.tanh(features @ first) @ second, axis=1).astype(np.int64)
    return (
        Dataset(features[:num_train], labels[:num_train], num_classes),
        Dataset(features[num_train:], labels[num_train:], num_classes),
    )


def linear_teacher_dataset(
    *, num_train=2000, num_test=500, num_features=20, num_classes=2, temperature=1.0, seed=0
):
    """Gaussian inputs with labels drawn from a random softmax (logistic) teacher."""
    num_train = check_int(num_train, "num_train", 1)
    num_test = check_int(num_test, "num_test", 1)
    num_classes = check_int(num_classes, "num_classes", 2)
    rng = generator(seed, "linear-teacher")
    features = rng.normal(size=(num_train + num_test, check_int(num_features, "num_features", 1)))
    logits = features @ rng.normal(size=(num_features, num_classes)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    # inverse-CDF sampling of one label per row, vectorized
    labels = (rng.random((logits.shape[0], 1)) > np.cumsum(probabilities, axis=1)).sum(axis=1)
    labels = np.minimum(labels, num_classes - 1).astype(np.int64)
    return (
        Dataset(features[:num_train], labels[:num_train], num_classes),
        Dataset(features[num_train:], labels[num_train:], num_classes),
    )


def sklearn_dataset(name, *, test_fraction=0.2, seed=0):
    """A dataset bundled with scikit-learn, standardized with training statistics.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}
        ``load_digits`` (1797 8x8 images, 10 classes) or ``load_breast_cancer``
        (569 samples, 30 features, 2 classes). Both ship with scikit-learn.

    Returns
    -------
    (Dataset, Dataset)
        Train and test splits.
    """
    from sklearn import datasets  # lazy: scikit-learn is an optional dependency

    loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ParameterError(
            f"unknown scikit-learn dataset {name!r}; choose from {sorted(loaders)}"
        )
    bunch = loaders[name]()
    labels = bunch.target.astype(np.int64)
    full = Dataset(bunch.data.astype(np.float64), labels, int(labels.max()) + 1)
    train, test = train_test_split(full, test_fraction=test_fraction, seed=seed)
    mean = train.features.mean(axis=0)
    # constant pixels of the digits have zero spread; leave them at zero
    scale = np.where(train.features.std(axis=0) > 0, train.features.std(axis=0), 1.0)
    standardize = lambda d: Dataset((d.features - mean) / scale, d.targets, d.num_classes)  # noqa: E731
    return standardize(train), standardize(test)
