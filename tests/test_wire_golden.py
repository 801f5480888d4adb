"""Payload bytes do not depend on the CPU: the golden vector of docs/wire-format.md.

The encoder runs in fresh subprocesses under several ``OPENBLAS_CORETYPE`` kernels; every
run must produce the sha256 published in the docs. A control run shows that the BLAS
transform (``fwht``) *does* change with the kernel here, so the check is not vacuous.
"""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ._wire_layout import to_legacy

ROOT = Path(__file__).resolve().parent.parent
CORETYPES = ("", "Haswell", "Prescott", "Sandybridge")

# The golden vector, as specified in docs/wire-format.md ("Golden payload vectors").
ENCODE = """
import hashlib, sys
import numpy as np
from quicdesign import QuicFLEncoder, load_table

def golden_input(d, dtype):
    j = np.arange(d, dtype=np.uint64)
    words = (j * np.uint64(2654435761)) % np.uint64(2**32)
    return (words.astype(np.float64) / 2**32 - 0.5).astype(dtype)

table = load_table(2, shared_bits=5, tail_prob=1 / 512)
for dtype, d in (("float32", 2**20), ("float64", 300_001)):
    payload = QuicFLEncoder(table, 2026).encode(
        golden_input(d, dtype), 7, rng=np.random.default_rng(11)
    )
    print(dtype, d, len(payload), hashlib.sha256(payload).hexdigest())
"""

EVERY_SCHEME = """
import hashlib
import numpy as np
from quicdesign.compressors import COMPRESSORS, make_compressor
x = np.random.default_rng(3).lognormal(size=70_000).astype(np.float32)
for name in sorted(COMPRESSORS):
    payload = make_compressor(name).encode(x, round_seed=5, client_id=1, rng=2)
    print(name, hashlib.sha256(payload).hexdigest())
"""

CONTROL = """
import hashlib
import numpy as np
from quicdesign.rotation import fwht
x = np.random.default_rng(0).standard_normal((8, 2**14)).astype(np.float32)
print(hashlib.sha256(fwht(x).tobytes()).hexdigest())
"""


def _run(code, coretype, kernels="auto"):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    env["QUICDESIGN_KERNELS"] = kernels
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _published(legacy=False):
    text = (ROOT / "docs" / "wire-format.md").read_text(encoding="utf-8")
    prefix = r"\| QDQF 2 " if legacy else ""
    pattern = rf"^{prefix}\| (float\d+) \| (\d+) \| (\d+) \| `([0-9a-f]{{64}})` \|$"
    rows = re.findall(pattern, text, re.M)
    assert len(rows) == 2, "golden rows missing from docs/wire-format.md"
    return "\n".join(" ".join(row) for row in rows)


@pytest.mark.slow
def test_payload_bytes_match_the_golden_vector_under_every_blas_kernel():
    controls = {_run(CONTROL, core) for core in CORETYPES}
    if len(controls) == 1:
        pytest.skip("OPENBLAS_CORETYPE changes nothing here (not a DYNAMIC_ARCH OpenBLAS)")
    expected = _published()
    for core in CORETYPES:
        assert _run(ENCODE, core) == expected, f"OPENBLAS_CORETYPE={core or 'native'}"


@pytest.mark.slow
def test_numpy_and_compiled_kernels_give_the_golden_vector():
    expected = _published()
    for kernels in ("numpy", "auto"):
        assert _run(ENCODE, "", kernels) == expected, f"QUICDESIGN_KERNELS={kernels}"


@pytest.mark.slow
def test_every_scheme_encodes_the_same_bytes_under_every_blas_kernel():
    if len({_run(CONTROL, core) for core in CORETYPES[:2]}) == 1:
        pytest.skip("OPENBLAS_CORETYPE changes nothing here (not a DYNAMIC_ARCH OpenBLAS)")
    outputs = {core: _run(EVERY_SCHEME, core) for core in ("", "Haswell", "Prescott")}
    assert len(set(outputs.values())) == 1, outputs


def test_pre_envelope_golden_payloads_are_read_to_the_same_mean():
    """The published QDQF version 2 payloads (the golden vectors before the envelope) are
    the current payloads with the old 32-byte header; the legacy reader aggregates them to
    exactly the current payload's result."""
    from quicdesign import QuicFLAggregator, QuicFLEncoder, load_table

    table = load_table(2, shared_bits=5, tail_prob=1 / 512)
    namespace = {}
    exec(ENCODE.split("table = ")[0], namespace)  # golden_input, as specified
    old_rows = []
    for dtype, d in (("float32", 2**20), ("float64", 300_001)):
        x = namespace["golden_input"](d, dtype)
        payload = QuicFLEncoder(table, 2026).encode(x, 7, rng=np.random.default_rng(11))
        legacy = to_legacy(payload)
        old_rows.append(f"{dtype} {d} {len(legacy)} {hashlib.sha256(legacy).hexdigest()}")
        results = []
        for candidate in (payload, legacy):
            aggregator = QuicFLAggregator(table, 2026, d)
            aggregator.add(candidate)
            results.append(aggregator.result().tobytes())
        assert results[0] == results[1], dtype
    assert "\n".join(old_rows) == _published(legacy=True)
