"""Compressors as pipelines of stages (after cvxpy's reductions and TFF's encoding stages).

A :class:`Stage` is one step of a compressor. On the client, ``apply(x, state)`` returns
the stage's output and its side information; on the server, ``invert(y, side, state)``
maps an output back (``y`` may be a weighted sum of many clients' outputs). Side
information is written and read through the one validated wire writer/reader
(:mod:`quicdesign._wire`). A stage declares ``commutes_with_sum`` when its inverse is
linear and the same for every client of a round, i.e.
``invert(sum w_i y_i) == sum w_i invert(y_i)``; the conformance kit checks the claim.

A :class:`Pipeline` is a short list of stages. Its server side, the one
:class:`PipelineAggregator`, decodes each client only through the stages after the
deepest prefix of commuting stages, sums there, and applies the remaining inverses once
per round (QUIC-FL's "one inverse rotation per round" is the case of a shared rotation
followed by a quantizer). A stage may give its weighted contribution as a
:class:`GatheredContribution` (QUIC-FL's fused norm x weight x receiver-table gather),
which the aggregator sums with the compiled kernels when they are installed.

Each scheme's envelope (magic, version, dimension, client id, round and configuration
tags) is written before the stages' side information and read by the aggregator's
:meth:`PipelineAggregator._read_envelope`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._accumulate import WeightedSumAggregator, check_contribution_bound
from ._kernels import compiled_kernels as _compiled_kernels
from ._validate import check_minmax_magnitude, check_weight
from ._wire import PayloadReader, unpack_codes
from ._workspace import WORKSPACE_KEY
from .errors import ParameterError, PayloadError
from .randomness import key_stream_bytes, rotation_signs
from .rotation import RotationLayout, _scaled_rotate, unrotate

__all__ = [
    "Stage",
    "StageState",
    "Pipeline",
    "PipelineAggregator",
    "GatheredContribution",
    "RandomizedHadamard",
    "ScaledChunks",
]

# Clients gathered per pass of the compiled kernel (8 bytes of index per coordinate each).
_KERNEL_BLOCK = 8
# Coordinates per block of the numpy gather-and-add (its temporaries stay in cache).
_GATHER_BLOCK = 1 << 16


@dataclass(slots=True)  # built once per client: slots make that cheaper
class StageState:
    """What stages of one client (or the server) of one round may use.

    ``client_id`` and ``rng`` are None on the server's shared state. ``cache`` holds
    values derived from the round that several stages or calls reuse (e.g. rotation
    signs). ``header`` is the envelope of the payload being decoded (server side).
    """

    dim: int
    round_seed: int
    client_id: int | None = None
    rng: np.random.Generator | None = None
    cache: dict = field(default_factory=dict)
    header: Any = None


@dataclass
class GatheredContribution:
    """A weighted contribution given as one gather from a scaled receiver table.

    Coordinate ``i`` of chunk ``k`` decodes to ``scale[k] * receiver[h_i << bits | x_i]``
    with ``h_i = shared[i] & shared_mask`` and ``x_i`` the ``i``-th ``code_width``-bit code
    of ``codes`` (packed LSB first as ``_wire.pack_codes``; 8 means one per byte); then
    ``exact`` is written at ``positions``. ``shared`` is None when ``shared_key`` is given:
    the shared bytes are then those of that Philox key's stream
    (:func:`~quicdesign.randomness.key_stream_bytes`), generated where they are used.
    Everything is validated before it is built, so summing it cannot fail.
    :meth:`materialize` is the numpy path; the compiled kernels sum blocks of clients
    straight from the packed codes and the raw shared bytes (or their stream).
    """

    receiver: np.ndarray
    scale: np.ndarray
    chunk_size: int
    bits: int
    codes: np.ndarray
    code_width: int
    shared: np.ndarray
    shared_mask: int
    positions: np.ndarray
    exact: np.ndarray
    shared_key: int | None = None

    def shared_bytes(self) -> np.ndarray:
        """The raw shared bytes (generated from ``shared_key`` when ``shared`` is None)."""
        if self.shared is not None:
            return self.shared
        return key_stream_bytes(self.shared_key, self.scale.size * self.chunk_size)

    def materialize(self) -> np.ndarray:
        """The contribution as a float64 vector."""
        decoded = np.empty(self.scale.size * self.chunk_size)
        self._decode_into(decoded, 0, self._codes(), self.shared_bytes(), self._tables())
        return decoded

    def add_to(self, total) -> None:
        """``total += self.materialize()`` (the same bits) in blocks of coordinates, with
        no vector-sized float64 temporary (its fresh pages cost as much as the sums)."""
        codes, shared, tables = self._codes(), self.shared_bytes(), self._tables()
        block = min(total.size, _GATHER_BLOCK)
        decoded = np.empty(block)
        for start in range(0, total.size, block):
            part = decoded[: min(block, total.size - start)]
            self._decode_into(part, start, codes, shared, tables)
            total[start : start + part.size] += part

    def _tables(self):
        # one small table per chunk with norm, weight and 1/sqrt(chunk) folded in, then a
        # single gather with a narrow index (numpy gathers fastest with those)
        return (self.scale[:, None] * self.receiver[None, :]).reshape(-1)

    def _codes(self):
        size = self.scale.size * self.chunk_size
        if self.code_width == 8:
            return self.codes[:size]
        return unpack_codes(self.codes, self.code_width, size)

    def _decode_into(self, out, start, codes, shared, tables) -> None:
        """Decoded coordinates ``start:start + out.size`` into ``out``, exact ones
        included."""
        stop = start + out.size
        index_dtype = np.uint16 if tables.size <= 1 << 16 else np.uint32
        index = (shared[start:stop] & np.uint8(self.shared_mask)).astype(index_dtype)
        index <<= self.bits
        index |= codes[start:stop]
        # chunk k's table starts at k * receiver.size
        for chunk in range(max(start // self.chunk_size, 1), (stop - 1) // self.chunk_size + 1):
            lo = max(chunk * self.chunk_size, start) - start
            hi = min((chunk + 1) * self.chunk_size, stop) - start
            index[lo:hi] += index_dtype(chunk * self.receiver.size)
        np.take(tables, index, out=out)
        lo, hi = np.searchsorted(self.positions, (start, stop))
        out[self.positions[lo:hi] - start] = self.exact[lo:hi]


class Stage(ABC):
    """One step of a compressor: ``apply`` on the client, ``invert`` on the server."""

    #: ``invert`` is linear and client-independent, so it may be applied to a sum once.
    commutes_with_sum: bool = False

    @property
    def sums_before_invert(self) -> bool:
        """The server sums this stage's outputs and inverts once per round.

        True for stages that commute with sum; a stage whose inverse of the sum *defines*
        the aggregate (e.g. a median sketch estimate) also says True.
        """
        return self.commutes_with_sum

    @abstractmethod
    def apply(self, x, state: StageState):
        """Return ``(y, side)``: the stage's output and its side information."""

    @abstractmethod
    def invert(self, y, side, state: StageState, dim: int) -> np.ndarray:
        """Map ``y`` (one client's output, or a weighted sum) back to the stage's input.

        ``dim`` is the length of the stage's input; ``side`` is None when ``y`` is a sum
        (only stages that commute with sum are inverted that way).
        """

    def contribution(self, y, side, state: StageState, dim: int, weight: float):
        """One client's weighted contribution at this stage's input (the sum domain).

        The plain path: :meth:`invert`, refuse magnitudes beyond
        :data:`~quicdesign._accumulate.MAX_CONTRIBUTION`, multiply by ``weight``. A stage
        may fuse the weight into its decoding and return a :class:`GatheredContribution`.
        """
        decoded = np.asarray(self.invert(y, side, state, dim), dtype=np.float64)
        check_contribution_bound(float(np.max(np.abs(decoded), initial=0.0)))
        return np.multiply(decoded, weight)

    def write_side(self, writer, side) -> None:  # noqa: B027 - most stages have no side info
        """Write ``side`` with a :class:`quicdesign._wire.PayloadWriter` (none by default)."""

    def read_side(self, reader, state: StageState, dim: int):
        """Read and validate what :meth:`write_side` wrote for an input of length ``dim``.

        Raises ``PayloadError`` on anything malformed, before any state changes.
        """
        return None

    def side_size(self, dim: int, vector_dim: int) -> int | None:
        """Exact bytes :meth:`write_side` writes for an input of length ``dim`` (the
        client vector has length ``vector_dim``), or None when the length depends on the
        data (the stage's reader then checks it)."""
        return 0

    def output_dim(self, dim: int) -> int:
        """Length of the output for an input of length ``dim``."""
        return dim

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class Pipeline:
    """A compressor's stages, from the client's vector to the last stage's side info.

    Parameters
    ----------
    stages : sequence of Stage
        Applied in order on the client; their side information follows the envelope in
        the same order (the last one's is typically the packed codes).
    """

    def __init__(self, stages):
        self.stages = tuple(stages)
        self._dims_cache: dict[int, list[int]] = {}
        # the deepest prefix of summing stages is where the server sums
        self.sum_depth = 0
        for stage in self.stages:
            if not stage.sums_before_invert:
                break
            self.sum_depth += 1
        if self.sum_depth == len(self.stages):
            raise ParameterError("a pipeline needs a per-client stage after the summed ones")

    def client_state(self, dim, round_seed, client_id, rng, cache=None) -> StageState:
        """State of one client's encoding (``cache`` shared across a round's clients)."""
        return StageState(dim, round_seed, client_id, rng, {} if cache is None else cache)

    def server_state(self, dim, round_seed) -> StageState:
        """State shared by every decode of a round (caches persist across clients)."""
        return StageState(dim, round_seed)

    def sum_shape(self, dim) -> tuple[int]:
        """Shape of the server's running sum: the output of the commuting prefix."""
        for stage in self.stages[: self.sum_depth]:
            dim = stage.output_dim(dim)
        return (dim,)

    def body_size(self, dim) -> int | None:
        """Exact bytes of all side information for a ``dim``-long vector (None: variable)."""
        size, length = 0, dim
        for stage in self.stages:
            side = stage.side_size(length, dim)
            if side is None:
                return None
            size += side
            length = stage.output_dim(length)
        return size

    def apply(self, x, state: StageState) -> list:
        """Apply every stage to ``x``; return their side information in order."""
        sides = []
        for stage in self.stages:
            x, side = stage.apply(x, state)
            sides.append(side)
        return sides

    def write(self, writer, sides) -> None:
        """Write the side information :meth:`apply` returned, in stage order."""
        for stage, side in zip(self.stages, sides, strict=True):
            stage.write_side(writer, side)

    def encode(self, x, writer, state: StageState) -> None:
        """Apply every stage to ``x`` and write their side information in order."""
        self.write(writer, self.apply(x, state))

    def decode_to_sum_domain(self, reader, state: StageState, weight=1.0):
        """Read one client's side information; return its weighted contribution.

        Every stage's side information is read and validated and the payload must end
        there before anything is decoded; the stages after the summed prefix are
        inverted, the shallowest of them through :meth:`Stage.contribution`.
        """
        dims = self._input_dims(state.dim)
        sides = [
            stage.read_side(reader, state, dim)
            for stage, dim in zip(self.stages, dims, strict=True)
        ]
        reader.expect_end()
        y = None
        for index in reversed(range(self.sum_depth + 1, len(self.stages))):
            y = self.stages[index].invert(y, sides[index], state, dims[index])
        depth = self.sum_depth
        return self.stages[depth].contribution(y, sides[depth], state, dims[depth], weight)

    def finalize(self, mean, state: StageState) -> np.ndarray:
        """Apply the summed stages' inverses once to the (weighted) mean."""
        dims = self._input_dims(state.dim)
        for index in reversed(range(self.sum_depth)):
            mean = self.stages[index].invert(mean, None, state, dims[index])
        return mean

    def _input_dims(self, dim) -> list[int]:
        # computed once per length (decode runs once per client)
        dims = self._dims_cache.get(dim)
        if dims is None:
            dims, length = [], dim
            for stage in self.stages:
                dims.append(length)
                length = stage.output_dim(length)
            self._dims_cache[dim] = dims
        return dims

    def __repr__(self):
        return f"Pipeline({list(self.stages)!r})"


class PipelineAggregator(WeightedSumAggregator):
    """The one server: sums clients at the pipeline's deepest summed stage, inverts the
    rest once in :meth:`result`.

    A payload is read as the scheme's envelope (:meth:`_read_envelope`, which checks it
    against this aggregator, the client id included), then every stage's side
    information; everything is validated before any state changes, so a rejected payload
    leaves the aggregator exactly as it was.

    Parameters
    ----------
    pipeline : Pipeline
        The compressor's stages.
    dim : int
        Length of the client vectors (validated).
    round_seed : int
        The round's seed (validated).
    """

    def __init__(self, pipeline: Pipeline, dim: int, round_seed: int):
        self._pipeline = pipeline
        self.dim = dim
        self.round_seed = round_seed
        self._state = pipeline.server_state(dim, round_seed)
        super().__init__(pipeline.sum_shape(dim))

    @abstractmethod
    def _read_envelope(self, reader: PayloadReader):
        """Read the scheme's envelope and check it against this aggregator.

        Returns the header (with ``client_id``); raises ``PayloadError`` if the payload
        belongs to another scheme, version, configuration, round or dimension, repeats a
        client, or (for fixed sizes) has the wrong length.
        """

    def _contribution(self, payload, weight: float):
        """Validate ``payload`` fully; return ``(client_id, weighted contribution)``."""
        reader = PayloadReader(payload)
        header = self._read_envelope(reader)
        server = self._state
        state = StageState(
            server.dim, server.round_seed, header.client_id, None, server.cache, header
        )
        return header.client_id, self._pipeline.decode_to_sum_domain(reader, state, weight)

    def _decode(self, payload, weight: float):
        # a gathered contribution stays unmaterialized: _accumulate adds it in blocks
        return self._contribution(payload, weight)

    def _accumulate(self, contribution) -> None:
        if isinstance(contribution, GatheredContribution):
            contribution.add_to(self._sum.reshape(-1))
        else:
            super()._accumulate(contribution)

    def add_many(self, payloads, weights=None) -> None:
        """Add payloads in order, exactly as a loop of :meth:`add` (same bits, same errors).

        Gathered contributions (QUIC-FL) are summed in blocks of clients in one pass over
        the accumulator by the compiled kernels (``pip install quicdesign[fast]``, unless
        ``QUICDESIGN_KERNELS=numpy``); the sums are bit-identical to the numpy path.
        """
        from ._kernels import compiled_kernels

        kernels = compiled_kernels()
        if kernels is None or not self._pipeline_gathers():
            super().add_many(payloads, weights)
            return
        payloads, weights = self._batch_arguments(payloads, weights)
        for start in range(0, len(payloads), _KERNEL_BLOCK):
            block, failure, seen = [], None, set()
            for position in range(start, min(len(payloads), start + _KERNEL_BLOCK)):
                try:
                    weight = check_weight(weights[position])
                    client_id, gathered = self._contribution(payloads[position], weight)
                    if client_id in seen:
                        raise PayloadError(f"client {client_id} was already added this round")
                except (PayloadError, ParameterError) as exc:
                    failure = (position, exc)
                    break
                seen.add(client_id)
                block.append((client_id, weight, gathered))
            if block:
                added = self._commit_block(kernels, block)
                if added < len(block):  # another thread added that client meanwhile
                    client_id = block[added][0]
                    failure = (
                        start + added,
                        PayloadError(f"client {client_id} was already added this round"),
                    )
            if failure is not None:
                self._raise_at(*failure)

    def _pipeline_gathers(self) -> bool:
        return getattr(self._pipeline.stages[self._pipeline.sum_depth], "gathers", False)

    def _commit_block(self, kernels, block) -> int:
        """Accumulate validated gathered clients with the compiled kernel (cannot fail):
        those before the first one already added (by another thread); how many."""
        with self._commit_lock:
            added = next(
                (i for i, (client_id, _, _) in enumerate(block) if client_id in self._clients),
                len(block),
            )
            if added:
                items = [item for _, _, item in block[:added]]
                kernels.accumulate_gathered(self._sum.reshape(-1), items)
            for client_id, weight, _ in block[:added]:
                self._total_weight += weight
                self._clients.add(client_id)
        return added

    def _finalize(self, mean: np.ndarray) -> np.ndarray:
        return self._pipeline.finalize(mean, self._state)


@dataclass
class ScaledChunks:
    """A rotated vector in chunks: chunk ``k`` is ``rotated[k] * 2**exponents[k]``.

    ``rotated`` has the compute dtype of the input (float32 or float64) and shape
    ``(num_chunks, chunk_size)`` of ``layout``. ``square_sums``, when the rotation found
    them: each row of ``rotated``'s sum of squares, as the compiled ``row_square_sums``.
    """

    rotated: np.ndarray
    exponents: np.ndarray
    layout: RotationLayout
    square_sums: np.ndarray | None = None

    def __array__(self, dtype=None, copy=None):
        """The true values as a flat float64 vector.

        Refused (``InputVectorError``) when the largest magnitude is below float32's
        normal range, before ``ldexp`` could flush it to 0.
        """
        check_minmax_magnitude(self.rotated, self.exponents)
        with np.errstate(over="ignore"):
            values = np.ldexp(self.rotated.astype(np.float64), self.exponents[:, None])
        return values.reshape(-1).astype(dtype or np.float64, copy=False)


class RandomizedHadamard(Stage):
    """Pad, then rotate chunk by chunk with random signs (:mod:`quicdesign.rotation`).

    With the round's shared signs it is linear and the same for every client, so it
    commutes with sum: the server inverts it once per round. With per-client signs
    (``client_purpose``, EDEN) the server inverts it per client.

    Parameters
    ----------
    scaled : bool
        Output :class:`ScaledChunks` (the rotation in the input's compute dtype with one
        power of two per chunk, as the quantizers of QUIC-FL and EDEN use it) instead of
        a float64 vector.
    client_purpose : str, optional
        Draw the signs from the client's shared stream
        ``(round_seed, client_id, client_purpose)`` instead of the round's.
    """

    #: ``apply`` refuses a NaN or infinite input (from the chunk peaks of its first pass)
    refuses_non_finite = True

    def __init__(self, scaled=False, client_purpose=None):
        self.scaled = scaled
        self.client_purpose = client_purpose
        self.commutes_with_sum = client_purpose is None

    def _signs(self, state, layout, dtype):
        if self.client_purpose is not None:
            # the client's own signs: never cached (a server would keep one per client)
            return rotation_signs(
                state.round_seed,
                layout.rotated_dim,
                dtype,
                client_id=state.client_id,
                purpose=self.client_purpose,
            )
        # one sign stream per round and length, shared by every client of the server
        key = ("rotation signs", layout.rotated_dim, dtype)
        signs = state.cache.get(key)
        if signs is None:
            signs = rotation_signs(state.round_seed, layout.rotated_dim, dtype)
            state.cache[key] = signs
        return signs

    def apply(self, x, state):
        layout = RotationLayout.for_dim(x.size)
        # signs in the compute dtype (exact either way; no mixed-dtype multiply)
        kind = np.float64 if x.dtype == np.float64 else np.float32
        if x.dtype == kind and _compiled_kernels() is not None:
            kind = np.int8  # a quarter of float32's bytes; the compiled pass widens them exactly
        signs = self._signs(state, layout, kind)
        # rotate each chunk scaled by a power of two (exact), so float32 cannot overflow
        # or underflow; the ends of the pipeline restore the true magnitudes
        rotated, exponents, square_sums = _scaled_rotate(
            x, signs, layout, generated_signs=True, workspace=state.cache.get(WORKSPACE_KEY)
        )
        if self.scaled:
            return ScaledChunks(rotated, exponents, layout, square_sums), None
        return np.asarray(ScaledChunks(rotated, exponents, layout)), None

    def invert(self, y, side, state, dim):
        layout = RotationLayout.for_dim(dim)
        matrix = np.asarray(y, dtype=np.float64).reshape(layout.num_chunks, layout.chunk_size)
        return unrotate(matrix, self._signs(state, layout, np.float64), layout)

    def output_dim(self, dim):
        return RotationLayout.for_dim(dim).rotated_dim
