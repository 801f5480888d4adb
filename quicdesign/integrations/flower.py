"""Flower integration on the Message API: a client mod and a server strategy wrapper.

Needs the ``flower`` extra (``pip install quicdesign[flower]``, flwr >= 1.22).

- :class:`QuicFLMod`: a client mod. On train replies it replaces the model update (reply
  arrays minus the global arrays the server sent, flattened in key order) by one payload
  :class:`flwr.app.Array` of stype :data:`PAYLOAD_STYPE`. A stock strategy fed such a
  reply fails loudly (Flower refuses to read an unknown stype) instead of averaging bytes.
- :class:`QuicFLStrategy`: wraps a strategy such as ``FedAvg``. It gives every node its
  own config (a dense 32-bit client id and the round seed), aggregates the payloads with
  one aggregator weighted by each reply's example count, and returns arrays with the
  original keys, shapes and dtypes. Evaluation and the summary are delegated.

Both sides must use the same compressor; payloads of another scheme, table or round are
refused by the aggregator. Any :class:`~quicdesign.compressors.Compressor` works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

try:
    import flwr  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quicdesign.integrations.flower needs Flower: pip install 'quicdesign[flower]'"
    ) from error
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from quicdesign.errors import ParameterError, PayloadError, QuicDesignError
from quicdesign.fl._common import stream_seed
from quicdesign.protocol import Compressor

__all__ = [
    "KEY_CLIENT_ID",
    "KEY_ROUND_SEED",
    "PAYLOAD_KEY",
    "PAYLOAD_STYPE",
    "QuicFLMod",
    "QuicFLStrategy",
    "flower_round_seed",
]

#: ConfigRecord key of the round seed the strategy sends to every node.
KEY_ROUND_SEED = "quicdesign.round-seed"
#: ConfigRecord key of the node's dense 32-bit client id.
KEY_CLIENT_ID = "quicdesign.client-id"
#: Key of the single payload Array in a compressed reply's ArrayRecord.
PAYLOAD_KEY = "quicdesign.payload"
#: stype of the payload Array: not ``numpy.ndarray``, so stock strategies refuse it.
PAYLOAD_STYPE = "quicdesign.payload"

_MAX_CLIENT_ID = 2**32 - 1
# Flower serializes config integers as sint64.
_SEED_MASK = 2**63 - 1
# Compressor payloads stay below 8 bytes per coordinate plus headers.
_MAX_BYTES_PER_COORDINATE = 8
_MAX_HEADER_BYTES = 1 << 16
_logger = logging.getLogger(__name__)


def _check_compressor(compressor):
    if not isinstance(compressor, Compressor):
        raise ParameterError(
            f"compressor must implement quicdesign's Compressor protocol, "
            f"got {type(compressor).__name__}"
        )


def flower_round_seed(seed, run_id, server_round) -> int:
    """Round seed of a Flower round, derived from ``(seed, run_id, server_round)``.

    63 bits, so it travels as a Flower config integer (sint64).
    """
    return stream_seed(seed, "flower", run_id, server_round) & _SEED_MASK


def _flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def _only_record(records, kind):
    if len(records) != 1:
        raise ParameterError(f"expected exactly one {kind}, found {len(records)}")
    return next(iter(records.items()))


def _error_reply(msg: Message, reason: str) -> Message:
    _logger.warning("QuicFLMod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _payload_array(payload: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(payload),), stype=PAYLOAD_STYPE, data=payload)


class QuicFLMod:
    """Client mod that sends the model update as one compressed payload.

    Use as ``ClientApp(mods=[QuicFLMod(QuicFL(bits=4))])``. Messages other than train
    pass through unchanged. A train message must carry one ArrayRecord (the global model)
    and one ConfigRecord with :data:`KEY_ROUND_SEED` and :data:`KEY_CLIENT_ID` (sent by
    :class:`QuicFLStrategy`); otherwise, or if the reply's arrays do not match the global
    arrays, the mod returns an error reply, as Flower's clipping mods do.

    Parameters
    ----------
    compressor : quicdesign.compressors.Compressor
        The compressor the server strategy uses too.
    rng : numpy.random.Generator, optional
        Client-private randomness (a fresh generator when omitted).
    """

    def __init__(self, compressor, *, rng=None):
        _check_compressor(compressor)
        self.compressor = compressor
        self.rng = rng

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        message_type = msg.metadata.message_type
        if message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, ctxt)
        try:
            _, global_arrays = _only_record(msg.content.array_records, "ArrayRecord")
            _, config = _only_record(msg.content.config_records, "ConfigRecord")
            missing = [key for key in (KEY_ROUND_SEED, KEY_CLIENT_ID) if key not in config]
            if missing:
                raise ParameterError(
                    f"the ConfigRecord lacks {missing}; use QuicFLStrategy in the ServerApp"
                )
            round_seed, client_id = config[KEY_ROUND_SEED], config[KEY_CLIENT_ID]
            keys = list(global_arrays.keys())
            reference = global_arrays.to_numpy_ndarrays()
        except (ParameterError, TypeError) as error:
            return _error_reply(msg, f"incoming message refused: {error}")

        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        try:
            record_key, arrays = _only_record(reply.content.array_records, "ArrayRecord")
            if list(arrays.keys()) != keys:
                raise ParameterError("the reply's array keys differ from the global model's")
            trained = arrays.to_numpy_ndarrays()
            shapes = [a.shape for a in trained]
            if shapes != [a.shape for a in reference]:
                raise ParameterError("the reply's array shapes differ from the global model's")
            update = _flatten(trained) - _flatten(reference)
            payload = self.compressor.encode(
                update, round_seed=round_seed, client_id=client_id, rng=self.rng
            )
        except (QuicDesignError, TypeError) as error:
            return _error_reply(msg, f"reply not compressed: {error}")
        compressed = ArrayRecord({PAYLOAD_KEY: _payload_array(payload)})
        reply.content.array_records[record_key] = compressed
        return reply


class _RoundPlan:
    """What the strategy sent in one training round, to decode the replies against."""

    def __init__(self, server_round, round_seed, arrays: ArrayRecord):
        self.server_round = server_round
        self.round_seed = round_seed
        self.keys = list(arrays.keys())
        reference = arrays.to_numpy_ndarrays()
        self.shapes = [a.shape for a in reference]
        self.dtypes = [a.dtype for a in reference]
        self.flat = _flatten(reference)

    def arrays_from_update(self, update: np.ndarray) -> ArrayRecord:
        """Global model plus ``update``, split back into the original keys/shapes/dtypes."""
        model = self.flat + update
        out, start = {}, 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            values = model[start : start + size].reshape(shape)
            out[key] = Array(np.ascontiguousarray(values, dtype=dtype))
            start += size
        return ArrayRecord(out)


class QuicFLStrategy(Strategy):
    """Server strategy wrapper that aggregates compressed updates from :class:`QuicFLMod`.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The wrapped strategy (e.g. ``FedAvg(...)``): it samples nodes and builds the
        messages, aggregates metrics, and runs evaluation and the summary.
    compressor : quicdesign.compressors.Compressor
        The compressor the clients' :class:`QuicFLMod` uses.
    seed : int
        Run seed; round seeds derive from ``(seed, run_id, server_round)``.
    decode_each : bool
        Opt-in: decode every reply to full arrays and let the wrapped strategy aggregate
        them (for strategies that need per-client arrays, e.g. FedMedian or Krum). The
        default sums all payloads in one aggregator weighted by example counts, which
        is cheaper (QUIC-FL inverts its rotation once per round) and matches FedAvg.

    Attributes
    ----------
    uplink_bytes : int
        Payload bytes received so far.
    dense_uplink_bytes : int
        What the same replies would have cost as float32 arrays.
    client_ids : dict
        Flower node id (64-bit) -> dense 32-bit client id, assigned on first contact.
    """

    def __init__(self, strategy: Strategy, compressor, *, seed=0, decode_each=False):
        if not isinstance(strategy, Strategy):
            raise ParameterError(f"strategy must be a Flower Strategy, got {type(strategy)}")
        _check_compressor(compressor)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ParameterError(f"seed must be an integer >= 0, got {seed!r}")
        self.strategy = strategy
        self.compressor = compressor
        self.seed = seed
        self.decode_each = bool(decode_each)
        self.weighted_by_key = getattr(strategy, "weighted_by_key", "num-examples")
        self.client_ids: dict[int, int] = {}
        self.uplink_bytes = 0
        self.dense_uplink_bytes = 0
        self._plan: _RoundPlan | None = None

    # ------------------------------------------------------------------ delegated
    def summary(self) -> None:
        """Log the wrapper's settings, then the wrapped strategy's summary."""
        _logger.info(
            "QuicFLStrategy: compressor %r, seed %d, decode each reply: %s",
            self.compressor,
            self.seed,
            self.decode_each,
        )
        self.strategy.summary()

    def configure_evaluate(self, server_round, arrays, config, grid):
        """Delegated to the wrapped strategy (evaluation is not compressed)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        """Delegated to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ training
    def _client_id(self, node_id: int) -> int:
        client_id = self.client_ids.get(node_id)
        if client_id is None:
            client_id = len(self.client_ids)
            if client_id > _MAX_CLIENT_ID:
                raise ParameterError("more than 2**32 distinct nodes: client ids exhausted")
            self.client_ids[node_id] = client_id
        return client_id

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages, each with its own config (client id, seed)."""
        round_seed = flower_round_seed(self.seed, grid.run.run_id, server_round)
        self._plan = _RoundPlan(server_round, round_seed, arrays)
        messages = []
        for message in self.strategy.configure_train(server_round, arrays, config, grid):
            # the wrapped strategy may share one RecordDict between all messages
            content = RecordDict(dict(message.content.items()))
            configs = dict(message.content.config_records.items()) or {"config": ConfigRecord()}
            for key, record in configs.items():
                node_config = ConfigRecord(dict(record.items()))
                node_config[KEY_ROUND_SEED] = round_seed
                node_config[KEY_CLIENT_ID] = self._client_id(message.metadata.dst_node_id)
                content[key] = node_config
            messages.append(
                Message(
                    content=content,
                    dst_node_id=message.metadata.dst_node_id,
                    message_type=message.metadata.message_type,
                    group_id=message.metadata.group_id or None,
                )
            )
        return messages

    def _reply_payload(self, reply: Message, dim: int) -> tuple[bytes, float]:
        _, arrays = _only_record(reply.content.array_records, "ArrayRecord")
        if list(arrays.keys()) != [PAYLOAD_KEY] or arrays[PAYLOAD_KEY].stype != PAYLOAD_STYPE:
            raise PayloadError("the reply carries no quicdesign payload (is QuicFLMod set?)")
        payload = arrays[PAYLOAD_KEY].data
        if len(payload) > _MAX_BYTES_PER_COORDINATE * dim + _MAX_HEADER_BYTES:
            raise PayloadError(f"payload of {len(payload)} bytes is too large for dim {dim}")
        weights = [
            record[self.weighted_by_key]
            for record in reply.content.metric_records.values()
            if self.weighted_by_key in record
        ]
        if len(weights) != 1:
            raise PayloadError(f"the reply needs exactly one '{self.weighted_by_key}' metric")
        return payload, float(weights[0])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the payloads and aggregate; refused replies are logged and skipped."""
        plan = self._plan
        if plan is None or plan.server_round != server_round:
            raise ParameterError(f"round {server_round} was not configured by this strategy")
        dim = plan.flat.size
        aggregator = self.compressor.aggregator(dim, plan.round_seed)
        accepted = []
        for reply in replies:
            if reply.has_error():
                _logger.info(
                    "QuicFLStrategy: error reply from node %d: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            try:
                payload, weight = self._reply_payload(reply, dim)
                if self.decode_each:
                    update = self.compressor.decode(payload, dim=dim, round_seed=plan.round_seed)
                    arrays = plan.arrays_from_update(update)
                else:
                    aggregator.add(payload, weight)  # validates before changing anything
            except (QuicDesignError, ValueError) as error:
                _logger.warning(
                    "QuicFLStrategy: reply from node %d refused: %s",
                    reply.metadata.src_node_id,
                    error,
                )
                continue
            if self.decode_each:
                record_key = next(iter(reply.content.array_records))
                reply.content.array_records[record_key] = arrays
            self.uplink_bytes += len(payload)
            self.dense_uplink_bytes += 4 * dim
            accepted.append(reply)
        if not accepted:
            return None, None
        if self.decode_each:
            return self.strategy.aggregate_train(server_round, accepted)
        arrays = plan.arrays_from_update(aggregator.result())
        return arrays, self._aggregate_metrics([reply.content for reply in accepted])

    def _aggregate_metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        aggregate = getattr(self.strategy, "train_metrics_aggr_fn", None)
        if aggregate is None:
            return None
        return aggregate(contents, self.weighted_by_key)
