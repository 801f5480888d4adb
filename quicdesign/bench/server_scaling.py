"""Server scaling: EDEN (one inverse transform per client) against QUIC-FL (one per round)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from quicdesign._progress import progress as reporter
from quicdesign._threads import limit_blas_threads
from quicdesign._validate import check_int

from ._dme_setup import (
    MAX_BITS,
    MAX_DIM,
    SCALING,
    SMALL_SCALING,
    aggregate_payloads,
    build_configs,
    check_int_list,
    derived_seed,
    resolve_default,
    warm_up,
)
from .transform import _median_seconds


@dataclass
class ServerScaling:
    """Server time against the number of clients (see :func:`run_server_scaling`).

    Attributes
    ----------
    rows : list of dict
        ``compressor``, ``bits``, ``dim``, ``clients``, ``server_ms``, ``ms_per_client``.
    fits : dict
        Per compressor: least-squares ``slope_ms_per_client``, ``intercept_ms``, ``r2``.
    ratio : float or None
        EDEN's server time over QUIC-FL's at the largest ``n`` (when both ran).
    """

    dim: int
    bits: int
    clients: tuple
    repeats: int
    blas_threads: int | None
    rows: list
    fits: dict
    ratio: float | None


def _least_squares(counts, milliseconds):
    counts, milliseconds = np.asarray(counts, float), np.asarray(milliseconds, float)
    if counts.size < 2:
        return {"slope_ms_per_client": None, "intercept_ms": None, "r2": None}
    slope, intercept = np.polyfit(counts, milliseconds, 1)
    residual = milliseconds - (slope * counts + intercept)
    spread = float(np.sum((milliseconds - milliseconds.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / spread if spread > 0 else None
    return {"slope_ms_per_client": float(slope), "intercept_ms": float(intercept), "r2": r2}


def run_server_scaling(
    dim=None,
    bits=None,
    clients=None,
    repeats=None,
    seed=0,
    progress=None,
    small=False,
    compressors=("quicfl", "eden"),
    blas_threads=1,
):
    """Server aggregation time of QUIC-FL (one inverse transform) and EDEN (one per client).

    Defaults: ``d = 2**18``, ``b = 4``, ``n = 1, 2, ..., 64``, median of 5 timed runs
    (``small``: ``d = 2**12``, ``n <= 8``, one run), one BLAS thread (``blas_threads``,
    see :func:`run_dme_benchmark`). Inputs are LogNormal(0, 1) vectors. ``progress``:
    False is silent; otherwise (default) a bar on a terminal, one line per configuration
    elsewhere.

    Returns
    -------
    ServerScaling
        Rows per compressor and ``n``, least-squares fits of time against ``n`` and the
        EDEN / QUIC-FL ratio at the largest ``n``.
    """
    preset = SMALL_SCALING if small else SCALING
    dim = check_int(resolve_default(dim, "dim", preset), "dim", 1, MAX_DIM)
    bits = check_int(resolve_default(bits, "bits", preset), "bits", 1, MAX_BITS)
    client_counts = check_int_list(resolve_default(clients, "clients", preset), "clients", 2**16)
    repeats = check_int(resolve_default(repeats, "repeats", preset), "repeats", 1)
    seed = check_int(seed, "seed", 0)
    configs = build_configs(compressors, (bits,), dim)
    most_clients = client_counts[-1]
    round_seed = derived_seed(seed, 4)
    vectors = [
        np.random.default_rng([seed, 5, client]).lognormal(0.0, 1.0, dim).astype(np.float32)
        for client in range(most_clients)
    ]
    rows, fits = [], {}
    total = len(configs) * (1 + len(client_counts))
    with (
        limit_blas_threads(blas_threads),
        reporter(total, "server scaling", progress, unit="config") as bar,
    ):
        for config in configs:
            warm_up(config, dim, seed)
        for config in configs:
            compressor = config.compressor
            rng = np.random.default_rng([seed, 6, config.seed_key])
            payloads = [
                compressor.encode(v, round_seed=round_seed, client_id=c, rng=rng)
                for c, v in enumerate(vectors)
            ]
            bar.update()
            timings = []
            for n in client_counts:
                aggregate = functools.partial(
                    aggregate_payloads, compressor, dim, round_seed, payloads[:n]
                )
                milliseconds = 1e3 * _median_seconds(aggregate, repeats)
                timings.append(milliseconds)
                rows.append(
                    {
                        "compressor": config.label,
                        "bits": bits,
                        "dim": dim,
                        "clients": n,
                        "repeats": repeats,
                        "server_ms": milliseconds,
                        "ms_per_client": milliseconds / n,
                    }
                )
                bar.update()
            fits[config.label] = _least_squares(client_counts, timings)
    at_most = {r["compressor"]: r["server_ms"] for r in rows if r["clients"] == most_clients}
    ratio = at_most["eden"] / at_most["quicfl"] if {"eden", "quicfl"} <= at_most.keys() else None
    return ServerScaling(dim, bits, client_counts, repeats, blas_threads, rows, fits, ratio)
