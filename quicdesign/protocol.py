"""The one compressor protocol every scheme implements (QUIC-FL and all baselines).

A :class:`Compressor` is a plain description: its constructor only stores parameters.
Clients call :meth:`Compressor.encode` to turn a vector into real payload bytes; the
server makes one :class:`Aggregator` per round and dimension, feeds it payloads with
:meth:`Aggregator.add` and reads the weighted mean with :meth:`Aggregator.result`.
Aggregators of the same round combine exactly with :meth:`Aggregator.merge` (in place) or
``merged`` (a new aggregator), so shards can be aggregated in different processes; they
cross process boundaries as shard bytes (``to_bytes`` / ``from_bytes``,
:mod:`quicdesign.shard`, ``docs/shard-format.md``), never as pickles of untrusted data.

Shared randomness is derived from ``(round_seed, client_id, purpose)`` by
:mod:`quicdesign.randomness`; client-private randomness comes from the ``rng`` the caller
passes (a fresh ``numpy.random.default_rng()`` when omitted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

__all__ = ["CompressorProperties", "Compressor", "Aggregator"]


@dataclass(frozen=True)
class CompressorProperties:
    """Declared algebraic and randomness properties of a compressor.

    Attributes
    ----------
    unbiased : bool
        ``E[decode(encode(x))] = x`` over the randomness (checked statistically by
        :func:`quicdesign.testing.check_compressor`).
    sums_before_decoding : bool
        The server sums client contributions in a transformed domain and inverts once
        (server work O(n d + d log d)), instead of decoding every client on its own.
    shared_randomness : tuple of str
        Which shared randomness the scheme uses: ``"round"`` (same for every client of a
        round, e.g. a rotation or sketch hashes), ``"client"`` (per client, known to the
        server, e.g. QUIC-FL's h), or empty.
    fixed_rate : bool
        Payload size depends only on the dimension (not on the data), up to exactly-sent
        coordinates.
    """

    unbiased: bool
    sums_before_decoding: bool
    shared_randomness: tuple[str, ...] = ()
    fixed_rate: bool = True


class Aggregator(ABC):
    """Server-side state for one round: validated payloads in, weighted mean out.

    Implementations must validate a payload completely before changing any state, so a
    rejected payload (``PayloadError``) leaves the aggregator exactly as it was.
    """

    @property
    @abstractmethod
    def count(self) -> int:
        """Number of payloads added (merged shards included)."""

    @abstractmethod
    def add(self, payload: bytes, weight: float = 1.0) -> None:
        """Validate and accumulate one client's payload with a positive weight."""

    @abstractmethod
    def merge(self, other: Aggregator) -> None:
        """Absorb another aggregator of the same compressor, round and dimension."""

    @abstractmethod
    def result(self) -> np.ndarray:
        """The weighted mean of the decoded vectors, in the original coordinates."""


class Compressor(ABC):
    """A vector compressor with real byte payloads and a server-side aggregator."""

    #: Short identifier used in benchmarks and CLI options.
    name: str = "compressor"
    properties: CompressorProperties

    @abstractmethod
    def encode(self, vector, *, round_seed: int, client_id: int, rng=None) -> bytes:
        """Encode one client's vector to payload bytes."""

    @abstractmethod
    def aggregator(self, dim: int, round_seed: int) -> Aggregator:
        """A fresh server-side aggregator for ``dim``-dimensional vectors of a round."""

    def decode(self, payload: bytes, *, dim: int, round_seed: int) -> np.ndarray:
        """Decode a single payload (an aggregator holding one client)."""
        aggregator = self.aggregator(dim, round_seed)
        aggregator.add(payload)
        return aggregator.result()

    def bits_per_coordinate(self, payload: bytes, dim: int) -> float:
        """Measured wire cost: ``8 * len(payload) / dim``."""
        return 8.0 * len(payload) / dim

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
