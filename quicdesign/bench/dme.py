"""Distributed mean estimation (DME) benchmark: ``quicdesign bench dme``.

Every figure comes from real payloads on the compressor protocol
(:mod:`quicdesign.compressors`):

- **vNMSE**: mean over trials of ``||x_hat - x||^2 / ||x||^2`` for one client (client 0
  of each trial, decoded alone);
- **NMSE at n clients**: ``||(1/n) sum x_hat_c - x_bar||^2 / ((1/n) sum ||x_c||^2)`` with
  ``n`` independent client vectors of the family (paper notes, section 1);
- **bits per coordinate**: ``8 * len(payload) / d``, averaged over all payloads;
- **encode time**: median over every encoded vector;
- **server time**: median over trials of one aggregation of ``n`` payloads
  (``aggregator`` + ``add`` for each + ``result``).

Timings run with one BLAS thread by default (``blas_threads``): on a shared machine
OpenBLAS thread hand-offs otherwise dominate the Hadamard matmuls and scatter the figures.

Input families: ``lognormal`` (LogNormal(0, 1)), ``normal``, ``student-t`` (3 degrees of
freedom) and ``gradients`` (minibatch gradients of a softmax regression trained on
scikit-learn's bundled digits, :mod:`quicdesign.bench._gradients`). All compressors see
the same input vectors and round seeds.

Two focused measurements complete the sweep: :func:`run_server_scaling` (server time of
EDEN, an inverse transform per client, against QUIC-FL, one inverse transform, and the
least-squares slope of QUIC-FL's server time in ``n``) and :func:`run_cossgd_comparison`
(CosSGD against uniform quantizers; recorded, not asserted).

This module imports only numpy and quicdesign at import time; scikit-learn, matplotlib
(Agg canvas, no pyplot) and tqdm are imported when used.
"""

from __future__ import annotations

import math
import time

import numpy as np

from quicdesign._limits import BENCH_MAX_REPEATS, BENCH_MAX_VALUES
from quicdesign._progress import progress as reporter
from quicdesign._threads import limit_blas_threads
from quicdesign._validate import check_int
from quicdesign.errors import ParameterError

from ._dme_setup import (
    DEFAULT_COMPRESSORS,
    DEFAULTS,
    FAMILIES,
    MAX_BITS,
    MAX_DIM,
    SMALL_DEFAULTS,
    Stats,
    aggregate_payloads,
    bits_parameters,
    build_configs,
    check_families,
    check_int_list,
    derived_seed,
    parse_compressor_spec,
    relative_error,
    resolve_default,
    runnable_families,
    vector_source,
    warm_up,
)
from .cossgd_table import COSSGD_QUANTIZERS, run_cossgd_comparison  # re-exported
from .dme_plots import (  # re-exported
    plot_near_bound,
    plot_nmse_vs_bits,
    plot_server_scaling,
    plot_server_time,
)
from .dme_report import (  # re-exported
    cossgd_markdown,
    server_scaling_markdown,
    sweep_markdown,
    write_csv,
)
from .server_scaling import ServerScaling, run_server_scaling  # re-exported

__all__ = [
    "FAMILIES",
    "DEFAULT_COMPRESSORS",
    "COSSGD_QUANTIZERS",
    "parse_compressor_spec",
    "bits_parameters",
    "ServerScaling",
    "run_dme_benchmark",
    "run_server_scaling",
    "run_cossgd_comparison",
    "sweep_markdown",
    "server_scaling_markdown",
    "cossgd_markdown",
    "plot_nmse_vs_bits",
    "plot_near_bound",
    "plot_server_time",
    "plot_server_scaling",
    "write_csv",
]


def run_dme_benchmark(
    compressors=DEFAULT_COMPRESSORS,
    bits=None,
    dim=None,
    clients=None,
    families=FAMILIES,
    trials=None,
    seed=0,
    progress=None,
    small=False,
    blas_threads=1,
):
    """Measure vNMSE, NMSE, wire bits and timings for compressors on input families.

    Parameters
    ----------
    compressors : sequence of str
        Registry names, optionally with constructor options
        (``"name:key=value,..."``, see :func:`parse_compressor_spec`).
    bits : sequence of int, optional
        Target bits per coordinate, 1..8 (mapped by :func:`bits_parameters`).
    dim : int, optional
        Vector length ``d``.
    clients : sequence of int, optional
        Client counts ``n``; every trial encodes ``max(clients)`` vectors and aggregates
        the first ``n`` of them for each ``n``.
    families : sequence of str
        Input families from :data:`FAMILIES`.
    trials : int, optional
        Independent rounds per configuration and family.
    seed : int
        Seed of the inputs, round seeds and private randomness.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per configuration
        elsewhere.
    small : bool
        Tiny defaults (``d = 1024``, ``n <= 8``, 2 trials) for tests and notebooks;
        explicit arguments still win.
    blas_threads : int or None
        BLAS threads while measuring (needs threadpoolctl); 0 or None keeps the default.

    Returns
    -------
    list of dict
        One row per (compressor configuration, family, ``n``) with keys ``compressor``,
        ``params``, ``bits``, ``family``, ``dim``, ``clients``, ``trials``,
        ``bits_per_coordinate``, ``payload_bytes``, ``vnmse``, ``vnmse_se``,
        ``design_vnmse``, ``nmse``, ``encode_ms``, ``server_ms``, ``unbiased`` and
        ``sums_before_decoding``. The vNMSE, bits and encode figures do not depend on
        ``n`` and repeat across its rows.
    """
    preset = SMALL_DEFAULTS if small else DEFAULTS
    bits_list = check_int_list(resolve_default(bits, "bits", preset), "bits", MAX_BITS)
    dim = check_int(resolve_default(dim, "dim", preset), "dim", 1, MAX_DIM)
    client_counts = check_int_list(resolve_default(clients, "clients", preset), "clients", 2**16)
    trials = check_int(resolve_default(trials, "trials", preset), "trials", 1, BENCH_MAX_REPEATS)
    if client_counts[-1] * dim > BENCH_MAX_VALUES:
        # every client's input vector is held at once
        raise ParameterError(
            f"clients x dim = {client_counts[-1]} x {dim} exceeds {BENCH_MAX_VALUES} values"
        )
    families = runnable_families(check_families(families))
    seed = check_int(seed, "seed", 0)
    specs = (compressors,) if isinstance(compressors, str) else tuple(compressors)
    if not specs:
        raise ParameterError("compressors needs at least one name")
    configs = build_configs(specs, bits_list, dim)
    most_clients = client_counts[-1]
    results = {}
    total = len(families) * trials * len(configs)
    with (
        limit_blas_threads(blas_threads),
        reporter(total, "bench dme", progress, unit="config") as bar,
    ):
        for config in configs:
            warm_up(config, dim, seed)
        for family in families:
            family_code = FAMILIES.index(family)
            draw = vector_source(family, dim, seed)
            for index in range(len(configs)):
                results[(index, family)] = Stats()
            for trial in range(trials):
                round_seed = derived_seed(seed, 2, family_code, trial)
                vectors = np.stack(
                    [
                        draw(np.random.default_rng([seed, 1, family_code, trial, client]))
                        for client in range(most_clients)
                    ]
                )
                truth = _prefix_means(vectors, client_counts)
                for index, config in enumerate(configs):
                    rng = np.random.default_rng([seed, 3, family_code, trial, config.seed_key])
                    _measure_trial(
                        config.compressor,
                        results[(index, family)],
                        vectors,
                        truth,
                        client_counts,
                        round_seed,
                        rng,
                    )
                    bar.update()
    return [
        row
        for index, config in enumerate(configs)
        for family in families
        for row in _rows(config, results[(index, family)], family, dim, client_counts, trials)
    ]


def _prefix_means(vectors, client_counts):
    """Per ``n``: the true mean of the first ``n`` vectors and their mean squared norm."""
    norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    running = np.zeros(vectors.shape[1])
    means, start = {}, 0
    for n in client_counts:
        running += vectors[start:n].sum(axis=0, dtype=np.float64)
        start = n
        means[n] = (running / n, float(norms[:n].mean()))
    return means


def _measure_trial(compressor, stats, vectors, truth, client_counts, round_seed, rng):
    dim = vectors.shape[1]
    payloads = []
    for client, vector in enumerate(vectors):
        start = time.perf_counter()
        payload = compressor.encode(vector, round_seed=round_seed, client_id=client, rng=rng)
        stats.encode_seconds.append(time.perf_counter() - start)
        stats.payload_bytes.append(len(payload))
        payloads.append(payload)
    single = None
    for n in client_counts:
        start = time.perf_counter()
        estimate = aggregate_payloads(compressor, dim, round_seed, payloads[:n])
        stats.server_seconds.setdefault(n, []).append(time.perf_counter() - start)
        mean, mean_norm = truth[n]
        stats.nmse.setdefault(n, []).append(relative_error(estimate, mean, mean_norm))
        if n == 1:  # the one-client aggregate is client 0 decoded alone
            single = estimate
    if single is None:
        single = compressor.decode(payloads[0], dim=dim, round_seed=round_seed)
    first = vectors[0].astype(np.float64)
    stats.vnmse.append(relative_error(single, first, float(np.dot(first, first))))


def _rows(config, stats, family, dim, client_counts, trials):
    vnmse = np.array(stats.vnmse)
    standard_error = float(vnmse.std(ddof=1) / math.sqrt(vnmse.size)) if vnmse.size > 1 else None
    mean_bytes = float(np.mean(stats.payload_bytes))
    properties = config.compressor.properties
    common = {
        "compressor": config.label,
        "params": config.params_text,
        "bits": config.bits,
        "family": family,
        "dim": dim,
        "trials": trials,
        "bits_per_coordinate": 8.0 * mean_bytes / dim,
        "payload_bytes": mean_bytes,
        "vnmse": float(vnmse.mean()),
        "vnmse_se": standard_error,
        "design_vnmse": config.design_vnmse,
        "encode_ms": 1e3 * float(np.median(stats.encode_seconds)),
        "unbiased": bool(properties.unbiased),
        "sums_before_decoding": bool(properties.sums_before_decoding),
    }
    for n in client_counts:
        yield {
            **common,
            "clients": n,
            "nmse": float(np.mean(stats.nmse[n])),
            "server_ms": 1e3 * float(np.median(stats.server_seconds[n])),
        }
