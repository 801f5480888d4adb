"""Private helpers shared by the baseline compressors (one implementation of each).

- The envelope every baseline writes first (:mod:`quicdesign._envelope`, 21 bytes:
  magic, version, dim, client id, round tag, config tag); version 2 payloads (the same
  layout, written before the envelope was shared with QUIC-FL) are still read.
- Float32 side information rounded in a known direction, so the client quantizes with
  exactly the value the server will read.
- Signs drawn from a per-client shared stream (EDEN's private rotation).
- :class:`BaselineCompressor` (encode/aggregator plumbing) and :class:`SumAggregator`
  (validate fully, compute the contribution, only then commit; duplicate detection;
  merge), which every baseline builds on.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from .._accumulate import WeightedSumAggregator, check_contribution_bound
from .._envelope import (
    ENVELOPE_SIZE,
    ENVELOPE_VERSION,
    Envelope,
    check_envelope,
    config_tag,
    read_envelope,
    read_envelope_fields,
    write_envelope,
)
from .._validate import as_client_vector, check_client_id, check_dim, check_round_seed
from .._wire import PayloadReader, PayloadWriter
from ..errors import InputVectorError, PayloadError
from ..randomness import round_tag
from .base import Compressor

__all__ = [
    "WIRE_VERSION",
    "HEADER_SIZE",
    "PayloadHeader",
    "BaselineCompressor",
    "SumAggregator",
    "DirectSumAggregator",
    "PipelineAggregator",
    "PipelineCompressor",
    "config_tag",
    "euclidean_norm",
    "f32_ceil",
    "f32_floor",
    "f32_nearest",
    "read_f32",
    "read_header",
    "to_float32",
]

WIRE_VERSION = ENVELOPE_VERSION
HEADER_SIZE = ENVELOPE_SIZE
#: Baseline payloads written before the shared envelope: the same fields, version 2.
LEGACY_VERSION = 2
_LEGACY = {LEGACY_VERSION: read_envelope_fields}
_F32_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------- float32 side info


def _f32_rounded(value, direction, what):
    value = float(value)
    # checked first: casting a larger value to float32 overflows to inf with a warning
    if not abs(value) <= _F32_MAX:
        raise InputVectorError(f"{what} {value!r} is outside the float32 range of the payload")
    rounded = np.float32(value)
    if direction > 0 and float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    elif direction < 0 and float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def f32_ceil(value, what="value") -> float:
    """Smallest float32 ``>= value`` (as a Python float); ``InputVectorError`` on overflow.

    Side information travels as float32; encoders quantize against the rounded value so
    the server decodes with exactly what the client used, and rounding *outwards* keeps
    every coordinate inside the range (no clipping bias).
    """
    return _f32_rounded(value, 1, what)


def f32_nearest(value, what="value") -> float:
    """``value`` rounded to the nearest float32; ``InputVectorError`` on overflow."""
    return _f32_rounded(value, 0, what)


def f32_floor(value, what="value") -> float:
    """Largest float32 ``<= value`` (as a Python float); ``InputVectorError`` on overflow."""
    return _f32_rounded(value, -1, what)


def to_float32(values, what) -> np.ndarray:
    """Little-endian float32 copy of ``values``.

    ``InputVectorError`` if any value overflows float32, or is below float32's normal
    range and not exactly representable there (it would lose most of its bits, or
    underflow to zero and turn a nonzero value into 0).
    """
    values = np.asarray(values)
    with np.errstate(over="ignore", under="ignore"):
        converted = values.astype("<f4")
    if not np.all(np.isfinite(converted)):
        raise InputVectorError(f"{what} exceed the float32 range of the payload")
    if values.dtype != np.float32:
        tiny = np.abs(values) < np.finfo(np.float32).tiny
        if np.any(converted[tiny] != values[tiny]):
            raise InputVectorError(
                f"{what} underflow float32 (nonzero values below 2**-126 would lose their "
                "bits); scale the vector up first"
            )
    return converted


def euclidean_norm(values) -> float:
    """``||values||_2`` in float64 without overflow or underflow (scaled by ``max |x|``)."""
    magnitude = np.abs(values, dtype=np.float64)
    largest = float(magnitude.max())
    if largest == 0.0:
        return 0.0
    magnitude /= largest
    # a pairwise sum, not BLAS's dot: the same rounding on every CPU
    return largest * math.sqrt(float(np.sum(np.square(magnitude))))


def read_f32(reader: PayloadReader, field: str, *, nonnegative=False) -> float:
    """Read a float32 that must be finite (and ``>= 0`` if asked); ``PayloadError`` if not."""
    value = reader.read_f32(field)
    if not math.isfinite(value) or (nonnegative and value < 0):
        kind = "finite and non-negative" if nonnegative else "finite"
        raise PayloadError(f"{field} must be {kind}, got {value!r}")
    return value


# -------------------------------------------------------------------------- header


#: The baselines' header is the envelope (kept under its old name for callers).
PayloadHeader = Envelope


def read_header(reader: PayloadReader, magic: bytes, scheme: str) -> Envelope:
    """Read the envelope of a baseline payload (current version or version 2)."""
    return read_envelope(reader, magic, scheme, legacy=_LEGACY)


# ------------------------------------------------------------------ compressor base


class BaselineCompressor(Compressor):
    """Encode/aggregate plumbing shared by the baselines.

    Subclasses set ``name`` and ``magic`` and implement :meth:`_config`,
    :meth:`_body_size` and :meth:`_encode_body`; schemes that sum decoded vectors in the
    original coordinates implement :meth:`_decode_body`, the others override
    :meth:`_make_aggregator`. Constructors only store parameters; :meth:`_config`
    validates them when they are used.
    """

    magic: bytes = b"????"

    @abstractmethod
    def _config(self) -> tuple:
        """Validated wire-relevant parameters (raise ``ParameterError`` if invalid)."""

    @abstractmethod
    def _body_size(self, dim: int) -> int:
        """Bytes after the common header for a ``dim``-long vector."""

    @abstractmethod
    def _encode_body(self, flat, writer, *, round_seed, client_id, rng) -> None:
        """Append the scheme's body for the validated 1-D vector ``flat``."""

    def _decode_body(self, reader, header, round_seed) -> np.ndarray:
        """Parse the body and return the decoded float64 vector of length ``header.dim``."""
        raise NotImplementedError

    def _make_aggregator(self, dim: int, round_seed: int) -> SumAggregator:
        """A fresh aggregator (arguments already validated)."""
        return DirectSumAggregator(self, dim, round_seed, (dim,))

    def payload_size(self, dim) -> int | None:
        """Exact payload size in bytes for a ``dim``-long vector (header included), or
        None for variable-length (entropy-coded) payloads."""
        self._config()
        body = self._body_size(check_dim(dim))
        return None if body is None else HEADER_SIZE + body

    def encode(self, vector, *, round_seed, client_id, rng=None) -> bytes:
        """Encode one client's vector to payload bytes.

        Parameters
        ----------
        vector : array_like of float16, float32 or float64
            Any shape (flattened in C order); not modified.
        round_seed : int
            The round's seed in ``[0, 2**64)``, shared with the server.
        client_id : int
            The client's id in ``[0, 2**32)``.
        rng : numpy.random.Generator or seed, optional
            Client-private randomness (a fresh ``default_rng()`` when omitted); the same
            generator state gives the same bytes.

        Returns
        -------
        bytes
            ``payload_size(vector.size)`` bytes.
        """
        config = self._config()
        round_seed = check_round_seed(round_seed)
        client_id = check_client_id(client_id)
        flat = as_client_vector(vector)
        rng = np.random.default_rng(rng)
        writer = PayloadWriter()
        write_envelope(
            writer,
            Envelope(
                self.magic,
                flat.size,
                client_id,
                round_tag(round_seed),
                config_tag(self.name, *config),
            ),
        )
        self._encode_body(flat, writer, round_seed=round_seed, client_id=client_id, rng=rng)
        return writer.to_bytes()

    def aggregator(self, dim, round_seed) -> SumAggregator:
        """A fresh server-side aggregator for ``dim``-long vectors of one round."""
        self._config()
        return self._make_aggregator(check_dim(dim), check_round_seed(round_seed))


# ------------------------------------------------------------------ aggregator base


class SumAggregator(WeightedSumAggregator):
    """Weighted sum of per-client contributions of a baseline, finalized once.

    Parameters
    ----------
    compressor : BaselineCompressor
        The compressor whose payloads are accepted.
    dim : int
        Length of the client vectors.
    round_seed : int
        The round's seed.
    shape : tuple of int
        Shape of the running sum (the summation domain).
    """

    def __init__(self, compressor: BaselineCompressor, dim: int, round_seed: int, shape):
        super().__init__(shape)
        self.compressor = compressor
        self.dim = dim
        self.round_seed = round_seed
        self._magic = compressor.magic
        self._scheme = compressor.name
        self._wire_config = (compressor.name, *compressor._config())
        self._config_tag = config_tag(*self._wire_config)
        self._round_tag = round_tag(round_seed)
        self._payload_size = compressor.payload_size(dim)

    @abstractmethod
    def _contribution(self, reader: PayloadReader, header: PayloadHeader) -> np.ndarray:
        """Parse the body and return the client's float64 contribution (sum domain)."""

    def _merge_key(self) -> tuple:
        return (self._magic, self._wire_config, self.round_seed, self.dim)

    def _shard_identity(self) -> tuple[bytes, bytes]:
        return self._magic, self._config_tag.to_bytes(4, "little") + bytes(4)

    def _shard_source(self):
        return self.compressor

    def _decode(self, payload, weight) -> tuple[int, np.ndarray]:
        reader = PayloadReader(payload)
        size = reader.remaining
        header = read_header(reader, self._magic, self._scheme)
        check_envelope(
            header,
            dim=self.dim,
            round_tag=self._round_tag,
            config=self._config_tag,
            scheme=self._scheme,
        )
        self._check_new_client(header.client_id)
        if self._payload_size is not None and size != self._payload_size:
            kind = "truncated" if size < self._payload_size else "oversized"
            raise PayloadError(f"{kind} payload: {size} bytes, expected {self._payload_size}")
        contribution = self._contribution(reader, header)
        reader.expect_end()
        contribution = np.asarray(contribution, dtype=np.float64)
        check_contribution_bound(float(np.max(np.abs(contribution), initial=0.0)))
        return header.client_id, np.multiply(contribution, weight)


class DirectSumAggregator(SumAggregator):
    """Sums each client's decoded vector in the original coordinates."""

    def _contribution(self, reader, header):
        return self.compressor._decode_body(reader, header, self.round_seed)


# ------------------------------------------------------------------ stage pipelines


class PipelineAggregator(SumAggregator):
    """Sums clients at the pipeline's deepest commuting stage; inverts the rest once.

    Each payload is decoded only through the stages after the commuting prefix
    (:meth:`quicdesign.stages.Pipeline.decode_to_sum_domain`); :meth:`result` applies
    the prefix's inverses once to the weighted mean.
    """

    def __init__(self, compressor, dim, round_seed):
        self._pipeline = compressor.stages
        self._state = self._pipeline.server_state(dim, round_seed)
        super().__init__(compressor, dim, round_seed, self._pipeline.sum_shape(dim))

    def _contribution(self, reader, header):
        return self._pipeline.decode_to_sum_domain(reader, self._state)

    def _finalize(self, mean):
        return self._pipeline.finalize(mean, self._state)


class PipelineCompressor(BaselineCompressor):
    """A baseline declared as a :class:`quicdesign.stages.Pipeline` (property ``stages``).

    The body is the stages' side information in order; the aggregator is a
    :class:`PipelineAggregator`.
    """

    @property
    @abstractmethod
    def stages(self):
        """The compressor's :class:`~quicdesign.stages.Pipeline` (parameters validated)."""

    def _body_size(self, dim):
        return self.stages.body_size(dim)

    def _encode_body(self, flat, writer, *, round_seed, client_id, rng):
        state = self.stages.client_state(flat.size, round_seed, client_id, rng)
        self.stages.encode(flat, writer, state)

    def _make_aggregator(self, dim, round_seed):
        return PipelineAggregator(self, dim, round_seed)
