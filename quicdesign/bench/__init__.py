"""Benchmarks of quicdesign's building blocks and compressors (not part of the test suite)."""
