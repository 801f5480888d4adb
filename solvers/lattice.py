"""Design of dithered-lattice code models (``quicdesign.lattice.LatticeCodeModel``).

For unit-variance Gaussian coordinates, the decoded ``z + e`` (``e`` uniform on the scaled
Voronoi cell, per-coordinate variance ``G det^(2/n) s^2``) is modelled per coordinate by a
Gaussian of variance ``tau^2 = 1 + G det^(2/n) s^2`` (the variance of ``z + e``), restricted
to the lattice and coded by the chain rule of :mod:`quicdesign.lattice`. The offset of a
candidate is represented by the centre of its bin. The step ``s`` is found with Brent's
method so that the model's code length, measured by Monte Carlo with the runtime's own
probability functions (:func:`quicdesign.lattice.block_code_lengths`, fixed seed, so the
rate is a deterministic function of ``s``), plus ``overhead_bits`` hits ``target_bits``.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import optimize

import quicdesign
from quicdesign._validate import check_int, check_real
from quicdesign.lattice import (
    LatticeCodeModel,
    block_code_lengths,
    lattice_spec,
    nearest_lattice_point,
)

__all__ = ["gaussian_lattice_model", "lattice_rate", "design_lattice_model"]

#: Candidates up to this many model standard deviations are in range; beyond, escapes.
RANGE_SIGMAS = 7.0


def gaussian_lattice_model(lattice, scale, bins=64, manifest=None) -> LatticeCodeModel:
    """The Gaussian product model of step ``scale`` (variance ``1 + G det^(2/n) s^2``)."""
    spec = lattice_spec(lattice)
    bins = check_int(bins, "bins", 1, 1 << 10)
    variance = 1.0 + spec.error_coefficient * scale**2
    half = math.ceil(RANGE_SIGMAS * math.sqrt(variance) / scale) + 2
    symbols = 4 * math.ceil(half / 2)
    k = np.arange(symbols) - symbols // 2
    centres = (np.arange(bins) + 0.5) / bins
    values = scale * (k[None, :] + centres[:, None])
    weights = np.exp(-0.5 * values**2 / variance)
    class_mass = np.array(
        [[math.fsum(row[0::2]), math.fsum(row[1::2])] for row in weights], dtype=np.float64
    )
    return LatticeCodeModel(spec.name, scale, weights, class_mass, manifest)


def _samples(spec, count, seed):
    """``count`` Gaussian blocks and dithers as columns ``(n, count)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(spec.block, count))
    dither = rng.uniform(0.0, 2.0, size=(spec.block, count))
    return z, dither


def lattice_rate(model, samples=100_000, seed=0):
    """Monte Carlo code length (bits per coordinate) and vNMSE of ``model`` on N(0, 1).

    Returns
    -------
    (float, float)
        Mean model code length per coordinate and the measured per-coordinate error.
    """
    spec = model.spec
    z, dither = _samples(spec, samples, seed)
    y, coset = nearest_lattice_point(z / model.scale + dither, spec)
    decoded = model.scale * (y + 0.5 * coset - dither)
    bits = block_code_lengths(model, dither, y, coset)
    return float(np.mean(bits)) / spec.block, float(np.mean((decoded - z) ** 2))


def design_lattice_model(
    target_bits, lattice="e8", *, bins=64, overhead_bits=0.0, samples=100_000, seed=0
):
    """Design a code model whose coded rate plus ``overhead_bits`` is ``target_bits``.

    Parameters
    ----------
    target_bits : float
        Wire bits per coordinate to hit, in [0.5, 8].
    lattice : {"e8", "d4"}
    bins : int
        Offset bins (a power of two).
    overhead_bits : float
        Per-coordinate header/stream overhead to budget for (0..0.5).
    samples : int
        Monte Carlo blocks per rate evaluation.
    seed : int
        Monte Carlo seed.

    Returns
    -------
    quicdesign.lattice.LatticeCodeModel
        With ``manifest["coding"]`` (designed rate) and ``manifest["quality"]`` (vNMSE).
    """
    target_bits = check_real(target_bits, "target_bits", 0.5, 8.0)
    overhead_bits = check_real(overhead_bits, "overhead_bits", 0.0, 0.5)
    samples = check_int(samples, "samples", 1000)
    spec = lattice_spec(lattice)
    began = time.perf_counter()
    goal = target_bits - overhead_bits

    def excess(log_scale):
        model = gaussian_lattice_model(spec.name, math.exp(log_scale), bins)
        return lattice_rate(model, samples, seed)[0] - goal

    log_scale = optimize.brentq(excess, math.log(0.02), math.log(20.0), xtol=1e-7)
    scale = math.exp(log_scale)
    model = gaussian_lattice_model(spec.name, scale, bins)
    rate, measured = lattice_rate(model, samples, seed + 1)  # a fresh sample for the record
    manifest = {
        "parameters": {"bins": model.bins, "symbols": model.num_symbols},
        "quality": {
            "vnmse": model.vnmse,
            "vnmse_definition": "G det^(2/n) s^2: exact per-coordinate error on unit-RMS input",
            "measured_vnmse": measured,
        },
        "coding": {
            "kind": "lattice",
            "coder": "constriction ANS: coset and parity bits (Bernoulli), "
            "k per (offset bin, parity) (categorical)",
            "expected_bits": rate + overhead_bits,
            "model_bits": rate,
            "overhead_bits": overhead_bits,
            "model_variance": 1.0 + spec.error_coefficient * scale**2,
        },
        "design": {
            "objective": "Gaussian product model restricted to the lattice; Monte Carlo rate",
            "operating_point": {"target_bits": target_bits, "overhead_bits": overhead_bits},
            "samples": samples,
            "seed": seed,
            "solver_versions": {"quicdesign": quicdesign.__version__, "numpy": np.__version__},
            "wall_time_s": round(time.perf_counter() - began, 3),
        },
    }
    return gaussian_lattice_model(spec.name, scale, bins, manifest)


def write_shipped_models(folder, rates=(1, 2, 3, 4), lattices=("e8", "d4"), overhead_bits=0.009):
    """Design and save the shipped models, ``<folder>/<lattice>-rate<bits>``.

    ``overhead_bits = 0.009`` is the measured header, norm, count and digest cost of a
    ``2**16``-long vector (69 bytes with 8 rotation chunks) plus ANS termination.
    """
    from pathlib import Path

    folder = Path(folder)
    written = []
    for lattice in lattices:
        for rate in rates:
            model = design_lattice_model(rate, lattice, overhead_bits=overhead_bits)
            written.append(model.save(folder / f"{lattice}-rate{rate}"))
            print(f"{lattice} rate {rate}: step {model.scale:.6f} vNMSE {model.vnmse:.6f}")
    return written


if __name__ == "__main__":  # python -m solvers.lattice [folder]
    import sys

    write_shipped_models(sys.argv[1] if len(sys.argv) > 1 else "tables/lattice")
