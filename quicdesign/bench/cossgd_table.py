"""CosSGD against uniform quantizers at 1-8 bits (recorded, not asserted)."""

from __future__ import annotations

import zlib

import numpy as np

from quicdesign._limits import BENCH_MAX_REPEATS
from quicdesign._progress import progress as reporter
from quicdesign._validate import check_int
from quicdesign.compressors import make_compressor

from ._dme_setup import (
    COSSGD_FAMILIES,
    COSSGD_TENSOR_DIM,
    DEFAULTS,
    FAMILIES,
    MAX_BITS,
    MAX_DIM,
    SMALL_COSSGD_TENSOR_DIM,
    SMALL_DEFAULTS,
    check_families,
    check_int_list,
    relative_error,
    resolve_default,
    vector_source,
)

#: (column label, registry name, fixed options) of the CosSGD comparison.
COSSGD_QUANTIZERS = (
    ("cosine", "cossgd", {}),
    ("cosine-clip0.01", "cossgd", {"clip": 0.01}),
    ("cosine-unbiased", "cossgd", {"rounding": "unbiased"}),
    ("symmetric-uniform", "qsgd", {"norm": "max"}),
    ("minmax-uniform", "sq", {}),
    ("hadamard-sq", "hadamard", {}),
)


def _cossgd_params(name, options, bits):
    if name == "qsgd":
        # s levels each side of zero: 2s + 1 = 2**b - 1 levels fit in b bits only for b >= 2
        return None if bits < 2 else {**options, "levels": 2 ** (bits - 1) - 1}
    return {**options, "bits": bits}


def run_cossgd_comparison(
    bits=range(1, 9),
    dims=None,
    families=COSSGD_FAMILIES,
    trials=None,
    seed=0,
    progress=None,
    small=False,
):
    """Per-vector NMSE of CosSGD against uniform quantizers at each bit width.

    Quantizers (:data:`COSSGD_QUANTIZERS`): CosSGD with deterministic rounding (the
    paper's default) without and with 1% clipping, CosSGD's unbiased toolkit mode,
    a symmetric uniform grid on ``[-max|x|, max|x|]`` (QSGD with ``norm="max"`` and
    ``2**(b-1) - 1`` levels each side, stochastic rounding; not available at ``b = 1``),
    min-max stochastic quantization and Hadamard + min-max SQ. The figures are recorded
    as measured; nothing is asserted about which quantizer wins.

    Parameters
    ----------
    bits : sequence of int
        Bit widths, 1..8.
    dims : sequence of int, optional
        Tensor sizes; default a small tensor (512 entries) and ``2**16``. Each
        ``(family, dim)`` averages over ``max(trials, min(256, max(dims) // dim))``
        vectors, so small tensors get about as many coordinates as the largest.
    families : sequence of str
        Input families (default Gaussian and Student-t(3)).
    trials : int, optional
        Minimum number of vectors per ``(family, dim)``.
    seed : int
        Seed of the inputs and rounding.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per configuration
        elsewhere.
    small : bool
        Tiny defaults.

    Returns
    -------
    list of dict
        One row per (family, dim, bits, quantizer): ``family``, ``dim``, ``bits``,
        ``quantizer``, ``vectors``, ``nmse`` (None where not available),
        ``bits_per_coordinate``, ``unbiased``.
    """
    bits_list = check_int_list(bits, "bits", MAX_BITS)
    if dims is None:
        large = (SMALL_DEFAULTS if small else DEFAULTS)["dim"]
        dims = (SMALL_COSSGD_TENSOR_DIM if small else COSSGD_TENSOR_DIM, large)
    dims = check_int_list(dims, "dim", MAX_DIM)
    families = check_families(families)
    trials = check_int(
        resolve_default(trials, "trials", SMALL_DEFAULTS if small else DEFAULTS),
        "trials",
        1,
        BENCH_MAX_REPEATS,
    )
    seed = check_int(seed, "seed", 0)
    rows = []
    cells = len(families) * len(dims) * len(bits_list)
    with reporter(cells, "cossgd table", progress, unit="config") as bar:
        for family in families:
            family_code = FAMILIES.index(family)
            for dim in dims:
                draw = vector_source(family, dim, seed)
                count = max(trials, min(256, dims[-1] // dim))
                vectors = [
                    draw(np.random.default_rng([seed, 7, family_code, dim, index]))
                    for index in range(count)
                ]
                for bits in bits_list:
                    rows.extend(_cossgd_cell(family, dim, bits, vectors, seed))
                    bar.update()
    return rows


def _cossgd_cell(family, dim, bits, vectors, seed):
    for quantizer, name, options in COSSGD_QUANTIZERS:
        params = _cossgd_params(name, options, bits)
        row = {
            "family": family,
            "dim": dim,
            "bits": bits,
            "quantizer": quantizer,
            "vectors": len(vectors),
            "nmse": None,
            "bits_per_coordinate": None,
            "unbiased": None,
        }
        if params is not None:
            compressor = make_compressor(name, **params)
            rng = np.random.default_rng([seed, 8, dim, bits, zlib.crc32(quantizer.encode())])
            errors, sizes = [], []
            for index, vector in enumerate(vectors):
                payload = compressor.encode(vector, round_seed=index, client_id=0, rng=rng)
                decoded = compressor.decode(payload, dim=dim, round_seed=index)
                exact = vector.astype(np.float64)
                errors.append(relative_error(decoded, exact, float(np.dot(exact, exact))))
                sizes.append(len(payload))
            row.update(
                nmse=float(np.mean(errors)),
                bits_per_coordinate=8.0 * float(np.mean(sizes)) / dim,
                unbiased=bool(compressor.properties.unbiased),
            )
        yield row
