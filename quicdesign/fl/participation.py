"""Which clients take part in a round."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quicdesign._validate import check_int, check_probability
from quicdesign.errors import ParameterError

__all__ = ["Participation", "FULL_PARTICIPATION", "split_batch_sizes"]


@dataclass(frozen=True)
class Participation:
    """Full, Bernoulli or fixed-size client sampling.

    Parameters
    ----------
    rate : float
        Each client takes part independently with this probability (1: everyone).
    per_round : int, optional
        Instead, exactly this many clients drawn uniformly without replacement.
    """

    rate: float = 1.0
    per_round: int | None = None

    def __post_init__(self):
        check_probability(self.rate, "participation rate")
        if self.per_round is not None:
            check_int(self.per_round, "per_round", 1)
            if self.rate != 1.0:
                raise ParameterError("give either a participation rate or per_round, not both")

    @property
    def is_full(self) -> bool:
        """Whether every client takes part in every round."""
        return self.per_round is None and self.rate == 1.0

    def inclusion_probability(self, num_clients) -> float:
        """The probability that a given client is sampled in a round."""
        if self.per_round is not None:
            if self.per_round > num_clients:
                raise ParameterError(f"per_round={self.per_round} exceeds {num_clients} clients")
            return self.per_round / num_clients
        return self.rate

    def sample(self, num_clients, rng) -> np.ndarray:
        """Sorted ids of this round's clients."""
        if self.per_round is not None:
            self.inclusion_probability(num_clients)
            return np.sort(rng.choice(num_clients, size=self.per_round, replace=False))
        if self.rate == 1.0:
            return np.arange(num_clients)
        return np.flatnonzero(rng.random(num_clients) < self.rate)


FULL_PARTICIPATION = Participation()


def split_batch_sizes(total, num_workers, *, num_small=0, small_size=1) -> np.ndarray:
    """Per-worker batch sizes with a fixed total (the signSGD-FV batch modes).

    ``num_small`` workers get ``small_size`` samples; the others share the rest as
    evenly as possible (larger shares first). ``num_small=0`` gives equal batches, e.g.
    ``split_batch_sizes(960, 15, num_small=9, small_size=4)`` is ``9 x 4 + 6 x 154``.
    """
    total = check_int(total, "total", 1)
    num_workers = check_int(num_workers, "num_workers", 1)
    num_small = check_int(num_small, "num_small", 0, num_workers)
    small_size = check_int(small_size, "small_size", 1)
    rest = total - num_small * small_size
    num_large = num_workers - num_small
    if num_large == 0:
        if rest != 0:
            raise ParameterError(
                "with every worker small, total must equal num_workers * small_size"
            )
        return np.full(num_workers, small_size, dtype=np.int64)
    if rest < num_large:
        raise ParameterError(f"total={total} leaves fewer than one sample per large worker")
    large = np.full(num_large, rest // num_large, dtype=np.int64)
    large[: rest % num_large] += 1
    return np.concatenate([np.full(num_small, small_size, dtype=np.int64), large])
