"""Private helpers shared by the baseline compressors (one implementation of each).

- The envelope every baseline writes first (:mod:`quicdesign._envelope`, 21 bytes:
  magic, version, dim, client id, round tag, config tag); version 2 payloads (the same
  layout, written before the envelope was shared with QUIC-FL) are still read.
- Float32 side information rounded in a known direction, so the client quantizes with
  exactly the value the server will read.
- :class:`PipelineCompressor` (a baseline as a pipeline of stages behind the envelope)
  and :class:`BaselineAggregator` (the one pipeline aggregator reading that envelope),
  which every baseline builds on; :class:`Float32Values`, a stage sending float32
  values.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

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
from ..stages import PipelineAggregator, Stage
from .base import Compressor

__all__ = [
    "WIRE_VERSION",
    "HEADER_SIZE",
    "PayloadHeader",
    "BaselineAggregator",
    "Float32Values",
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


class PipelineCompressor(Compressor):
    """A baseline declared as a :class:`quicdesign.stages.Pipeline` (property ``stages``).

    The payload is the common header, then the stages' side information in order; the
    server is a :class:`BaselineAggregator` (the one pipeline aggregator behind the
    common header). Subclasses set ``name`` and ``magic`` and implement :meth:`_config`
    and :attr:`stages`. Constructors only store parameters; :meth:`_config` validates
    them when they are used.
    """

    magic: bytes = b"????"

    @abstractmethod
    def _config(self) -> tuple:
        """Validated wire-relevant parameters (raise ``ParameterError`` if invalid)."""

    @property
    @abstractmethod
    def stages(self):
        """The compressor's :class:`~quicdesign.stages.Pipeline` (parameters validated)."""

    def payload_size(self, dim) -> int | None:
        """Exact payload size in bytes for a ``dim``-long vector (header included), or
        None for variable-length (entropy-coded) payloads."""
        body = self._pipeline().body_size(check_dim(dim))
        return None if body is None else HEADER_SIZE + body

    def _pipeline(self):
        """:attr:`stages`, rebuilt only when a public parameter changed (encode runs per
        client; building the stages each time costs as much as a small vector's encode)."""
        params = tuple(value for key, value in vars(self).items() if not key.startswith("_"))
        cached = self.__dict__.get("_stages_cache")
        if cached is None or cached[0] != params:
            cached = self._stages_cache = (params, self.stages)
        return cached[1]

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
        stages = self._pipeline()
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
        stages.encode(flat, writer, stages.client_state(flat.size, round_seed, client_id, rng))
        return writer.to_bytes()

    def aggregator(self, dim, round_seed) -> BaselineAggregator:
        """A fresh server-side aggregator for ``dim``-long vectors of one round."""
        self._config()
        return self._make_aggregator(check_dim(dim), check_round_seed(round_seed))

    def _make_aggregator(self, dim: int, round_seed: int) -> BaselineAggregator:
        """A fresh aggregator (arguments already validated)."""
        return BaselineAggregator(self, dim, round_seed)


# ------------------------------------------------------------------ aggregator


class BaselineAggregator(PipelineAggregator):
    """The pipeline aggregator behind the common header.

    Parameters
    ----------
    compressor : PipelineCompressor
        The compressor whose payloads are accepted.
    dim : int
        Length of the client vectors.
    round_seed : int
        The round's seed.
    """

    def __init__(self, compressor: PipelineCompressor, dim: int, round_seed: int):
        self.compressor = compressor
        self._magic = compressor.magic
        self._scheme = compressor.name
        self._wire_config = (compressor.name, *compressor._config())
        self._config_tag = config_tag(*self._wire_config)
        self._round_tag = round_tag(round_seed)
        self._payload_size = compressor.payload_size(dim)
        super().__init__(compressor._pipeline(), dim, round_seed)

    def _read_envelope(self, reader) -> PayloadHeader:
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
        return header

    def _merge_key(self) -> tuple:
        return (self._magic, self._wire_config, self.round_seed, self.dim)

    def _shard_identity(self) -> tuple[bytes, bytes]:
        return self._magic, self._config_tag.to_bytes(4, "little") + bytes(4)

    def _shard_source(self):
        return self.compressor


# ------------------------------------------------------------------ shared stages


class Float32Values(Stage):
    """Send the input as float32 values (checked finite); the last stage of sketches and
    rand-k. Per client: its inverse is the values themselves.

    Parameters
    ----------
    what : str
        What the values are, for error messages.
    """

    def __init__(self, what):
        self.what = what

    def apply(self, x, state):
        return None, to_float32(x, self.what)

    def write_side(self, writer, side):
        writer.write_array(side)

    def read_side(self, reader, state, dim):
        values = reader.read_array("<f4", dim, self.what)
        if not np.all(np.isfinite(values)):
            raise PayloadError(f"{self.what} must be finite")
        return values

    def invert(self, y, side, state, dim):
        return side.astype(np.float64)

    def side_size(self, dim, vector_dim):
        return 4 * dim

    def output_dim(self, dim):
        return 0
