"""Training problems: losses and stochastic gradients, vectorized over clients.

A :class:`Problem` answers two questions. ``gradients(points, clients, batch_sizes, rng)``
returns one stochastic gradient per requested client, each at its own point (MCM's workers
differentiate at their own perturbed models), as one ``(k, dim)`` array computed with
batched matrix products. ``metrics(point)`` evaluates the server model (training loss,
accuracies). Mini-batches are drawn with replacement from each client's samples; a batch
size of 0 means the client's full local data (a deterministic gradient).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from quicdesign._validate import check_int, check_positive_float
from quicdesign.errors import ParameterError

from ._common import generator
from .data import Dataset, Partition, dirichlet_partition, iid_partition, shard_partition

__all__ = [
    "Problem",
    "Model",
    "LinearRegression",
    "LogisticRegression",
    "SoftmaxRegression",
    "MLP",
    "SupervisedProblem",
    "NoisyQuadratic",
    "heterogeneous_least_squares",
    "client_batch_sizes",
    "classification_problem",
]


def client_batch_sizes(batch_size, num_clients) -> np.ndarray:
    """Per-client batch sizes as an ``int64`` array (0 = full local data).

    Parameters
    ----------
    batch_size : int, sequence of int or None
        One size for every client, one per client (heterogeneous), or None for full
        local gradients.
    """
    if batch_size is None:
        return np.zeros(num_clients, dtype=np.int64)
    sizes = np.asarray(batch_size)
    if sizes.ndim == 0:
        sizes = np.full(num_clients, check_int(batch_size, "batch_size", 0), dtype=np.int64)
    if sizes.shape != (num_clients,) or sizes.dtype.kind not in "iu" or np.any(sizes < 0):
        raise ParameterError(
            f"batch_size must be an int >= 0 or {num_clients} of them, got {batch_size!r}"
        )
    return sizes.astype(np.int64)


class Problem(ABC):
    """A federated objective: clients hold data; the server model is one vector.

    Attributes
    ----------
    dim : int
        Number of parameters.
    num_clients : int
        Number of clients.
    optimum_loss : float or None
        The minimum training loss when known (least squares, quadratics).
    tensor_slices : tuple of (str, slice)
        Named parameter tensors in the flat vector (per-tensor compression uses them).
    """

    dim: int
    num_clients: int
    optimum_loss: float | None = None

    @property
    def tensor_slices(self):
        """One tensor holding every parameter unless a subclass says otherwise."""
        return (("params", slice(0, self.dim)),)

    def initial_point(self, seed=0) -> np.ndarray:
        """The shared starting model (zeros unless a subclass needs symmetry breaking)."""
        return np.zeros(self.dim)

    @abstractmethod
    def gradients(self, points, clients, batch_sizes, rng) -> np.ndarray:
        """Stochastic gradients, one row per client.

        Parameters
        ----------
        points : numpy.ndarray
            ``(dim,)`` shared model or ``(k, dim)`` one model per client.
        clients : numpy.ndarray
            ``(k,)`` client ids.
        batch_sizes : numpy.ndarray
            ``(k,)`` batch sizes, 0 for the full local data.
        rng : numpy.random.Generator
            Mini-batch sampling randomness.

        Returns
        -------
        numpy.ndarray
            ``(k, dim)`` gradients.
        """

    @abstractmethod
    def loss(self, point) -> float:
        """Training objective at a model."""

    def metrics(self, point) -> dict:
        """Named evaluation numbers of a model (``loss`` always, more when defined)."""
        loss = self.loss(point)
        values = {"loss": loss}
        if self.optimum_loss is not None:
            values["excess_loss"] = max(loss - self.optimum_loss, 0.0)
        return values


class Model(ABC):
    """A differentiable model with a flat parameter vector, evaluated in batches."""

    num_params: int
    regression = False

    @property
    def tensor_slices(self):
        return (("params", slice(0, self.num_params)),)

    def init(self, rng) -> np.ndarray:
        """Initial parameters (zeros for convex models)."""
        return np.zeros(self.num_params)

    @abstractmethod
    def loss_and_grad(self, params, features, targets, weights):
        """Weighted losses and gradients of ``k`` models on ``k`` batches.

        Parameters
        ----------
        params : numpy.ndarray
            ``(k, num_params)``, or ``(1, num_params)`` for one model shared by all rows.
        features : numpy.ndarray
            ``(k, b, f)``.
        targets : numpy.ndarray
            ``(k, b)``.
        weights : numpy.ndarray
            ``(k, b)`` sample weights, each row summing to one (zero for padding).

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            Losses ``(k,)`` and gradients ``(k, num_params)``.
        """

    @abstractmethod
    def evaluate(self, params, features, targets):
        """Mean loss of one model on a dataset and its predicted labels, in one pass.

        Parameters
        ----------
        params : numpy.ndarray
            ``(num_params,)``.
        features, targets : numpy.ndarray
            ``(n, f)`` and ``(n,)``.

        Returns
        -------
        (float, numpy.ndarray or None)
            Mean loss (no regularization) and predicted labels (None for regression).
        """


class LinearRegression(Model):
    """Least squares ``0.5 * (x . w - y)**2`` without intercept."""

    regression = True

    def __init__(self, num_features):
        self.num_features = check_int(num_features, "num_features", 1)
        self.num_params = self.num_features

    def loss_and_grad(self, params, features, targets, weights):
        residual = (features @ params[:, :, None])[..., 0] - targets
        losses = 0.5 * np.einsum("kb,kb->k", weights, residual**2)
        return losses, (np.swapaxes(features, 1, 2) @ (weights * residual)[..., None])[..., 0]

    def evaluate(self, params, features, targets):
        return 0.5 * float(np.mean((features @ params - targets) ** 2)), None


def _dense(inputs, weight, bias):
    """``inputs @ weight + bias`` for ``(k, b, i)`` inputs and one or ``k`` weight sets."""
    if weight.shape[0] == 1:
        # one shared model: a single 2-D product instead of k small ones
        k, b, i = inputs.shape
        return (inputs.reshape(k * b, i) @ weight[0] + bias[0]).reshape(k, b, -1)
    return inputs @ weight + bias[:, None, :]


def _cross_entropy_terms(logits, labels):
    """Per-sample cross-entropy and softmax probabilities of ``(..., C)`` logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    flat = shifted.reshape(-1, shifted.shape[-1])
    picked = flat[np.arange(flat.shape[0]), labels.reshape(-1)].reshape(labels.shape)
    return np.log(total[..., 0]) - picked, exp / total


def _softmax_terms(logits, labels, weights):
    """Weighted cross-entropy per row and its gradient with respect to the logits."""
    per_sample, delta = _cross_entropy_terms(logits, labels)
    losses = np.einsum("kb,kb->k", weights, per_sample)
    flat = delta.reshape(-1, delta.shape[-1])
    flat[np.arange(flat.shape[0]), labels.reshape(-1)] -= 1.0
    return losses, delta * weights[..., None]


def _classification_eval(logits, labels):
    per_sample, _ = _cross_entropy_terms(logits, labels)
    return float(per_sample.mean()), np.argmax(logits, axis=-1)


class LogisticRegression(Model):
    """Binary logistic regression with an intercept (labels 0 and 1)."""

    def __init__(self, num_features):
        self.num_features = check_int(num_features, "num_features", 1)
        self.num_params = self.num_features + 1

    @property
    def tensor_slices(self):
        f = self.num_features
        return (("weight", slice(0, f)), ("bias", slice(f, f + 1)))

    def loss_and_grad(self, params, features, targets, weights):
        margin = (features @ params[:, :-1, None])[..., 0] + params[:, -1:]
        # softplus(z) - y z, computed without overflow
        losses = np.einsum("kb,kb->k", weights, np.logaddexp(0.0, margin) - targets * margin)
        residual = weights * (0.5 * (1.0 + np.tanh(0.5 * margin)) - targets)
        grads = np.concatenate(
            [
                (np.swapaxes(features, 1, 2) @ residual[..., None])[..., 0],
                residual.sum(axis=1, keepdims=True),
            ],
            axis=1,
        )
        return losses, grads

    def evaluate(self, params, features, targets):
        margin = features @ params[:-1] + params[-1]
        loss = float(np.mean(np.logaddexp(0.0, margin) - targets * margin))
        return loss, (margin > 0).astype(np.int64)


class SoftmaxRegression(Model):
    """Multinomial logistic regression with intercepts."""

    def __init__(self, num_features, num_classes):
        self.num_features = check_int(num_features, "num_features", 1)
        self.num_classes = check_int(num_classes, "num_classes", 2)
        self.num_params = (self.num_features + 1) * self.num_classes

    @property
    def tensor_slices(self):
        split = self.num_features * self.num_classes
        return (("weight", slice(0, split)), ("bias", slice(split, self.num_params)))

    def _unpack(self, params):
        split = self.num_features * self.num_classes
        weight = params[:, :split].reshape(-1, self.num_features, self.num_classes)
        return weight, params[:, split:]

    def loss_and_grad(self, params, features, targets, weights):
        weight, bias = self._unpack(params)
        logits = _dense(features, weight, bias)
        losses, delta = _softmax_terms(logits, targets, weights)
        grad_weight = np.swapaxes(features, 1, 2) @ delta
        grads = np.concatenate([grad_weight.reshape(len(features), -1), delta.sum(axis=1)], axis=1)
        return losses, grads

    def evaluate(self, params, features, targets):
        weight, bias = self._unpack(params[None])
        return _classification_eval(features @ weight[0] + bias[0], targets)


class MLP(Model):
    """One hidden tanh layer: ``softmax(tanh(x W1 + b1) W2 + b2)``."""

    def __init__(self, num_features, num_hidden, num_classes):
        self.num_features = check_int(num_features, "num_features", 1)
        self.num_hidden = check_int(num_hidden, "num_hidden", 1)
        self.num_classes = check_int(num_classes, "num_classes", 2)
        f, h, c = self.num_features, self.num_hidden, self.num_classes
        self._shapes = (("W1", (f, h)), ("b1", (h,)), ("W2", (h, c)), ("b2", (c,)))
        self.num_params = f * h + h + h * c + c

    @property
    def tensor_slices(self):
        slices, start = [], 0
        for name, shape in self._shapes:
            size = int(np.prod(shape))
            slices.append((name, slice(start, start + size)))
            start += size
        return tuple(slices)

    def init(self, rng):
        f, h, c = self.num_features, self.num_hidden, self.num_classes
        return np.concatenate(
            [
                rng.normal(scale=1 / np.sqrt(f), size=f * h),
                np.zeros(h),
                rng.normal(scale=1 / np.sqrt(h), size=h * c),
                np.zeros(c),
            ]
        )

    def _unpack(self, params):
        k = params.shape[0]
        return [
            params[:, s].reshape(k, *shape)
            for (_, shape), (_, s) in zip(self._shapes, self.tensor_slices, strict=True)
        ]

    def loss_and_grad(self, params, features, targets, weights):
        w1, b1, w2, b2 = self._unpack(params)
        # batched matmul beats einsum for these shapes
        hidden = np.tanh(_dense(features, w1, b1))
        logits = _dense(hidden, w2, b2)
        losses, delta_out = _softmax_terms(logits, targets, weights)
        delta_hidden = _dense(delta_out, np.swapaxes(w2, 1, 2), np.zeros((1, w2.shape[1])))
        delta_hidden *= 1.0 - hidden**2
        k = features.shape[0]
        grads = np.concatenate(
            [
                (np.swapaxes(features, 1, 2) @ delta_hidden).reshape(k, -1),
                delta_hidden.sum(axis=1),
                (np.swapaxes(hidden, 1, 2) @ delta_out).reshape(k, -1),
                delta_out.sum(axis=1),
            ],
            axis=1,
        )
        return losses, grads

    def evaluate(self, params, features, targets):
        w1, b1, w2, b2 = (a[0] for a in self._unpack(params[None]))
        return _classification_eval(np.tanh(features @ w1 + b1) @ w2 + b2, targets)


class SupervisedProblem(Problem):
    """A model trained on a partitioned dataset, with optional L2 regularization.

    Parameters
    ----------
    model : Model
        The model; its ``num_params`` is ``dim``.
    train : Dataset
        Training data; ``partition`` says which client holds which sample.
    partition : Partition
        Client shares of ``train``.
    test : Dataset, optional
        Held-out data for ``test_accuracy``.
    l2 : float
        Adds ``l2 / 2 * |w|**2`` to every loss.
    name : str
        Label used in reports.

    Notes
    -----
    The training loss is the mean over all training samples, so clients with more data
    weigh more; ``optimum_loss`` can be set by the caller when known.
    """

    def __init__(self, model, train, partition, *, test=None, l2=0.0, name="supervised"):
        if partition.order.size and partition.order.max() >= len(train):
            raise ParameterError("partition refers to samples beyond the training set")
        self.model = model
        self.train = train
        self.partition = partition
        self.test = test
        self.l2 = check_positive_float(l2, "l2", allow_zero=True)
        self.name = name
        self.dim = model.num_params
        self.num_clients = partition.num_clients
        self._starts = partition.starts
        self._all_weights = np.full((1, len(train)), 1.0 / len(train))

    @property
    def tensor_slices(self):
        return self.model.tensor_slices

    def initial_point(self, seed=0):
        return self.model.init(generator(seed, "initial-model"))

    def _batches(self, clients, batch_sizes, rng):
        sizes = self.partition.sizes[clients]
        drawn = np.where(batch_sizes > 0, batch_sizes, sizes)
        positions = np.arange(drawn.max())
        # full-data rows walk through the client's samples; others sample with replacement
        local = np.minimum(positions, sizes[:, None] - 1)
        if np.any(batch_sizes > 0):  # full-batch runs draw no randomness (rng may be None)
            sampled = np.floor(rng.random((clients.size, positions.size)) * sizes[:, None])
            local = np.where(batch_sizes[:, None] > 0, sampled.astype(np.int64), local)
        indices = self.partition.order[self._starts[clients][:, None] + local]
        weights = (positions < drawn[:, None]) / drawn[:, None]
        return self.train.features[indices], self.train.targets[indices], weights

    def gradients(self, points, clients, batch_sizes, rng):
        clients = np.asarray(clients, dtype=np.int64)
        batch_sizes = np.asarray(batch_sizes, dtype=np.int64)
        points = np.asarray(points, dtype=np.float64)
        # a shared model stays one row: batched matmuls broadcast it for free
        points = points[None] if points.ndim == 1 else points
        if points.shape not in ((1, self.dim), (clients.size, self.dim)):
            raise ParameterError(
                f"points must be ({self.dim},) or ({clients.size}, {self.dim}), got {points.shape}"
            )
        features, targets, weights = self._batches(clients, batch_sizes, rng)
        _, grads = self.model.loss_and_grad(points, features, targets, weights)
        if self.l2:
            grads += self.l2 * points
        return grads

    def _evaluate(self, point, dataset):
        point = np.asarray(point, dtype=np.float64)
        loss, predicted = self.model.evaluate(point, dataset.features, dataset.targets)
        loss += 0.5 * self.l2 * float(np.dot(point, point))
        accuracy = None if predicted is None else float(np.mean(predicted == dataset.targets))
        return loss, accuracy

    def loss(self, point):
        return self._evaluate(point, self.train)[0]

    def full_gradient(self, point):
        """Gradient of the training loss (all samples)."""
        _, grads = self.model.loss_and_grad(
            np.asarray(point, dtype=np.float64)[None],
            self.train.features[None],
            self.train.targets[None],
            self._all_weights,
        )
        return grads[0] + self.l2 * np.asarray(point)

    def metrics(self, point):
        loss, accuracy = self._evaluate(point, self.train)
        values = {"loss": loss}
        if self.optimum_loss is not None:
            values["excess_loss"] = max(loss - self.optimum_loss, 0.0)
        if accuracy is not None:
            values["accuracy"] = accuracy
            if self.test is not None:
                values["test_loss"], values["test_accuracy"] = self._evaluate(point, self.test)
        return values


class NoisyQuadratic(Problem):
    """``f(x) = 0.5 * sum_i a_i (x_i - c_i)**2`` with Gaussian per-sample gradient noise.

    A batch of size ``B`` adds ``N(0, noise_std**2 / B)`` noise per coordinate (the
    signSGD-FV toy: workers with small batches have noisier signs). With
    ``noise="skewed"`` each sample's noise is ``noise_std (E - 1)``, ``E ~ Exp(1)``: mean 0
    and the same variance, but median ``-0.307 noise_std`` for ``B = 1``, so near the
    optimum a small-batch worker's sign is wrong more often than right (the stress test
    under which majority vote stops converging to the optimum).

    Parameters
    ----------
    dim, num_clients : int
        Dimension and number of workers (all workers see the same objective).
    noise_std : float
        Per-sample noise standard deviation.
    noise : {"gaussian", "skewed"}
        Per-sample noise distribution (see above).
    curvature : (float, float)
        Range of the uniform draws of ``a_i``.
    seed : int
        Draws ``a`` and ``c``.
    """

    optimum_loss = 0.0

    def __init__(
        self,
        dim=200,
        num_clients=15,
        *,
        noise_std=4.0,
        curvature=(0.5, 2.0),
        seed=0,
        noise="gaussian",
    ):
        if noise not in ("gaussian", "skewed"):
            raise ParameterError(f"noise must be 'gaussian' or 'skewed', got {noise!r}")
        self.noise = noise
        self.dim = check_int(dim, "dim", 1)
        self.num_clients = check_int(num_clients, "num_clients", 1)
        self.noise_std = check_positive_float(noise_std, "noise_std", allow_zero=True)
        rng = generator(seed, "noisy-quadratic")
        self.curvature = rng.uniform(*curvature, size=self.dim)
        self.center = rng.normal(size=self.dim)

    def gradients(self, points, clients, batch_sizes, rng):
        clients = np.asarray(clients)
        batch = np.asarray(batch_sizes, dtype=np.float64)
        # batch 0 means the exact gradient
        scale = np.where(batch > 0, self.noise_std / np.sqrt(np.maximum(batch, 1)), 0.0)
        exact = self.full_gradient(points)
        if self.noise == "gaussian":
            noise = rng.standard_normal((clients.size, self.dim)) * scale[:, None]
        else:
            # the mean of B centred Exp(1) draws is Gamma(B, 1/B) - 1
            shape = np.maximum(batch, 1)[:, None]
            draws = rng.gamma(shape, 1.0 / shape, size=(clients.size, self.dim)) - 1.0
            noise = draws * np.where(batch > 0, self.noise_std, 0.0)[:, None]
        return np.broadcast_to(exact, noise.shape) + noise

    def loss(self, point):
        return float(0.5 * np.sum(self.curvature * (np.asarray(point) - self.center) ** 2))

    def full_gradient(self, point):
        """The exact gradient ``a * (x - c)`` (the noise has mean zero)."""
        return self.curvature * (np.asarray(point, dtype=np.float64) - self.center)


def heterogeneous_least_squares(
    num_clients=20, dim=20, samples_per_client=200, *, shift_scale=2.0, noise_std=0.5, seed=0
):
    """The MCM toy: per-client shifted Gaussian features and a shared linear truth.

    Features of client ``i`` are ``N(mu_i, I)`` with ``mu_i ~ N(0, shift_scale**2 I)``;
    ``w_true[j] = (-1)**(j + 1) * exp(-j / 10)``; labels ``y = X w_true + N(0, noise_std**2)``.

    Returns
    -------
    SupervisedProblem
        With ``optimum_loss`` (from ``lstsq``) and ``smoothness`` ``L = max_i
        lambda_max(X_i^T X_i / n_i)`` set, so ``step = 1 / (2 L)`` is the paper's choice.
    """
    num_clients = check_int(num_clients, "num_clients", 1)
    dim = check_int(dim, "dim", 1)
    samples_per_client = check_int(samples_per_client, "samples_per_client", 1)
    rng = generator(seed, "least-squares")
    shifts = rng.normal(scale=shift_scale, size=(num_clients, 1, dim))
    features = rng.normal(size=(num_clients, samples_per_client, dim)) + shifts
    j = np.arange(dim)
    truth = (-1.0) ** (j + 1) * np.exp(-j / 10)
    targets = features @ truth + rng.normal(scale=noise_std, size=(num_clients, samples_per_client))
    train = Dataset(features.reshape(-1, dim), targets.reshape(-1))
    problem = SupervisedProblem(
        LinearRegression(dim),
        train,
        Partition.from_sizes([samples_per_client] * num_clients),
        name="least-squares",
    )
    solution = np.linalg.lstsq(train.features, train.targets, rcond=None)[0]
    problem.optimum_loss = problem.loss(solution)
    problem.solution = solution
    if samples_per_client < dim:
        # X^T X and X X^T share their nonzero eigenvalues; the smaller Gram is cheaper
        gram = np.einsum("nai,nbi->nab", features, features) / samples_per_client
    else:
        gram = np.einsum("nbi,nbj->nij", features, features) / samples_per_client
    problem.smoothness = float(np.linalg.eigvalsh(gram).max())
    return problem


def classification_problem(
    model_name,
    train,
    test,
    num_clients,
    *,
    partition="iid",
    shards_per_client=2,
    alpha=0.5,
    hidden=64,
    l2=0.0,
    seed=0,
):
    """A classification :class:`SupervisedProblem` from a dataset pair.

    Parameters
    ----------
    model_name : {"logistic", "softmax", "mlp"}
        Model family (``logistic`` needs two classes).
    partition : {"iid", "shards", "dirichlet"} or Partition
        How training samples are split among ``num_clients``.
    """
    f, c = train.num_features, train.num_classes
    models = {
        "logistic": lambda: LogisticRegression(f),
        "softmax": lambda: SoftmaxRegression(f, c),
        "mlp": lambda: MLP(f, hidden, c),
    }
    if model_name not in models:
        raise ParameterError(f"unknown model {model_name!r}; choose from {sorted(models)}")
    if model_name == "logistic" and c != 2:
        raise ParameterError(f"logistic regression needs 2 classes, the data has {c}")
    if isinstance(partition, Partition):
        split = partition
    elif partition == "iid":
        split = iid_partition(len(train), num_clients, seed=seed)
    elif partition == "shards":
        split = shard_partition(
            train.targets, num_clients, shards_per_client=shards_per_client, seed=seed
        )
    elif partition == "dirichlet":
        split = dirichlet_partition(train.targets, num_clients, alpha=alpha, seed=seed)
    else:
        raise ParameterError(f"unknown partition {partition!r}; use iid, shards or dirichlet")
    return SupervisedProblem(models[model_name](), train, split, test=test, l2=l2, name=model_name)
