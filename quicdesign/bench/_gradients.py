"""Real gradients for the DME benchmark: softmax regression on scikit-learn's digits.

The model is a softmax (multinomial logistic) regression over the 10 digit classes on a
fixed random ReLU-feature expansion of the 64 pixels; the number of features is chosen
so that the flattened parameters ``[W (features x 10), bias (10)]`` have at least ``dim``
entries, and a gradient vector is the first ``dim`` of them. The model is trained for a
few epochs of minibatch SGD (so gradients come from a partly trained model, not from the
initial point), then every call of :meth:`DigitsGradients.sample` returns the gradient on
a fresh minibatch: the clients of a round hold different data at the same model point.

scikit-learn is imported only when a :class:`DigitsGradients` is built; ``load_digits``
ships with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["DigitsGradients", "digits_gradients"]

_NUM_CLASSES = 10


class DigitsGradients:
    """Minibatch gradients of a softmax regression trained on ``load_digits``.

    Parameters
    ----------
    dim : int
        Length of the gradient vectors returned by :meth:`sample`.
    seed : int
        Seed of the random features, the training order and the initial point.
    epochs : int
        Epochs of minibatch SGD before gradients are sampled.
    batch_size : int
        Samples per client minibatch (and per training step).
    learning_rate : float
        SGD step size (features are scaled to unit mean square norm).
    """

    def __init__(self, dim, seed=0, epochs=3, batch_size=32, learning_rate=1.0):
        from sklearn.datasets import load_digits

        self.dim = dim
        self.batch_size = batch_size
        digits = load_digits()
        self._pixels = (digits.data / 16.0).astype(np.float32)
        self._labels = digits.target.astype(np.int64)
        rng = np.random.default_rng([seed, 0x6D61])
        num_features = max(1, math.ceil((dim - _NUM_CLASSES) / _NUM_CLASSES))
        self._projection = rng.standard_normal((64, num_features), dtype=np.float32)
        self._offset = rng.standard_normal(num_features, dtype=np.float32)
        # 1/sqrt(F) keeps the logits O(1) whatever the width, so one step size fits all d
        self._feature_scale = np.float32(math.sqrt(2.0 / num_features))
        self.weights = np.zeros((num_features, _NUM_CLASSES), dtype=np.float32)
        self.bias = np.zeros(_NUM_CLASSES, dtype=np.float32)
        num_samples = self._labels.size
        for _ in range(epochs):
            order = rng.permutation(num_samples)
            for start in range(0, num_samples, batch_size):
                grad_w, grad_b = self._gradient(order[start : start + batch_size])
                self.weights -= learning_rate * grad_w
                self.bias -= learning_rate * grad_b

    def _features(self, rows):
        hidden = self._pixels[rows] @ self._projection
        hidden += self._offset
        np.maximum(hidden, 0.0, out=hidden)
        hidden *= self._feature_scale
        return hidden

    def _gradient(self, rows):
        features = self._features(rows)
        logits = features @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(rows.size), self._labels[rows]] -= 1.0
        probs /= rows.size
        return features.T @ probs, probs.sum(axis=0)

    def accuracy(self) -> float:
        """Training accuracy of the current model (a sanity figure)."""
        rows = np.arange(self._labels.size)
        logits = self._features(rows) @ self.weights + self.bias
        return float(np.mean(logits.argmax(axis=1) == self._labels))

    def sample(self, rng) -> np.ndarray:
        """The gradient on a fresh random minibatch, first ``dim`` entries, float32."""
        rows = rng.choice(self._labels.size, size=self.batch_size, replace=False)
        grad_w, grad_b = self._gradient(rows)
        return np.concatenate([grad_w.reshape(-1), grad_b])[: self.dim]


@functools.lru_cache(maxsize=2)
def digits_gradients(dim, seed=0) -> DigitsGradients:
    """A trained :class:`DigitsGradients` for ``dim`` (cached: training takes a moment)."""
    return DigitsGradients(dim, seed)
