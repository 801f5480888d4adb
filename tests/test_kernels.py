"""The optional compiled kernels give bit-identical sums to the numpy path, and add_many
is exactly a loop of add (same bits, same refusals)."""

import numpy as np
import pytest

from quicdesign import ParameterError, PayloadError, QuicFLAggregator, QuicFLEncoder, load_table
from quicdesign._kernels import KERNELS_ENV, compiled_kernels

pytest.importorskip("numba")

ROUND = 13


def _payloads(bits, dim, magnitude, count=11):
    table = load_table(bits)
    encoder = QuicFLEncoder(table, ROUND)
    rng = np.random.default_rng(bits * 1000 + dim)
    payloads = []
    for client in range(count):
        # heavy tails give exact coordinates; the magnitudes span the accepted range
        x = rng.standard_t(2, dim) * magnitude
        payloads.append(encoder.encode(x.astype(np.float32), client, rng=rng))
    return table, payloads


def _state(aggregator):
    return aggregator._sum.tobytes(), aggregator.total_weight, sorted(aggregator.clients)


def _aggregate(monkeypatch, kernels, table, dim, payloads, weights, batched=True):
    monkeypatch.setenv(KERNELS_ENV, kernels)
    aggregator = QuicFLAggregator(table, ROUND, dim)
    if batched:
        aggregator.add_many(payloads, weights)
    else:
        for payload, weight in zip(payloads, weights, strict=True):
            aggregator.add(payload, weight)
    return aggregator


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dim", [1, 3, 1025, 70_001])
def test_compiled_sums_are_bit_identical_to_numpy(monkeypatch, bits, dim):
    for magnitude in (1.0, 1e30, 1e-30):
        table, payloads = _payloads(bits, dim, magnitude)
        weights = np.random.default_rng(dim).uniform(0.5, 3.0, len(payloads))
        weights[0], weights[1] = 2.0**-256, 2.0**200
        loop = _aggregate(monkeypatch, "numpy", table, dim, payloads, weights, batched=False)
        numpy_batch = _aggregate(monkeypatch, "numpy", table, dim, payloads, weights)
        compiled = _aggregate(monkeypatch, "auto", table, dim, payloads, weights)
        assert compiled_kernels() is not None
        assert _state(compiled) == _state(loop) == _state(numpy_batch)
        assert compiled.result().tobytes() == loop.result().tobytes()


def test_switch_turns_the_compiled_path_off(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "numpy")
    assert compiled_kernels() is None
    monkeypatch.setenv(KERNELS_ENV, "auto")
    assert compiled_kernels() is not None


@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_add_many_stops_at_the_first_refusal_like_a_loop(monkeypatch, kernels):
    table, payloads = _payloads(2, 3000, 1.0, count=12)
    corrupt = payloads[:10] + [payloads[10][:-1], payloads[11]]
    expected = _aggregate(monkeypatch, "numpy", table, 3000, payloads[:10], [1.0] * 10, False)
    aggregator = QuicFLAggregator(table, ROUND, 3000)
    monkeypatch.setenv(KERNELS_ENV, kernels)
    with pytest.raises(PayloadError, match="payload 10"):
        aggregator.add_many(corrupt)
    assert _state(aggregator) == _state(expected)
    for bad in ([payloads[0], payloads[0]], [payloads[11]] * 2):
        fresh = QuicFLAggregator(table, ROUND, 3000)
        with pytest.raises(PayloadError, match="payload 1 .*already added"):
            fresh.add_many(bad)
        assert fresh.count == 1
    with pytest.raises(ParameterError, match="payload 1"):
        QuicFLAggregator(table, ROUND, 3000).add_many(payloads[:2], [1.0, True])
    with pytest.raises(ParameterError, match="2 payloads but 1 weights"):
        QuicFLAggregator(table, ROUND, 3000).add_many(payloads[:2], [1.0])
