"""Payload mutations shared by the hostile-payload fuzz tests."""

import numpy as np
from hypothesis import strategies as st

from quicdesign import PayloadError

#: One edit: truncate, extend, flip a bit, or rewrite a header byte.
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("header"), st.integers(0, 40), st.integers(0, 255)),
)


def mutate(payload: bytes, edits) -> bytes:
    """Apply a list of MUTATIONS to a payload."""
    data = bytearray(payload)
    for edit in edits:
        if edit[0] == "truncate":
            del data[max(0, len(data) - 1 - edit[1]) :]
        elif edit[0] == "extend":
            data += edit[1]
        elif edit[0] == "flip" and data:
            data[edit[1] % len(data)] ^= 1 << edit[2]
        elif edit[0] == "header" and len(data) > edit[1]:
            data[edit[1]] = edit[2]
    return bytes(data)


def assert_rejected_or_harmless(aggregator, payload) -> None:
    """A mutated payload is refused without a trace, or counts as one more finite client."""
    before = (aggregator.count, aggregator.total_weight, aggregator.result().tobytes())
    try:
        aggregator.add(payload)
    except PayloadError:
        after = (aggregator.count, aggregator.total_weight, aggregator.result().tobytes())
        assert after == before
    else:
        # Only flips inside codes or values survive validation.
        assert aggregator.count == before[0] + 1
        assert np.all(np.isfinite(aggregator.result()))
