"""The compressor protocol (defined in :mod:`quicdesign.protocol`, re-exported here)."""

from ..protocol import Aggregator, Compressor, CompressorProperties

__all__ = ["Aggregator", "Compressor", "CompressorProperties"]
