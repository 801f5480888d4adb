"""QUIC-FL on the compressor protocol (thin adapters over the runtime codecs)."""

from __future__ import annotations

from ..codec import QuicFLAggregator, QuicFLEncoder
from ..direct import DirectAggregator, DirectEncoder
from ..entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder
from ..table import Table, load_entropy_table, load_table
from .base import Compressor, CompressorProperties

__all__ = ["QuicFL", "QuicFLDirect", "QuicFLEntropy"]


class _TableCompressor(Compressor):
    """A compressor driven by a table: one encoder per round, one aggregator per round."""

    _encoder_class = QuicFLEncoder
    _aggregator_class = QuicFLAggregator

    def __init__(self, bits=2, table=None):
        self.bits = bits
        self.table = table
        self._encoder = None
        self._loaded_table = None

    def _load_table(self) -> Table:
        raise NotImplementedError

    def _codec_options(self) -> dict:
        """Keyword options passed to the encoder and aggregator classes."""
        return {}

    def resolved_table(self) -> Table:
        """The table in use: ``table`` if given, else the shipped one (loaded once).

        The loaded table is cached privately, so the public parameters (and the repr)
        stay what the caller passed.
        """
        if self.table is not None:
            return self.table
        if self._loaded_table is None:
            self._loaded_table = self._load_table()
        return self._loaded_table

    def encode(self, vector, *, round_seed, client_id, rng=None) -> bytes:
        encoder = self._encoder
        table = self.resolved_table()
        if encoder is None or encoder.round_seed != round_seed or encoder.table is not table:
            # One encoder per round keeps its cached rotation signs.
            encoder = self._encoder = self._encoder_class(
                table, round_seed, **self._codec_options()
            )
        return encoder.encode(vector, client_id, rng=rng)

    def aggregator(self, dim, round_seed):
        return self._aggregator_class(
            self.resolved_table(), round_seed, dim, **self._codec_options()
        )

    @property
    def stages(self):
        """The :class:`~quicdesign.stages.Pipeline` the encoder and aggregator run."""
        return self._encoder_class.pipeline_for(self.resolved_table(), **self._codec_options())

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_encoder"] = None
        state["_loaded_table"] = None  # reloaded (checksummed) where it is unpickled
        return state


class QuicFL(_TableCompressor):
    """QUIC-FL: shared rotation, table-driven unbiased b-bit quantization.

    Parameters
    ----------
    bits : int
        Message bits; selects the shipped default table when ``table`` is None.
    shared_bits, tail_prob : optional
        Pick a non-default shipped table.
    table : quicdesign.Table, optional
        Use this table instead of a shipped one.
    stratified : bool
        Opt-in stratified shared values: ``client_id`` must be the client's index in the
        round, 0..n-1 (see :class:`quicdesign.QuicFLEncoder`).
    """

    name = "quicfl"
    properties = CompressorProperties(
        unbiased=True,
        sums_before_decoding=True,
        shared_randomness=("round", "client"),
        fixed_rate=True,
    )

    def __init__(self, bits=2, shared_bits=None, tail_prob=None, table=None, stratified=False):
        self.bits = bits
        self.shared_bits = shared_bits
        self.tail_prob = tail_prob
        self.table = table
        self.stratified = stratified
        self._encoder = None
        self._loaded_table = None

    def _load_table(self) -> Table:
        return load_table(self.bits, self.shared_bits, self.tail_prob)

    def _codec_options(self) -> dict:
        # only when asked, so the default stays the plain (unstratified) codec
        return {"stratified": self.stratified} if self.stratified else {}


class QuicFLEntropy(_TableCompressor):
    """Entropy-coded QUIC-FL: a dithered-grid table with many messages, ANS coded.

    Parameters
    ----------
    bits : int
        Nominal bits per coordinate; selects the shipped entropy-coded table.
    table : quicdesign.Table, optional
        An entropy-coded table (with ``code_model``) instead of a shipped one.
    """

    name = "quicfl-ec"
    properties = CompressorProperties(
        unbiased=True,
        sums_before_decoding=True,
        shared_randomness=("round", "client"),
        fixed_rate=False,
    )
    _encoder_class = QuicFLEntropyEncoder
    _aggregator_class = QuicFLEntropyAggregator

    def _load_table(self) -> Table:
        return load_entropy_table(self.bits)


class QuicFLDirect(_TableCompressor):
    """QUIC-FL without rotation: unit-RMS chunks quantized by a ``direct`` table.

    Parameters
    ----------
    bits : int
        Message bits; without ``table``, the shipped normal table of that width is used
        as a direct table (right for normal-looking values).
    table : quicdesign.Table, optional
        A table designed with ``solvers.design(..., input_model="direct")``.
    """

    name = "quicfl-direct"
    properties = CompressorProperties(
        unbiased=True,
        sums_before_decoding=False,  # no transform: each client decodes on its own
        shared_randomness=("round", "client"),
        fixed_rate=True,
    )
    _encoder_class = DirectEncoder
    _aggregator_class = DirectAggregator

    def _load_table(self) -> Table:
        shipped = load_table(self.bits)
        parameters = {
            **shipped.manifest["parameters"],
            "input_model": {"normalization": "direct", "law": {"kind": "standard_normal"}},
        }
        return shipped.with_manifest(parameters=parameters)
