"""The local top-k baseline: exact payload size, error feedback, hostile payloads."""

import numpy as np
import pytest

from quicdesign.errors import PayloadError
from quicdesign.fl import BitCounter, LocalTopK, send_each


def test_local_topk_sends_the_k_largest_and_feeds_back_the_rest():
    codec = LocalTopK(3)
    vector = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 4.0])
    payload = codec.encode(vector, round_seed=0, client_id=7)
    assert len(payload) == 3 * (2 + 4)  # uint16 indices below 65536, float32 values
    decoded = codec.decode(payload, dim=6, round_seed=0)
    np.testing.assert_array_equal(decoded, [0, -5.0, 0, 3.0, 0, 4.0])
    # the residual (0.1, 0.2, -0.3) joins the next vector of the same client only
    again = codec.decode(
        codec.encode(np.array([0.0, 0, 0.2, 0, 0, 0]), round_seed=1, client_id=7),
        dim=6,
        round_seed=1,
    )
    np.testing.assert_allclose(again, [0.1, 0, 0.4, 0, -0.3, 0], rtol=1e-6)
    other = codec.decode(
        codec.encode(np.array([0.0, 0, 0.2, 0, 0, 1]), round_seed=1, client_id=8),
        dim=6,
        round_seed=1,
    )
    np.testing.assert_allclose(other[[2, 5]], [0.2, 1.0], rtol=1e-6)


def test_error_feedback_loses_nothing_over_rounds():
    rng = np.random.default_rng(0)
    codec = LocalTopK(5)
    counter = BitCounter(2)
    inputs = rng.normal(size=(40, 2, 200))
    sent = np.zeros((2, 200))
    for t, rows in enumerate(inputs):
        sent += send_each(codec, rows, np.arange(2), round_seed=t, rng=rng, counter=counter)
    # what was sent plus what is still held back is everything that went in
    held = np.array([codec._residuals[c] for c in range(2)])
    np.testing.assert_allclose(sent + held, inputs.sum(axis=0), atol=1e-4)
    assert np.all(counter.upload == 40 * 8 * 5 * 6)
    # 200 entries stay below 65536: a large dimension switches to uint32 indices
    assert len(LocalTopK(2).encode(np.ones(70_000), round_seed=0, client_id=0)) == 16


def test_local_topk_refuses_bad_payloads():
    codec = LocalTopK(2)
    good = codec.encode(np.array([1.0, -2.0, 0.5, 0.0]), round_seed=0, client_id=0)
    indices = np.frombuffer(good[:4], "<u2")
    values = good[4:]
    bad = {
        "length": good[:-1],
        "out of range": np.array([1, 4], "<u2").tobytes() + values,
        "repeated": np.array([1, 1], "<u2").tobytes() + values,
        "unsorted": indices[::-1].tobytes() + values,
        "non-finite": good[:4] + np.array([np.nan, 1.0], "<f4").tobytes(),
    }
    for payload in bad.values():
        with pytest.raises(PayloadError):
            codec.decode(payload, dim=4, round_seed=0)
