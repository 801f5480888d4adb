"""Compressors as pipelines of stages (after cvxpy's reductions and TFF's encoding stages).

A :class:`Stage` is one step of a compressor. On the client, ``apply(x, state)`` returns
the stage's output and its side information; on the server, ``invert(y, side, state)``
maps an output back (``y`` may be a weighted sum of many clients' outputs). Side
information is written and read through the one validated wire writer/reader
(:mod:`quicdesign._wire`). A stage declares ``commutes_with_sum`` when its inverse is
linear and the same for every client of a round, i.e.
``invert(sum w_i y_i) == sum w_i invert(y_i)``; the conformance kit checks the claim.

A :class:`Pipeline` is a short list of stages. Its server side decodes each client only
through the stages after the deepest prefix of commuting stages, sums there, and applies
the remaining inverses once per round (QUIC-FL's "one inverse rotation per round" is the
case of a shared rotation followed by a quantizer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ._validate import check_minmax_magnitude
from .randomness import rotation_signs
from .rotation import RotationLayout, scaled_rotate, unrotate

__all__ = ["Stage", "StageState", "Pipeline", "RandomizedHadamard"]


@dataclass
class StageState:
    """What stages of one client (or the server) of one round may use.

    ``client_id`` and ``rng`` are None on the server. ``cache`` holds values derived
    from the round that several stages or calls reuse (e.g. rotation signs).
    """

    dim: int
    round_seed: int
    client_id: int | None = None
    rng: np.random.Generator | None = None
    cache: dict = field(default_factory=dict)


class Stage(ABC):
    """One step of a compressor: ``apply`` on the client, ``invert`` on the server."""

    #: ``invert`` is linear and client-independent, so it may be applied to a sum once.
    commutes_with_sum: bool = False

    @abstractmethod
    def apply(self, x, state: StageState):
        """Return ``(y, side)``: the stage's output and its side information."""

    @abstractmethod
    def invert(self, y, side, state: StageState, dim: int) -> np.ndarray:
        """Map ``y`` (one client's output, or a weighted sum) back to the stage's input.

        ``dim`` is the length of the stage's input; ``side`` is None when ``y`` is a sum
        (only stages that commute with sum are inverted that way).
        """

    def write_side(self, writer, side) -> None:  # noqa: B027 - most stages have no side info
        """Write ``side`` with a :class:`quicdesign._wire.PayloadWriter` (none by default)."""

    def read_side(self, reader, state: StageState, dim: int):
        """Read and validate what :meth:`write_side` wrote for an input of length ``dim``.

        Raises ``PayloadError`` on anything malformed, before any state changes.
        """
        return None

    def side_size(self, dim: int) -> int | None:
        """Exact bytes :meth:`write_side` writes for an input of length ``dim``, or None
        when the length depends on the data (the stage's reader then checks it)."""
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
        Applied in order on the client; the last one's side information is the payload
        body (e.g. packed codes).
    """

    def __init__(self, stages):
        self.stages = tuple(stages)
        self._dims_cache: dict[int, list[int]] = {}
        # the deepest prefix of commuting stages is where the server sums
        self.sum_depth = 0
        for stage in self.stages:
            if not stage.commutes_with_sum:
                break
            self.sum_depth += 1

    def client_state(self, dim, round_seed, client_id, rng) -> StageState:
        """State of one client's encoding."""
        return StageState(dim, round_seed, client_id, rng)

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
        size = 0
        for stage in self.stages:
            side = stage.side_size(dim)
            if side is None:
                return None
            size += side
            dim = stage.output_dim(dim)
        return size

    def encode(self, x, writer, state: StageState) -> None:
        """Apply every stage to ``x`` and write their side information in order."""
        for stage in self.stages:
            x, side = stage.apply(x, state)
            stage.write_side(writer, side)

    def decode_to_sum_domain(self, reader, state: StageState) -> np.ndarray:
        """Read one client's side information and invert the non-commuting stages."""
        dims = self._input_dims(state.dim)
        sides = [
            stage.read_side(reader, state, dim)
            for stage, dim in zip(self.stages, dims, strict=True)
        ]
        y = None
        for index in reversed(range(self.sum_depth, len(self.stages))):
            y = self.stages[index].invert(y, sides[index], state, dims[index])
        return y

    def finalize(self, mean, state: StageState) -> np.ndarray:
        """Apply the commuting stages' inverses once to the (weighted) mean."""
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


class RandomizedHadamard(Stage):
    """Pad, then rotate with the round's shared signs (:mod:`quicdesign.rotation`).

    Linear with the same signs for every client of a round, so it commutes with sum:
    the server inverts it once per round.
    """

    commutes_with_sum = True

    @staticmethod
    def _signs(state, layout, dtype):
        # one sign stream per round and length, shared by every client of the server
        key = ("rotation signs", layout.rotated_dim, np.dtype(dtype).str)
        signs = state.cache.get(key)
        if signs is None:
            signs = rotation_signs(state.round_seed, layout.rotated_dim, dtype)
            state.cache[key] = signs
        return signs

    def apply(self, x, state):
        layout = RotationLayout.for_dim(x.size)
        signs = self._signs(state, layout, np.float32)
        # rotate each chunk scaled by a power of two (exact), so float32 cannot overflow
        # or underflow, then restore the true magnitudes in float64
        rotated, exponents = scaled_rotate(x, signs, layout)
        check_minmax_magnitude(rotated, exponents)  # before ldexp can flush it to 0
        with np.errstate(over="ignore"):
            values = np.ldexp(rotated.astype(np.float64), exponents[:, None])
        return values.reshape(-1), None

    def invert(self, y, side, state, dim):
        layout = RotationLayout.for_dim(dim)
        matrix = np.asarray(y, dtype=np.float64).reshape(layout.num_chunks, layout.chunk_size)
        return unrotate(matrix, self._signs(state, layout, np.float64), layout)

    def output_dim(self, dim):
        return RotationLayout.for_dim(dim).rotated_dim
