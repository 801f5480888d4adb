"""The local top-k baseline: exact framed payload size, error feedback, hostile payloads."""

import numpy as np
import pytest

from quicdesign._envelope import ENVELOPE_SIZE
from quicdesign.errors import PayloadError
from quicdesign.fl import BitCounter, LocalTopK, RawFloats, send_each


def test_local_topk_sends_the_k_largest_and_feeds_back_the_rest():
    codec = LocalTopK(3)
    vector = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 4.0])
    payload = codec.encode(vector, round_seed=0, client_id=7)
    # the envelope, then uint16 indices (dim below 65536) and float32 values
    assert len(payload) == 21 + 3 * (2 + 4) == codec.payload_size(6)
    assert payload[:5] == b"QDTK\x04"
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
    # 40 messages of envelope + 5 entries of 6 bytes; the envelopes are counted apart too
    assert np.all(counter.upload == 40 * 8 * (21 + 5 * 6))
    assert np.all(counter.upload_framing == 40 * 8 * 21)
    # 200 entries stay below 65536: a large dimension switches to uint32 indices
    assert len(LocalTopK(2).encode(np.ones(70_000), round_seed=0, client_id=0)) == 21 + 16
    # k above the dimension sends every entry
    assert len(LocalTopK(9).encode(np.ones(4), round_seed=0, client_id=0)) == 21 + 4 * 6


def test_local_topk_refuses_bad_payloads():
    codec = LocalTopK(2)
    good = codec.encode(np.array([1.0, -2.0, 0.5, 0.0]), round_seed=0, client_id=0)
    head, body = good[:ENVELOPE_SIZE], good[ENVELOPE_SIZE:]
    indices, values = np.frombuffer(body[:4], "<u2"), body[4:]
    raw = RawFloats().encode(np.ones(4), round_seed=0, client_id=0)
    bad = {
        "truncated": good[:-1],
        "oversized": good + b"\0",
        "no envelope": body,
        "foreign magic": b"QDRK" + good[4:],
        "raw floats": raw,
        "version": good[:4] + b"\x03" + good[5:],
        "out of range": head + np.array([1, 4], "<u2").tobytes() + values,
        "repeated": head + np.array([1, 1], "<u2").tobytes() + values,
        "unsorted": head + indices[::-1].tobytes() + values,
        "non-finite": head + body[:4] + np.array([np.nan, 1.0], "<f4").tobytes(),
        "other round": codec.encode(np.ones(4), round_seed=1, client_id=0),
        "other dim": codec.encode(np.ones(5), round_seed=0, client_id=0),
        "other k": LocalTopK(3).encode(np.ones(4), round_seed=0, client_id=0),
    }
    for payload in bad.values():
        with pytest.raises(PayloadError):
            codec.decode(payload, dim=4, round_seed=0)
        with pytest.raises(PayloadError):  # the batch path validates the same way
            codec.decode_batch([good, payload], dim=4, round_seed=0)
    with pytest.raises(PayloadError, match="two local top-k payloads"):
        codec.decode_batch([good, good], dim=4, round_seed=0)
    np.testing.assert_array_equal(codec.decode(good, dim=4, round_seed=0), [1.0, -2.0, 0, 0])
