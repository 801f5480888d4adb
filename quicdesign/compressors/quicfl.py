"""QUIC-FL on the compressor protocol (a thin adapter over :mod:`quicdesign.codec`)."""

from __future__ import annotations

from ..codec import Aggregator as _QuicAggregator
from ..codec import Encoder
from ..table import Table, load_entropy_table, load_table
from .base import Compressor, CompressorProperties

__all__ = ["QuicFL", "QuicFLEntropy"]


class QuicFL(Compressor):
    """QUIC-FL: shared rotation, table-driven unbiased b-bit quantization.

    Parameters
    ----------
    bits : int
        Message bits; selects the shipped default table when ``table`` is None.
    shared_bits, tail_prob : optional
        Pick a non-default shipped table.
    table : quicdesign.Table, optional
        Use this table instead of a shipped one.
    """

    name = "quicfl"
    properties = CompressorProperties(
        unbiased=True,
        sums_before_decoding=True,
        shared_randomness=("round", "client"),
        fixed_rate=True,
    )

    def __init__(self, bits=2, shared_bits=None, tail_prob=None, table=None):
        self.bits = bits
        self.shared_bits = shared_bits
        self.tail_prob = tail_prob
        self.table = table
        self._encoder = None

    def resolved_table(self) -> Table:
        """The table in use (loaded once)."""
        if self.table is None:
            self.table = load_table(self.bits, self.shared_bits, self.tail_prob)
        return self.table

    def encode(self, vector, *, round_seed, client_id, rng=None) -> bytes:
        encoder = self._encoder
        if encoder is None or encoder.round_seed != round_seed:
            # One encoder per round keeps its cached rotation signs.
            encoder = self._encoder = Encoder(self.resolved_table(), round_seed)
        return encoder.encode(vector, client_id, rng=rng)

    def aggregator(self, dim, round_seed):
        return _QuicAggregator(self.resolved_table(), round_seed, dim)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_encoder"] = None
        return state


class QuicFLEntropy(Compressor):
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

    def __init__(self, bits=2, table=None):
        self.bits = bits
        self.table = table
        self._encoder = None

    def resolved_table(self) -> Table:
        """The table in use (loaded once)."""
        if self.table is None:
            self.table = load_entropy_table(self.bits)
        return self.table

    def encode(self, vector, *, round_seed, client_id, rng=None) -> bytes:
        from ..entropy import EntropyEncoder

        encoder = self._encoder
        if encoder is None or encoder.round_seed != round_seed:
            encoder = self._encoder = EntropyEncoder(self.resolved_table(), round_seed)
        return encoder.encode(vector, client_id, rng=rng)

    def aggregator(self, dim, round_seed):
        from ..entropy import EntropyAggregator

        return EntropyAggregator(self.resolved_table(), round_seed, dim)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_encoder"] = None
        return state
