"""Compressors as pipelines of stages, and the one pipeline aggregator."""

import math

import numpy as np
import pytest

from quicdesign import ParameterError, QuicFLAggregator, QuicFLEncoder, load_table
from quicdesign._wire import PayloadReader, unpack_codes
from quicdesign.codec import read_header
from quicdesign.compressors import COMPRESSORS, make_compressor
from quicdesign.randomness import rotation_signs, shared_values
from quicdesign.rotation import RotationLayout, unrotate
from quicdesign.stages import Pipeline, PipelineAggregator, RandomizedHadamard

ROUND = 77


def _reference_rotated_decode(table, payload, dim):
    """QUIC-FL's decode written out plainly: ``R[h, x] * norm_k / sqrt(m)``, exact values."""
    reader = PayloadReader(payload)
    header = read_header(reader)
    layout = RotationLayout.for_dim(dim)
    codes = unpack_codes(
        reader.read_bytes(-(-table.bits * layout.rotated_dim // 8), "c"),
        table.bits,
        layout.rotated_dim,
    )
    indices = reader.read_array("<u4", header.num_exact, "i")
    values = reader.read_array("<f4", header.num_exact, "v")
    h = shared_values(ROUND, header.client_id, table.shared_bits, layout.rotated_dim)
    z = table.receiver[h, codes].astype(np.float64)
    z[indices] = values
    per_chunk = header.norms.astype(np.float64) / math.sqrt(layout.chunk_size)
    return z * np.repeat(per_chunk, layout.chunk_size)


@pytest.mark.parametrize("dim", [5, 3000, 70_001])
def test_fused_quicfl_inverse_equals_the_plain_decode(dim):
    table = load_table(2)
    rng = np.random.default_rng(dim)
    encoder = QuicFLEncoder(table, ROUND)
    payloads = [encoder.encode(rng.lognormal(size=dim), c, rng=c) for c in range(3)]
    weights = [0.5, 2.5, 7.0]
    aggregator = QuicFLAggregator(table, ROUND, dim)
    aggregator.add_many(payloads, weights)
    expected = sum(
        w * _reference_rotated_decode(table, p, dim) for w, p in zip(weights, payloads, strict=True)
    )
    # the fused path rounds in another order: a few ulps of the largest value
    scale = np.abs(expected).max()
    np.testing.assert_allclose(aggregator._sum, expected, rtol=0, atol=1e-13 * scale)
    layout = RotationLayout.for_dim(dim)
    mean = unrotate(
        expected / sum(weights), rotation_signs(ROUND, layout.rotated_dim, np.float64), layout
    )
    np.testing.assert_allclose(
        aggregator.result(), mean, rtol=1e-9, atol=1e-12 * np.abs(mean).max()
    )


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_every_compressor_is_a_pipeline_whose_summing_matches_its_declaration(name):
    compressor = make_compressor(name)
    pipeline = compressor.stages
    assert isinstance(pipeline, Pipeline)
    assert (pipeline.sum_depth > 0) == compressor.properties.sums_before_decoding
    aggregator = compressor.aggregator(100, ROUND)
    assert isinstance(aggregator, PipelineAggregator)
    assert aggregator._sum.shape == pipeline.sum_shape(100)


def test_a_pipeline_without_a_per_client_stage_is_refused():
    with pytest.raises(ParameterError, match="per-client stage"):
        Pipeline((RandomizedHadamard(),))


def test_per_client_rotation_does_not_commute_with_sum():
    assert RandomizedHadamard().commutes_with_sum
    assert not RandomizedHadamard(client_purpose="eden-rotation").commutes_with_sum
    assert make_compressor("eden").stages.sum_depth == 0


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_gathered_contributions_add_in_blocks_exactly_as_materialized(monkeypatch, bits):
    # the numpy server adds a client block by block; blocks cut chunks and exact runs
    import quicdesign.stages as stages_module
    from quicdesign import QuicFLAggregator, QuicFLEncoder, load_table

    monkeypatch.setattr(stages_module, "_GATHER_BLOCK", 700)
    table = load_table(bits)
    dim = 20000
    rng = np.random.default_rng(bits)
    vector = rng.standard_normal(dim)  # ~0.2 % of rotated coordinates are sent exactly
    payload = QuicFLEncoder(table, 3).encode(vector, 7, rng=1)
    aggregator = QuicFLAggregator(table, 3, dim)
    _, gathered = aggregator._contribution(payload, 0.37)
    assert gathered.positions.size > 10 and gathered.scale.size > 1
    start = rng.standard_normal(gathered.scale.size * gathered.chunk_size)
    total = start.copy()
    gathered.add_to(total)
    assert total.tobytes() == (start + gathered.materialize()).tobytes()
