"""What crosses the wire in a simulation: real payloads, decoded values and bit counters.

Every message of every algorithm is turned into bytes by a compressor (or by a small
codec of this package) and the counters add ``8 * len(payload)``; no bit count is ever
computed from a formula. :class:`RawFloats` is the uncompressed baseline: the
simulator's trusted exact channel, used like a compressor but not one (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quicdesign._accumulate import MAX_CONTRIBUTION, check_contribution_bound
from quicdesign._envelope import (
    ENVELOPE_SIZE,
    Envelope,
    check_envelope,
    config_tag,
    framing_size,
    read_envelope,
    write_envelope,
)
from quicdesign._validate import (
    as_client_vector,
    check_client_id,
    check_int,
    check_round_seed,
    check_weight,
)
from quicdesign._wire import PayloadReader, PayloadWriter
from quicdesign.compressors._common import to_float32
from quicdesign.errors import InputVectorError, ParameterError, PayloadError
from quicdesign.randomness import round_tag

__all__ = [
    "RawFloats",
    "LocalTopK",
    "BitCounter",
    "send_each",
    "broadcast",
    "compressor_omega",
    "describe_compressor",
]


#: Magic of :class:`RawFloats` payloads (the dtype is in the envelope's config tag).
RAW_MAGIC = b"QDRF"


class _RawFloatsAggregator:
    def __init__(self, dtype, dim, round_seed):
        self._dtype = dtype
        self._dim = check_int(dim, "dim", 1)
        self._round_tag = round_tag(round_seed)
        self._config = _raw_config(dtype)
        self._sum = np.zeros(self._dim)
        self._weight = 0.0
        self._count = 0
        self._clients = set()

    @property
    def count(self):
        return self._count

    def _values(self, payload):
        client_id, values = _read_raw(
            payload, self._dtype, self._dim, self._round_tag, self._config
        )
        if client_id in self._clients:
            raise PayloadError(f"client {client_id} was already added this round")
        values = values.astype(np.float64)
        check_contribution_bound(float(np.max(np.abs(values), initial=0.0)))
        return client_id, values

    def add(self, payload, weight=1.0):
        weight = check_weight(weight)
        client_id, values = self._values(payload)
        self._sum += weight * values
        self._weight += weight
        self._count += 1
        self._clients.add(client_id)

    def merge(self, other):
        if (
            not isinstance(other, _RawFloatsAggregator)
            or other._dim != self._dim
            or (other._round_tag, other._config) != (self._round_tag, self._config)
        ):
            raise ParameterError(
                "can only merge raw-float aggregators of the same dimension, dtype and round"
            )
        if self._clients & other._clients:
            raise ParameterError("the aggregators share clients")
        self._sum += other._sum
        self._weight += other._weight
        self._count += other._count
        self._clients |= other._clients

    def result(self):
        if self._count == 0:
            raise ParameterError("no payload was added")
        return self._sum / self._weight


def _raw_config(dtype) -> int:
    return config_tag("raw", np.dtype(dtype).name)


def _read_raw(payload, dtype, dim, tag, config):
    """Validate one raw payload; return ``(client_id, values)`` (values in ``dtype``)."""
    reader = PayloadReader(payload)
    envelope = read_envelope(reader, RAW_MAGIC, "raw float")
    check_envelope(envelope, dim=dim, round_tag=tag, config=config, scheme="raw float")
    expected = ENVELOPE_SIZE + dim * dtype.itemsize
    if reader.size != expected:
        kind = "truncated" if reader.size < expected else "oversized"
        raise PayloadError(
            f"{kind} payload: {reader.size} bytes, expected {expected} ({dim} {dtype.name} "
            "values and the envelope)"
        )
    values = reader.read_array(dtype, dim, "values")
    # checked before widening: casting a signalling NaN raises a floating-point warning
    if not np.all(np.isfinite(values)):
        raise PayloadError("raw float payload holds non-finite values")
    return envelope.client_id, values


class RawFloats:
    """Uncompressed vectors as little-endian IEEE floats (the "no compression" baseline).

    Not a :class:`~quicdesign.compressors.base.Compressor` (it is the simulator's exact
    channel and makes no compression claim), but its payloads are framed like every
    other: the envelope (``docs/wire-format.md``, magic ``QDRF``, the dtype in the config
    tag), then ``dim`` values. So its bits compare with the compressors' bits, and its
    aggregator refuses foreign, other-round and duplicate payloads. It duck-types
    ``encode``/``aggregator``/``decode`` for :func:`send_each` and :func:`broadcast` and
    declares itself exact (unbiased).

    Parameters
    ----------
    dtype : {"float32", "float64"}
        Wire precision. ``float32`` (the default) is the usual 32 bits per coordinate
        that uncompressed baselines are counted at; ``float64`` is exact for a float64
        simulation, which linear-convergence runs need.
    """

    name = "raw"
    #: The decoded value is the input rounded to ``dtype``: no compression error.
    exact = True

    def __init__(self, dtype="float32"):
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ParameterError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype).name

    def omega(self, dim):
        """Relative variance bound: 0 (the wire only rounds to ``dtype``)."""
        return 0.0

    def _wire_values(self, flat):
        wire = flat.astype("<f8") if self.dtype == "float64" else to_float32(flat, "values")
        # the aggregator's bound on decoded magnitudes (running sums cannot overflow)
        if not float(np.max(np.abs(wire), initial=0.0)) <= MAX_CONTRIBUTION:
            raise InputVectorError(
                f"vector exceeds the {self.dtype} payload range (|x| <= 2**192 is accepted)"
            )
        return wire

    def _frame(self, wire, round_seed, client_id):
        writer = PayloadWriter()
        config = _raw_config(self.dtype)
        write_envelope(writer, Envelope(RAW_MAGIC, wire.size, client_id, round_seed, config))
        writer.write_array(wire)
        return writer.to_bytes()

    def encode(self, vector, *, round_seed, client_id, rng=None):
        """One payload: the envelope, then the values in ``dtype``."""
        flat = as_client_vector(vector)
        wire = self._wire_values(flat)
        tag = round_tag(check_round_seed(round_seed))
        return self._frame(wire, tag, check_client_id(client_id))

    def aggregator(self, dim, round_seed):
        return _RawFloatsAggregator(
            np.dtype(self.dtype).newbyteorder("<"), dim, check_round_seed(round_seed)
        )

    def decode(self, payload, *, dim, round_seed):
        """The vector of one payload, as float64."""
        aggregator = self.aggregator(dim, round_seed)
        aggregator.add(payload)
        return aggregator.result()

    def bits_per_coordinate(self, payload, dim):
        """Measured wire cost: ``8 * len(payload) / dim``."""
        return 8.0 * len(payload) / dim

    def __repr__(self):
        return f"RawFloats(dtype={self.dtype!r})"

    def encode_batch(self, vectors, *, round_seed, client_ids, rng=None):
        """Encode the rows of a ``(k, dim)`` array (one payload per row)."""
        tag = round_tag(check_round_seed(round_seed))
        # a plain cast, as the simulator always did (tiny values round like the model's)
        rows = np.asarray(vectors, dtype=np.dtype(self.dtype).newbyteorder("<"))
        return [
            self._frame(row, tag, check_client_id(client))
            for row, client in zip(rows, client_ids, strict=True)
        ]

    def decode_batch(self, payloads, *, dim, round_seed):
        """Decode payloads into a ``(k, dim)`` float64 array (each one validated)."""
        dtype = np.dtype(self.dtype).newbyteorder("<")
        tag, config = round_tag(check_round_seed(round_seed)), _raw_config(self.dtype)
        decoded = np.empty((len(payloads), dim))
        for row, payload in enumerate(payloads):
            decoded[row] = _read_raw(payload, dtype, dim, tag, config)[1]
        return decoded


class LocalTopK:
    """Top-k sparsification with per-client error feedback (the "local top-k" baseline).

    Each client adds its residual (what earlier rounds did not send) to its vector,
    sends the ``k`` largest-magnitude entries and keeps the rest as its new residual
    (Stich et al., 2018; the local top-k baseline of FetchSGD). Biased and stateful: the
    residuals live in this object, keyed by ``client_id``, so one instance serves one
    run. Payload: ``k`` little-endian indices (uint16 when ``dim <= 65536``, else
    uint32) followed by ``k`` float32 values, no header, like :class:`RawFloats`.

    Parameters
    ----------
    k : int
        Entries sent per message.
    """

    name = "local-topk"
    exact = False

    def __init__(self, k):
        self.k = check_int(k, "k", 1)
        self._residuals = {}

    @staticmethod
    def _index_dtype(dim):
        return np.dtype("<u2") if dim <= 1 << 16 else np.dtype("<u4")

    def encode(self, vector, *, round_seed, client_id, rng=None):
        flat = as_client_vector(vector).astype(np.float64)
        dim = flat.size
        residual = self._residuals.get(client_id)
        if residual is None or residual.size != dim:
            residual = np.zeros(dim)
        target = flat + residual
        kept = min(self.k, dim)
        # stable order of the kept indices so payloads are deterministic
        indices = np.sort(np.argpartition(-np.abs(target), kept - 1)[:kept])
        values = to_float32(target[indices], "values")
        sent = np.zeros(dim)
        sent[indices] = values
        self._residuals[client_id] = target - sent
        return indices.astype(self._index_dtype(dim)).tobytes() + values.tobytes()

    def encode_batch(self, vectors, *, round_seed, client_ids, rng=None):
        """Encode the rows of a ``(k, dim)`` array, row ``j`` from ``client_ids[j]``."""
        return [
            self.encode(row, round_seed=round_seed, client_id=int(client))
            for row, client in zip(np.asarray(vectors), client_ids, strict=True)
        ]

    def decode(self, payload, *, dim, round_seed):
        """The dense vector of one payload (zeros off the sent indices), as float64."""
        dim = check_int(dim, "dim", 1)
        index_dtype = self._index_dtype(dim)
        kept = min(self.k, dim)
        reader = PayloadReader(payload)
        if reader.size != kept * (index_dtype.itemsize + 4):
            raise PayloadError(
                f"a local top-k payload holds {kept} indices and {kept} float32 values "
                f"({kept * (index_dtype.itemsize + 4)} bytes), got {reader.size} bytes"
            )
        indices = reader.read_array(index_dtype, kept, "indices").astype(np.int64)
        values = reader.read_array("<f4", kept, "values")
        if indices.size and (int(indices.max()) >= dim or np.any(np.diff(indices) <= 0)):
            raise PayloadError("top-k indices must be strictly increasing and below dim")
        if not np.all(np.isfinite(values)):
            raise PayloadError("top-k payload holds non-finite values")
        out = np.zeros(dim)
        out[indices] = values
        return out

    def decode_batch(self, payloads, *, dim, round_seed):
        """Decode payloads into a ``(k, dim)`` float64 array."""
        return np.array([self.decode(p, dim=dim, round_seed=round_seed) for p in payloads])

    def __repr__(self):
        return f"LocalTopK(k={self.k})"


@dataclass
class BitCounter:
    """Bits that crossed the wire, per client and direction, counted from payload lengths.

    Every payload is counted whole (``8 * len(payload)``, its envelope included); the
    framing (the 21-byte envelope, ``docs/wire-format.md``) is also counted apart, so
    header-free bits can be reported beside framed ones.

    Attributes
    ----------
    upload, download : numpy.ndarray
        ``int64`` bits each client sent and received.
    upload_framing, download_framing : numpy.ndarray
        ``int64`` bits of those that were envelopes.
    broadcast : int
        Bits the server transmitted when a downlink payload went to several clients at
        once (each distinct payload counted once); point-to-point downlinks count here too.
    """

    num_clients: int
    upload: np.ndarray = field(init=False)
    download: np.ndarray = field(init=False)
    upload_framing: np.ndarray = field(init=False)
    download_framing: np.ndarray = field(init=False)
    broadcast: int = 0

    def __post_init__(self):
        check_int(self.num_clients, "num_clients", 1)
        self.upload = np.zeros(self.num_clients, dtype=np.int64)
        self.download = np.zeros(self.num_clients, dtype=np.int64)
        self.upload_framing = np.zeros(self.num_clients, dtype=np.int64)
        self.download_framing = np.zeros(self.num_clients, dtype=np.int64)

    def add_upload(self, clients, payloads):
        """Count one payload per client in ``clients`` (aligned sequences)."""
        clients = np.asarray(clients)
        np.add.at(self.upload, clients, [8 * len(p) for p in payloads])
        np.add.at(self.upload_framing, clients, [8 * framing_size(p) for p in payloads])

    def add_download(self, clients, payload):
        """Count one payload received by every client in ``clients`` (a broadcast)."""
        clients = np.asarray(clients)
        if clients.size:
            np.add.at(self.download, clients, 8 * len(payload))
            np.add.at(self.download_framing, clients, 8 * framing_size(payload))
            self.broadcast += 8 * len(payload)

    def add_downloads(self, clients, payloads):
        """Count one distinct payload per client (point-to-point messages)."""
        clients = np.asarray(clients)
        bits = [8 * len(p) for p in payloads]
        np.add.at(self.download, clients, bits)
        np.add.at(self.download_framing, clients, [8 * framing_size(p) for p in payloads])
        self.broadcast += sum(bits)

    @property
    def total_upload(self) -> int:
        """All uplink bits."""
        return int(self.upload.sum())

    @property
    def total_download(self) -> int:
        """All downlink bits received by clients (a broadcast counts once per receiver)."""
        return int(self.download.sum())

    @property
    def total_upload_unframed(self) -> int:
        """Uplink bits without the envelopes (header-free payload bits)."""
        return int(self.upload.sum() - self.upload_framing.sum())

    @property
    def total_download_unframed(self) -> int:
        """Downlink bits received without the envelopes."""
        return int(self.download.sum() - self.download_framing.sum())


def _encode_rows(compressor, vectors, clients, round_seed, rng):
    batch = getattr(compressor, "encode_batch", None)
    if batch is not None:
        return batch(vectors, round_seed=round_seed, client_ids=clients, rng=rng)
    return [
        compressor.encode(row, round_seed=round_seed, client_id=int(client), rng=rng)
        for row, client in zip(vectors, clients, strict=True)
    ]


def _decode_rows(compressor, payloads, dim, round_seed):
    batch = getattr(compressor, "decode_batch", None)
    if batch is not None:
        return batch(payloads, dim=dim, round_seed=round_seed)
    decoded = np.empty((len(payloads), dim))
    for row, payload in enumerate(payloads):
        decoded[row] = compressor.decode(payload, dim=dim, round_seed=round_seed)
    return decoded


def send_each(compressor, vectors, clients, *, round_seed, rng, counter=None, direction="up"):
    """Encode one vector per client, decode every payload, and count the bits.

    Parameters
    ----------
    compressor : Compressor
        Any protocol compressor (``encode_batch``/``decode_batch`` are used when present).
    vectors : numpy.ndarray
        ``(k, dim)`` rows, row ``j`` belonging to ``clients[j]``.
    clients : numpy.ndarray
        Client ids (passed as ``client_id`` so per-client shared randomness is exact).
    round_seed : int
        The round seed of this direction.
    rng : numpy.random.Generator
        Private randomness of the senders.
    counter : BitCounter, optional
        Receives ``8 * len(payload)`` per client, as upload or download.
    direction : {"up", "down"}
        Which counter column to add to.

    Returns
    -------
    numpy.ndarray
        The decoded ``(k, dim)`` vectors, exactly what the receivers reconstruct.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    clients = np.asarray(clients, dtype=np.int64)
    if vectors.shape[0] == 0:
        return np.zeros_like(vectors)
    payloads = _encode_rows(compressor, vectors, clients, round_seed, rng)
    if counter is not None:
        if direction == "up":
            counter.add_upload(clients, payloads)
        else:
            counter.add_downloads(clients, payloads)
    return _decode_rows(compressor, payloads, vectors.shape[1], round_seed)


def broadcast(compressor, vector, receivers, *, round_seed, rng, counter=None, client_id=0):
    """Encode one server vector once, count it for every receiver, and decode it.

    Returns
    -------
    numpy.ndarray
        The decoded vector every receiver (and the server) now holds.
    """
    vector = np.asarray(vector, dtype=np.float64)
    payload = compressor.encode(vector, round_seed=round_seed, client_id=client_id, rng=rng)
    if counter is not None:
        counter.add_download(receivers, payload)
    return compressor.decode(payload, dim=vector.shape[0], round_seed=round_seed)


def compressor_omega(compressor, dim) -> float:
    """The relative variance bound ``omega`` of an unbiased compressor in dimension ``dim``.

    ``E||C(x) - x||**2 <= omega ||x||**2``. Uses the compressor's own ``omega(dim)`` when
    it has one, else the known bound of its family: QSGD with the l2 norm
    ``min(d / s**2, sqrt(d) / s)``; rand-k ``d / k - 1`` (exact); min-max stochastic
    quantization ``d / (2**b - 1)**2`` (the grid step is at most ``2 max|x| / (2**b - 1)``);
    QUIC-FL the table's vNMSE (its Gaussian-model value). Raises ``ParameterError``
    otherwise, so callers pass memory rates explicitly.
    """
    method = getattr(compressor, "omega", None)
    if callable(method):
        return float(method(dim))
    from quicdesign import compressors  # the package is only needed for the known families

    name = type(compressor).__name__
    if isinstance(compressor, compressors.QSGD) and compressor.norm == "l2":
        levels = compressor.levels
        return float(min(dim / levels**2, np.sqrt(dim) / levels))
    if isinstance(compressor, compressors.RandK):
        return dim / compressor.kept(dim) - 1.0
    if isinstance(compressor, compressors.StochasticQuantizer):
        return dim / ((1 << compressor.bits) - 1) ** 2
    if compressors.QuicFL is not None and isinstance(compressor, compressors.QuicFL):
        return float(compressor.resolved_table().vnmse)
    raise ParameterError(
        f"the variance bound omega of {name} is unknown; pass the memory rate "
        "explicitly (up_rate= / down_rate=)"
    )


def describe_compressor(compressor) -> str:
    """A short label such as ``cossgd(bits=4, clip=0.0, rounding=deterministic)``."""
    params = [
        f"{k}={v}"
        for k, v in vars(compressor).items()
        if not k.startswith("_") and isinstance(v, (int, float, str, bool))
    ]
    return f"{getattr(compressor, 'name', type(compressor).__name__)}({', '.join(params)})"
