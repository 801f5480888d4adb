"""The compiled kernels on a CPU without vector gathers: numba compiling for a generic
x86-64 (``NUMBA_CPU_NAME=generic``: SSE2, no AVX) gives the numpy path's bytes and sums,
and the rANS decoder's vector kernel still builds (LLVM lowers its gather and expand load
to plain loads) instead of falling back."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytest.importorskip("numba")

_SCRIPT = r"""
import hashlib, json, warnings
import numpy as np
warnings.simplefilter("error", RuntimeWarning)  # a vector kernel that falls back warns
from quicdesign import QuicFLAggregator, QuicFLEncoder, load_table
from quicdesign._kernels import compiled_kernels
from quicdesign.entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder
from quicdesign.table import load_entropy_table

dim = 40_003
vectors = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)
vectors[1, 7] = 40.0  # far outside the table's support: sent exactly
digests = {"compiled": compiled_kernels() is not None}
cases = [(f"fixed {b}", load_table(b), QuicFLEncoder, QuicFLAggregator) for b in (1, 4, 8)]
cases.append(("entropy 2", load_entropy_table(2), QuicFLEntropyEncoder, QuicFLEntropyAggregator))
for name, table, encoder_type, aggregator_type in cases:
    encoder = encoder_type(table, round_seed=5)
    payloads = [encoder.encode(v, c, rng=np.random.default_rng(c)) for c, v in enumerate(vectors)]
    aggregator = aggregator_type(table, 5, dim)
    aggregator.add_many(payloads, [1.0, 0.5, 2.0])
    digests[name] = [
        hashlib.sha256(b"".join(payloads)).hexdigest(),
        hashlib.sha256(aggregator.result().tobytes()).hexdigest(),
    ]
print(json.dumps(digests))
"""


def _run(tmp_path, **environment):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), **environment}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 CPU names")
def test_kernels_compiled_for_a_generic_cpu_match_the_numpy_path(tmp_path):
    reference = _run(tmp_path, QUICDESIGN_KERNELS="numpy")
    generic = _run(tmp_path, QUICDESIGN_KERNELS="auto", NUMBA_CPU_NAME="generic")
    assert generic.pop("compiled") and not reference.pop("compiled")
    assert generic == reference
