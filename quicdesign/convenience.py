"""One-call helpers: compress a single vector, and carry a model's layers as one vector."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._wire import PayloadReader
from .codec import HEADER_SIZE, QuicFLAggregator, QuicFLEncoder, payload_size, read_header
from .errors import InputVectorError, PayloadError, TableNotFoundError
from .table import Table, list_tables, load_table

__all__ = ["compress", "decompress", "ArrayLayout"]


def compress(
    vector,
    bits: int = 2,
    *,
    table: Table | None = None,
    round_seed: int = 0,
    client_id: int = 0,
    rng=None,
) -> bytes:
    """Encode one vector with QUIC-FL.

    Parameters
    ----------
    vector : array_like of float
        Any shape; flattened in C order.
    bits : int
        Selects the shipped default table when ``table`` is None.
    table : quicdesign.Table, optional
    round_seed, client_id : int
        Shared-randomness coordinates; the decoder needs the same round seed.
    rng : numpy.random.Generator, optional
        Private randomness.

    Returns
    -------
    bytes
    """
    table = load_table(bits) if table is None else table
    return QuicFLEncoder(table, round_seed).encode(vector, client_id, rng=rng)


def decompress(payload, *, table: Table | None = None, round_seed: int = 0) -> np.ndarray:
    """Decode one payload made by :func:`compress`.

    When ``table`` is None the shipped table with the payload's fingerprint is used.

    Returns
    -------
    ndarray of float64, shape (dim,)
    """
    reader = PayloadReader(payload)
    header = read_header(reader)
    # The dimension comes from the payload: check the payload could hold it before the
    # aggregator allocates O(dim) memory (a 68-byte payload may claim d = 2**31 - 1).
    expected = payload_size(header.bits, header.dim, header.num_exact)
    expected += header.header_size - HEADER_SIZE  # a pre-envelope header is 32 bytes
    if reader.size != expected:
        raise PayloadError(
            f"payload of {reader.size} bytes cannot hold the dimension {header.dim} it "
            f"claims ({expected} bytes expected)"
        )
    if table is None:
        table = _shipped_table_with_fingerprint(header.fingerprint)
    aggregator = QuicFLAggregator(table, round_seed, header.dim)
    aggregator.add(payload)
    return aggregator.result()


def _shipped_table_with_fingerprint(fingerprint: bytes) -> Table:
    for entry in list_tables():
        table = load_table(entry["bits"], entry["shared_bits"], entry["tail_prob"])
        if table.fingerprint == fingerprint:
            return table
    raise TableNotFoundError(
        f"no shipped table has fingerprint {fingerprint.hex()}; pass the table explicitly"
    )


@dataclass(frozen=True)
class ArrayLayout:
    """Shapes of a list of arrays (a model's layers) carried as one flat vector.

    Both sides build the same layout (from the model architecture, or
    :meth:`from_arrays` on a template), so only the flat vector travels.
    """

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_arrays(cls, arrays) -> ArrayLayout:
        """Layout of the given arrays."""
        return cls(tuple(tuple(int(n) for n in np.shape(a)) for a in arrays))

    @property
    def sizes(self) -> list[int]:
        """Number of entries of each array."""
        return [math.prod(shape) for shape in self.shapes]

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def flatten(self, arrays) -> np.ndarray:
        """Concatenate arrays (checked against the layout) into one float vector."""
        arrays = list(arrays)
        if len(arrays) != len(self.shapes):
            raise InputVectorError(f"expected {len(self.shapes)} arrays, got {len(arrays)}")
        for index, (array, shape) in enumerate(zip(arrays, self.shapes, strict=True)):
            if tuple(np.shape(array)) != shape:
                raise InputVectorError(
                    f"array {index} has shape {np.shape(array)}, layout says {shape}"
                )
        return np.concatenate([np.asarray(a).reshape(-1) for a in arrays])

    def unflatten(self, vector) -> list[np.ndarray]:
        """Split a flat vector back into arrays of the layout's shapes."""
        vector = np.asarray(vector)
        if vector.shape != (self.dim,):
            raise PayloadError(f"vector of shape {vector.shape} does not match dim {self.dim}")
        offsets = np.cumsum([0, *self.sizes])
        return [
            vector[start:end].reshape(shape)
            for start, end, shape in zip(offsets[:-1], offsets[1:], self.shapes, strict=True)
        ]
