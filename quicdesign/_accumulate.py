"""The one weighted-sum aggregator every server-side aggregator builds on."""

from __future__ import annotations

import threading
from abc import abstractmethod

import numpy as np

from ._validate import check_weight
from .errors import ParameterError, PayloadError
from .protocol import Aggregator

__all__ = ["WeightedSumAggregator", "MAX_CONTRIBUTION", "check_contribution_bound"]

#: Largest magnitude a decoded (unweighted) contribution may have. With weights at most
#: ``2**256`` and at most ``2**32`` clients (u32 ids) a running sum stays below ``2**480``.
MAX_CONTRIBUTION = 2.0**192


def check_contribution_bound(largest: float) -> None:
    """Refuse a payload whose decoded magnitude could make running sums overflow.

    ``largest`` is ``max |contribution|`` before weighting (NaN is refused too).
    """
    if not largest <= MAX_CONTRIBUTION:
        raise PayloadError(f"payload decodes to magnitude {largest!r}, beyond 2**192")


class WeightedSumAggregator(Aggregator):
    """Weighted sum of per-client contributions in some domain, finalized once.

    ``add`` validates the whole payload and computes its contribution (:meth:`_decode`)
    before touching any state, so a rejected payload leaves the aggregator exactly as it
    was. ``result`` divides the running sum by the total weight and maps it to the
    original coordinates with :meth:`_finalize` (e.g. one inverse rotation). Threads may
    share one: payloads are validated in parallel, each commit (with its new-client check)
    is atomic.

    Parameters
    ----------
    shape : tuple of int
        Shape of the running sum (the summation domain).
    """

    def __init__(self, shape):
        self._sum = np.zeros(shape, dtype=np.float64)
        self._total_weight = 0.0
        self._clients: set[int] = set()
        # threads sharing an aggregator: the new-client check and the commit are one step
        # (the compiled sum releases the GIL), so a client cannot be added twice
        self._commit_lock = threading.Lock()

    def _accumulate(self, contribution) -> None:
        """Add a validated contribution (from :meth:`_decode`) to the sum; cannot fail."""
        self._sum += contribution

    @abstractmethod
    def _decode(self, payload, weight: float) -> tuple[int, np.ndarray]:
        """Validate ``payload`` fully; return ``(client_id, weight * contribution)``.

        The contribution is float64 in the summation domain and must be finite.
        """

    @abstractmethod
    def _merge_key(self) -> tuple:
        """What two aggregators must share to be merged: the full round seed, the scheme
        and its wire parameters (table digest), the dimension. Never a short tag: 32-bit
        round tags collide after ~10**5 rounds."""

    def _finalize(self, mean: np.ndarray) -> np.ndarray:
        """Map the weighted mean in the summation domain to the original coordinates."""
        return mean

    def _check_new_client(self, client_id: int) -> None:
        if client_id in self._clients:
            raise PayloadError(f"client {client_id} was already added this round")

    @property
    def count(self) -> int:
        """Number of payloads aggregated (merged shards included)."""
        return len(self._clients)

    @property
    def clients(self) -> frozenset[int]:
        """Ids of the aggregated clients."""
        return frozenset(self._clients)

    @property
    def total_weight(self) -> float:
        """Sum of the weights of the aggregated payloads."""
        return self._total_weight

    def add(self, payload, weight: float = 1.0) -> None:
        """Validate and add one client's payload.

        Parameters
        ----------
        payload : bytes
            A payload of this scheme, round and dimension.
        weight : float
            Weight of this client in the mean: a real number (not a bool or string) in
            ``[2**-256, 2**256]``, a range in which the running sums are exact to float64
            rounding and cannot overflow.

        Raises
        ------
        PayloadError
            If the payload is malformed or does not belong; nothing is changed.
        ParameterError
            If the weight is not accepted; nothing is changed.
        """
        weight = check_weight(weight)
        client_id, contribution = self._decode(payload, weight)
        with self._commit_lock:
            self._check_new_client(client_id)
            # Commit: nothing below can fail.
            self._accumulate(contribution)
            self._total_weight += weight
            self._clients.add(client_id)

    def add_many(self, payloads, weights=None) -> None:
        """Add payloads in order: the same result, bit for bit, as a loop of :meth:`add`.

        Parameters
        ----------
        payloads : sequence of bytes-like
        weights : sequence of float, optional
            One weight per payload (all 1 when omitted).

        Raises
        ------
        PayloadError, ParameterError
            For the first refused payload or weight, naming its position; the payloads
            before it stay added, it and those after it are not.
        """
        payloads, weights = self._batch_arguments(payloads, weights)
        for position, (payload, weight) in enumerate(zip(payloads, weights, strict=True)):
            try:
                self.add(payload, weight)
            except (PayloadError, ParameterError) as exc:
                self._raise_at(position, exc)

    @staticmethod
    def _batch_arguments(payloads, weights):
        payloads = list(payloads)
        weights = [1.0] * len(payloads) if weights is None else list(weights)
        if len(weights) != len(payloads):
            raise ParameterError(f"{len(payloads)} payloads but {len(weights)} weights")
        return payloads, weights

    @staticmethod
    def _raise_at(position, exc):
        raise type(exc)(f"payload {position} (earlier ones were added): {exc}") from None

    def merge(self, other: Aggregator) -> None:
        """Absorb a shard aggregated elsewhere (same scheme, round and dimension)."""
        if type(other) is not type(self):
            raise ParameterError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}"
            )
        if other._merge_key() != self._merge_key():
            raise ParameterError(
                "can only merge aggregators of the same scheme, parameters, round seed and dim"
            )
        with self._commit_lock:
            overlap = self._clients & other._clients
            if overlap:
                raise ParameterError(
                    f"shards share clients {sorted(overlap)[:5]}: they would count twice"
                )
            self._sum += other._sum
            self._total_weight += other._total_weight
            self._clients |= other._clients

    # -- partial aggregates as data (quicdesign.shard; docs/shard-format.md) -----------
    def _shard_identity(self) -> tuple[bytes, bytes]:
        """``(scheme, fingerprint)``: 4-byte scheme magic, 8-byte table/config fingerprint."""
        raise NotImplementedError

    def _shard_source(self):
        """The table or compressor that rebuilds an empty twin of this aggregator."""
        raise NotImplementedError

    def _shard_state(self):
        from .shard import ShardState

        scheme, fingerprint = self._shard_identity()
        return ShardState(
            scheme=scheme,
            fingerprint=fingerprint,
            round_seed=self.round_seed,
            dim=self.dim,
            clients=np.array(sorted(self._clients), dtype=np.uint32),
            total_weight=self._total_weight,
            total=self._sum,
        )

    def _from_shard_state(self, state) -> None:
        """Load a validated shard into this empty aggregator (``PayloadError`` if foreign)."""
        scheme, fingerprint = self._shard_identity()
        if state.scheme != scheme:
            raise PayloadError(f"shard of scheme {state.scheme!r}, expected {scheme!r}")
        if state.fingerprint != fingerprint:
            raise PayloadError(
                f"shard fingerprint {state.fingerprint.hex()} does not match "
                f"{fingerprint.hex()} (another table or configuration)"
            )
        if (state.round_seed, state.dim) != (self.round_seed, self.dim):
            raise PayloadError("shard belongs to another round or dimension")
        if state.total.size != self._sum.size:
            raise PayloadError(
                f"shard sum has {state.total.size} values, expected {self._sum.size}"
            )
        if self._clients:
            raise ParameterError("shards load into an empty aggregator; use merge to combine")
        self._sum = np.array(state.total, dtype=np.float64).reshape(self._sum.shape)
        self._total_weight = state.total_weight
        self._clients = {int(c) for c in state.clients}

    def to_bytes(self, *, key: bytes | None = None) -> bytes:
        """This partial aggregate as shard bytes (``docs/shard-format.md``)."""
        from .shard import to_bytes

        return to_bytes(self, key=key)

    @classmethod
    def from_bytes(cls, source, data, *, key: bytes | None = None):
        """Rebuild an aggregator of this class from shard bytes.

        See :func:`quicdesign.shard.from_bytes`; ``PayloadError`` if the bytes are bad or
        hold another kind of aggregator.
        """
        from .shard import from_bytes

        aggregator = from_bytes(source, data, key=key)
        if not isinstance(aggregator, cls):
            raise PayloadError(f"shard holds a {type(aggregator).__name__}, not a {cls.__name__}")
        return aggregator

    def merged(self, other):
        """A new aggregator holding both shards' clients; ``self`` and ``other`` unchanged."""
        from .shard import merged

        return merged(self, other)

    def __reduce__(self):
        # Pickles carry only what cannot be regenerated: the source and the shard bytes.
        from .shard import _restore

        return _restore, (self._shard_source(), self.to_bytes())

    def weighted_mean(self) -> np.ndarray:
        """The weighted mean still in the summation domain."""
        if not self._clients:
            raise ParameterError("no payload has been added yet")
        return self._sum / self._total_weight

    def result(self) -> np.ndarray:
        """Weighted mean of the clients' vectors in the original coordinates (float64)."""
        return np.ascontiguousarray(self._finalize(self.weighted_mean()), dtype=np.float64)
