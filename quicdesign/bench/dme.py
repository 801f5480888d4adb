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

import argparse
import csv
import functools
import inspect
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quicdesign._argtypes import add_progress_option
from quicdesign._progress import limit_blas_threads
from quicdesign._progress import progress as reporter
from quicdesign._validate import check_int, writable_dir
from quicdesign.compressors import COMPRESSORS, make_compressor
from quicdesign.errors import ParameterError, QuicDesignError

from .transform import _median_seconds

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
    "plot_server_time",
    "plot_server_scaling",
    "write_csv",
    "register",
]

FAMILIES = ("lognormal", "normal", "student-t", "gradients")
DEFAULT_COMPRESSORS = (
    "quicfl",
    "quicfl-ec",
    "eden",
    "hadamard",
    "qsgd",
    "kashin",
    "countsketch",
    "cossgd",
    "sign",
    "randk",
)
# Names used in the paper notes and issue that differ from the registry's short names.
_ALIASES = {"hadamard-sq": "hadamard", "kashin-sq": "kashin", "count-sketch": "countsketch"}

_DEFAULTS = {"dim": 2**16, "bits": (1, 2, 3, 4), "clients": (1, 4, 16), "trials": 3}
_SMALL_DEFAULTS = {"dim": 2**10, "bits": (1, 2, 3, 4), "clients": (1, 4, 8), "trials": 2}
_SCALING = {"dim": 2**18, "bits": 4, "clients": (1, 2, 4, 8, 16, 32, 64), "repeats": 5}
_SMALL_SCALING = {"dim": 2**12, "bits": 4, "clients": (1, 2, 4, 8), "repeats": 1}
_COSSGD_TENSOR_DIM = 512
_SMALL_COSSGD_TENSOR_DIM = 64
_COSSGD_FAMILIES = ("normal", "student-t")
_MAX_BITS = 8  # the shipped QUIC-FL tables and EDEN's Lloyd-Max levels stop here
_MAX_DIM = 2**28


# --------------------------------------------------------------------------- validation


def _int_list(values, name, high=None):
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    checked = sorted({check_int(v, name, 1, high) for v in values})
    if not checked:
        raise ParameterError(f"{name} needs at least one value")
    return tuple(checked)


def _check_families(families):
    families = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ParameterError(
            f"unknown input family {unknown[0] if unknown else '(none)'!r}; "
            f"choose from {', '.join(FAMILIES)}"
        )
    return tuple(dict.fromkeys(families))


def _resolve(value, key, preset):
    return preset[key] if value is None else value


# --------------------------------------------------------------------------- compressors


def _parse_value(text):
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_compressor_spec(spec):
    """Split ``"name"`` or ``"name:key=value,key=value"`` into a registry name and overrides.

    Values are read as int, float, bool or ``none`` when they look like one, else kept as
    strings; e.g. ``"kashin:variant=tf"`` or ``"cossgd:clip=0.01"``.
    """
    name, _, options = str(spec).partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in COMPRESSORS:
        raise ParameterError(
            f"unknown compressor {name!r}; available: {', '.join(sorted(COMPRESSORS))}"
        )
    overrides = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ParameterError(f"compressor option {item!r} in {spec!r} is not key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return name, overrides


def bits_parameters(name, bits, dim, overrides=None):
    """Constructor parameters that give compressor ``name`` about ``bits`` bits per coordinate.

    QSGD uses ``s = 2**(bits-1) - 1`` levels (``ceil(log2(2s+1)) = bits`` bits on the wire;
    ``bits = 1`` falls back to ``s = 1``, which costs 2 bits). Count-Sketch uses
    ``ceil(bits d / (32 rows))`` float32 buckets per row and rand-k keeps ``bits / 32`` of
    the coordinates, so both send about ``bits`` bits per coordinate. Sign and DRIVE are
    1-bit schemes and ignore ``bits``. Other compressors get ``bits`` when their
    constructor takes it. The measured bits per coordinate are always reported.
    """
    overrides = overrides or {}
    if name == "qsgd":
        return {"levels": max(1, 2 ** (bits - 1) - 1)}
    if name == "countsketch":
        rows = overrides.get("rows", 3)
        rows = rows if isinstance(rows, int) and rows > 0 else 3
        return {"columns": max(1, math.ceil(bits * dim / (32 * rows)))}
    if name == "randk":
        if "k" in overrides or "fraction" in overrides:
            return {}
        return {"fraction": min(1.0, bits / 32)}
    if name in ("sign", "drive"):
        return {}
    try:
        accepts_bits = "bits" in inspect.signature(COMPRESSORS[name]).parameters
    except (TypeError, ValueError):  # a constructor without an inspectable signature
        accepts_bits = False
    return {"bits": bits} if accepts_bits else {}


@dataclass
class _Config:
    """One compressor configuration of a run."""

    label: str
    name: str
    bits: int
    params: dict
    compressor: object
    seed_key: int
    design_vnmse: float | None = None

    @property
    def params_text(self):
        return ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


@dataclass
class _Stats:
    """Measurements of one configuration on one family, accumulated over trials."""

    vnmse: list = field(default_factory=list)
    payload_bytes: list = field(default_factory=list)
    encode_seconds: list = field(default_factory=list)
    nmse: dict = field(default_factory=dict)
    server_seconds: dict = field(default_factory=dict)


def _design_vnmse(compressor):
    """The vNMSE the compressor is designed for (Gaussian model), when it declares one."""
    resolve_table = getattr(compressor, "resolved_table", None)
    if callable(resolve_table):
        return resolve_table().vnmse
    value = getattr(compressor, "expected_vnmse", None)
    return float(value) if isinstance(value, (int, float)) else None


#: Compressors that need an optional module: name -> (module, extra).
_OPTIONAL_NEEDS = {"quicfl-ec": ("constriction", "entropy")}


def _unavailable(name) -> str | None:
    """Why compressor ``name`` cannot run here (a missing optional module), or None."""
    import importlib.util

    module, extra = _OPTIONAL_NEEDS.get(name, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"needs {module} (pip install 'quicdesign[{extra}]')"


def _build_configs(specs, bits_list, dim):
    configs, seen = [], set()
    for spec in specs:
        name, overrides = parse_compressor_spec(spec)
        label = str(spec).strip()
        reason = _unavailable(name)
        if reason is not None:
            print(f"bench dme: skipping {label}: {reason}", file=sys.stderr, flush=True)
            continue
        for bits in bits_list:
            params = {**bits_parameters(name, bits, dim, overrides), **overrides}
            key = (name, tuple(sorted((k, repr(v)) for k, v in params.items())))
            if key in seen:  # e.g. sign at every b, or QSGD's s = 1 at b = 1 and 2
                continue
            seen.add(key)
            nominal = params["bits"] if isinstance(params.get("bits"), int) else bits
            try:
                compressor = make_compressor(name, **params)
            except TypeError as exc:
                raise ParameterError(f"compressor {label!r}: {exc}") from None
            seed_key = zlib.crc32(f"{name}|{key[1]}".encode())
            configs.append(_Config(label, name, nominal, params, compressor, seed_key))
    if not configs:
        raise ParameterError("none of the requested compressors can run here (notes above)")
    return configs


def _warm_up(config, dim, seed):
    """Encode and decode once: validates the parameters and fills one-time caches."""
    rng = np.random.default_rng([seed, 0x5741524D])
    vector = rng.standard_normal(dim).astype(np.float32)
    try:
        payload = config.compressor.encode(vector, round_seed=0, client_id=0, rng=rng)
        config.compressor.decode(payload, dim=dim, round_seed=0)
        config.design_vnmse = _design_vnmse(config.compressor)
    except QuicDesignError as exc:
        raise ParameterError(f"compressor {config.label!r} ({config.params_text}): {exc}") from None


# --------------------------------------------------------------------------- inputs


def _vector_source(family, dim, seed):
    """A function ``rng -> float32 vector of length dim`` drawing from ``family``."""
    if family == "lognormal":
        return lambda rng: rng.lognormal(0.0, 1.0, dim).astype(np.float32)
    if family == "normal":
        return lambda rng: rng.standard_normal(dim, dtype=np.float32)
    if family == "student-t":
        return lambda rng: rng.standard_t(3, dim).astype(np.float32)
    from ._gradients import digits_gradients

    return digits_gradients(dim, seed).sample


def _derived_seed(*keys):
    """A 64-bit round seed from integer keys (the same for every compressor)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def _relative_error(estimate, truth, denominator):
    difference = estimate - truth
    return float(np.dot(difference, difference) / denominator)


# --------------------------------------------------------------------------- the sweep


def run_dme_benchmark(
    compressors=DEFAULT_COMPRESSORS,
    bits=None,
    dim=None,
    clients=None,
    families=FAMILIES,
    trials=None,
    seed=0,
    progress=False,
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
    progress : bool
        Show a tqdm progress bar.
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
    preset = _SMALL_DEFAULTS if small else _DEFAULTS
    bits_list = _int_list(_resolve(bits, "bits", preset), "bits", _MAX_BITS)
    dim = check_int(_resolve(dim, "dim", preset), "dim", 1, _MAX_DIM)
    client_counts = _int_list(_resolve(clients, "clients", preset), "clients", 2**16)
    trials = check_int(_resolve(trials, "trials", preset), "trials", 1)
    families = _check_families(families)
    seed = check_int(seed, "seed", 0)
    specs = (compressors,) if isinstance(compressors, str) else tuple(compressors)
    if not specs:
        raise ParameterError("compressors needs at least one name")
    configs = _build_configs(specs, bits_list, dim)
    most_clients = client_counts[-1]
    results = {}
    total = len(families) * trials * len(configs)
    with (
        limit_blas_threads(blas_threads),
        reporter(total, "bench dme", progress, unit="config") as bar,
    ):
        for config in configs:
            _warm_up(config, dim, seed)
        for family in families:
            family_code = FAMILIES.index(family)
            draw = _vector_source(family, dim, seed)
            for index in range(len(configs)):
                results[(index, family)] = _Stats()
            for trial in range(trials):
                round_seed = _derived_seed(seed, 2, family_code, trial)
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


def _aggregate(compressor, dim, round_seed, payloads):
    """Server work for one round: a fresh aggregator, every payload added, the mean."""
    aggregator = compressor.aggregator(dim, round_seed)
    for payload in payloads:
        aggregator.add(payload)
    return aggregator.result()


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
        estimate = _aggregate(compressor, dim, round_seed, payloads[:n])
        stats.server_seconds.setdefault(n, []).append(time.perf_counter() - start)
        mean, mean_norm = truth[n]
        stats.nmse.setdefault(n, []).append(_relative_error(estimate, mean, mean_norm))
        if n == 1:  # the one-client aggregate is client 0 decoded alone
            single = estimate
    if single is None:
        single = compressor.decode(payloads[0], dim=dim, round_seed=round_seed)
    first = vectors[0].astype(np.float64)
    stats.vnmse.append(_relative_error(single, first, float(np.dot(first, first))))


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


# --------------------------------------------------------------------------- server scaling


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
    progress=False,
    small=False,
    compressors=("quicfl", "eden"),
    blas_threads=1,
):
    """Server aggregation time of QUIC-FL (one inverse transform) and EDEN (one per client).

    Defaults: ``d = 2**18``, ``b = 4``, ``n = 1, 2, ..., 64``, median of 5 timed runs
    (``small``: ``d = 2**12``, ``n <= 8``, one run), one BLAS thread (``blas_threads``,
    see :func:`run_dme_benchmark`). Inputs are LogNormal(0, 1) vectors.

    Returns
    -------
    ServerScaling
        Rows per compressor and ``n``, least-squares fits of time against ``n`` and the
        EDEN / QUIC-FL ratio at the largest ``n``.
    """
    preset = _SMALL_SCALING if small else _SCALING
    dim = check_int(_resolve(dim, "dim", preset), "dim", 1, _MAX_DIM)
    bits = check_int(_resolve(bits, "bits", preset), "bits", 1, _MAX_BITS)
    client_counts = _int_list(_resolve(clients, "clients", preset), "clients", 2**16)
    repeats = check_int(_resolve(repeats, "repeats", preset), "repeats", 1)
    seed = check_int(seed, "seed", 0)
    configs = _build_configs(compressors, (bits,), dim)
    most_clients = client_counts[-1]
    round_seed = _derived_seed(seed, 4)
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
            _warm_up(config, dim, seed)
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
                aggregate = functools.partial(_aggregate, compressor, dim, round_seed, payloads[:n])
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


# --------------------------------------------------------------------------- CosSGD table

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
    families=_COSSGD_FAMILIES,
    trials=None,
    seed=0,
    progress=False,
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
    progress, small : bool
        Progress bar; tiny defaults.

    Returns
    -------
    list of dict
        One row per (family, dim, bits, quantizer): ``family``, ``dim``, ``bits``,
        ``quantizer``, ``vectors``, ``nmse`` (None where not available),
        ``bits_per_coordinate``, ``unbiased``.
    """
    bits_list = _int_list(bits, "bits", _MAX_BITS)
    if dims is None:
        large = (_SMALL_DEFAULTS if small else _DEFAULTS)["dim"]
        dims = (_SMALL_COSSGD_TENSOR_DIM if small else _COSSGD_TENSOR_DIM, large)
    dims = _int_list(dims, "dim", _MAX_DIM)
    families = _check_families(families)
    trials = check_int(
        _resolve(trials, "trials", _SMALL_DEFAULTS if small else _DEFAULTS), "trials", 1
    )
    seed = check_int(seed, "seed", 0)
    rows = []
    cells = len(families) * len(dims) * len(bits_list)
    with reporter(cells, "cossgd table", progress, unit="config") as bar:
        for family in families:
            family_code = FAMILIES.index(family)
            for dim in dims:
                draw = _vector_source(family, dim, seed)
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
                errors.append(_relative_error(decoded, exact, float(np.dot(exact, exact))))
                sizes.append(len(payload))
            row.update(
                nmse=float(np.mean(errors)),
                bits_per_coordinate=8.0 * float(np.mean(sizes)) / dim,
                unbiased=bool(compressor.properties.unbiased),
            )
        yield row


# --------------------------------------------------------------------------- formatting


def _cell(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _markdown(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def sweep_markdown(rows, clients=None):
    """Markdown table of the sweep at ``clients`` (default: the largest ``n`` of the rows)."""
    if not rows:
        return "(no rows)"
    clients = max(r["clients"] for r in rows) if clients is None else clients
    header = [
        "compressor",
        "params",
        "family",
        "bits/coord",
        "vNMSE",
        "± se",
        "design vNMSE",
        f"NMSE (n={clients})",
        "encode ms",
        f"server ms (n={clients})",
    ]
    body = [
        [
            r["compressor"],
            r["params"],
            r["family"],
            f"{r['bits_per_coordinate']:.4f}",
            _cell(r["vnmse"]),
            _cell(r["vnmse_se"], 2),
            _cell(r["design_vnmse"]),
            _cell(r["nmse"]),
            f"{r['encode_ms']:.3g}",
            f"{r['server_ms']:.3g}",
        ]
        for r in rows
        if r["clients"] == clients
    ]
    return _markdown(header, body)


def server_scaling_markdown(result):
    """Markdown table of server time per ``n`` and the fit lines of :class:`ServerScaling`."""
    labels = list(result.fits)
    by_key = {(r["compressor"], r["clients"]): r["server_ms"] for r in result.rows}
    header = ["n"] + [f"{label} ms" for label in labels]
    body = [[str(n)] + [f"{by_key[(label, n)]:.4g}" for label in labels] for n in result.clients]
    lines = [_markdown(header, body), ""]
    for label, fit in result.fits.items():
        if fit["slope_ms_per_client"] is not None:
            lines.append(
                f"- {label}: {fit['slope_ms_per_client']:.4g} ms per client + "
                f"{fit['intercept_ms']:.4g} ms (least squares, R^2 = {_cell(fit['r2'])})"
            )
    if result.ratio is not None:
        lines.append(
            f"- n = {result.clients[-1]}, d = {result.dim}, b = {result.bits}: "
            f"EDEN / QUIC-FL server time = {result.ratio:.3g}"
        )
    return "\n".join(lines)


def cossgd_markdown(rows):
    """Markdown pivot of :func:`run_cossgd_comparison` rows: NMSE per quantizer column."""
    quantizers = list(dict.fromkeys(r["quantizer"] for r in rows))
    cells = {(r["family"], r["dim"], r["bits"], r["quantizer"]): r["nmse"] for r in rows}
    keys = list(dict.fromkeys((r["family"], r["dim"], r["bits"]) for r in rows))
    header = ["family", "d", "b"] + quantizers
    body = [
        [family, str(dim), str(bits)] + [_cell(cells[(family, dim, bits, q)]) for q in quantizers]
        for family, dim, bits in keys
    ]
    return _markdown(header, body)


def write_csv(rows, path):
    """Write dict rows to ``path`` as CSV (None becomes an empty cell)."""
    path = Path(path)
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


# --------------------------------------------------------------------------- plots


def _figure(**kwargs):
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _bound(bits):
    return 1.0 / (4.0**bits - 1.0)


def plot_nmse_vs_bits(rows, path=None, clients=None):
    """vNMSE (top) and NMSE at ``n`` clients (bottom) against measured bits per coordinate.

    One column per family, log y. The dashed line is the bound ``1/(4^b - 1)`` for any
    unbiased b-bit estimate (``1/(n (4^b - 1))`` for the mean of ``n`` independent ones),
    evaluated at the measured bits.
    """
    clients = max(r["clients"] for r in rows) if clients is None else clients
    rows = [r for r in rows if r["clients"] == clients]
    families = list(dict.fromkeys(r["family"] for r in rows))
    labels = list(dict.fromkeys(r["compressor"] for r in rows))
    figure = _figure(figsize=(4.2 * len(families), 7.5), layout="constrained")
    axes = figure.subplots(2, len(families), squeeze=False, sharex=True)
    low = max(min(r["bits_per_coordinate"] for r in rows), 0.05)
    high = max(r["bits_per_coordinate"] for r in rows)
    grid = np.linspace(low, high, 200)
    for column, family in enumerate(families):
        for row_index, (key, scale) in enumerate((("vnmse", 1), ("nmse", clients))):
            ax = axes[row_index, column]
            for label in labels:
                points = sorted(
                    (r["bits_per_coordinate"], r[key])
                    for r in rows
                    if r["family"] == family and r["compressor"] == label and r[key] > 0
                )
                if points:
                    ax.plot(*zip(*points, strict=True), "o-", ms=4, label=label)
            ax.plot(
                grid,
                _bound(grid) / scale,
                "k--",
                lw=1,
                label="1/(4^b-1)" if scale == 1 else f"1/({clients}(4^b-1))",
            )
            ax.set_yscale("log")
            # the bound falls fast with b; do not let it squash the measured points
            measured = [r[key] for r in rows if r["family"] == family and r[key] > 0]
            if measured:
                ax.set_ylim(bottom=min(measured) / 3)
            name = "vNMSE" if scale == 1 else f"NMSE, n={clients}"
            ax.set(title=f"{family}: {name}", ylabel=name)
            ax.grid(True, which="major", alpha=0.3)
        axes[1, column].set_xlabel("measured bits per coordinate")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_server_time(rows, path=None, family=None):
    """Server aggregation time against ``n`` (log-log), one line per compressor.

    Uses one family (the first by default) and each compressor's highest bit width.
    """
    family = rows[0]["family"] if family is None else family
    rows = [r for r in rows if r["family"] == family]
    from matplotlib.ticker import NullLocator

    figure = _figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.subplots()
    for label in dict.fromkeys(r["compressor"] for r in rows):
        top = max(r["bits"] for r in rows if r["compressor"] == label)
        points = sorted(
            (r["clients"], r["server_ms"])
            for r in rows
            if r["compressor"] == label and r["bits"] == top
        )
        ax.plot(*zip(*points, strict=True), "o-", ms=4, label=f"{label} (b={top})")
    counts = sorted({r["clients"] for r in rows})
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="clients n",
        ylabel="server time (ms)",
        title=f"server aggregation time, d={rows[0]['dim']}, {family}",
    )
    # label the measured n themselves; log-axis minor labels like "2x10^0" only clutter
    ax.set_xticks(counts, labels=[str(n) for n in counts])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_server_scaling(result, path=None):
    """Server time against ``n`` (linear axes) with the least-squares lines."""
    figure = _figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.subplots()
    counts = np.array(result.clients, dtype=float)
    for label, fit in result.fits.items():
        times = [r["server_ms"] for r in result.rows if r["compressor"] == label]
        (line,) = ax.plot(counts, times, "o", label=label)
        if fit["slope_ms_per_client"] is not None:
            ax.plot(
                counts,
                fit["slope_ms_per_client"] * counts + fit["intercept_ms"],
                "-",
                color=line.get_color(),
                lw=1,
                label=f"{label} fit: {fit['slope_ms_per_client']:.3g} ms/client",
            )
    ax.set(
        xlabel="clients n",
        ylabel="server time (ms)",
        title=f"server time, d={result.dim}, b={result.bits}",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


# --------------------------------------------------------------------------- command line


def _threads_text(blas_threads):
    return f"{blas_threads} BLAS thread(s)" if blas_threads else "default BLAS threads"


def _run(args):
    if not (args.sweep or args.server_scaling or args.cossgd_table):
        raise ParameterError("nothing to run: --no-sweep needs --server-scaling or --cossgd-table")
    if args.repeats is not None:
        check_int(args.repeats, "repeats", 1)
    if args.trials is not None:
        check_int(args.trials, "trials", 1)
    check_int(args.blas_threads, "blas-threads", 0)
    out = writable_dir(args.out) if args.out else None
    progress = args.progress
    families = args.families or FAMILIES
    if args.sweep:
        rows = run_dme_benchmark(
            compressors=args.compressors or DEFAULT_COMPRESSORS,
            bits=args.bits,
            dim=args.dim,
            clients=args.clients,
            families=families,
            trials=args.trials,
            seed=args.seed,
            progress=progress,
            small=args.small,
            blas_threads=args.blas_threads,
        )
        first = rows[0]
        print(
            f"DME benchmark: d = {first['dim']}, {first['trials']} trials, "
            f"n = {max(r['clients'] for r in rows)} clients for NMSE and server time, "
            f"{_threads_text(args.blas_threads)}"
        )
        table = sweep_markdown(rows)
        print(table)
        if out is not None:
            write_csv(rows, out / "dme.csv")
            (out / "dme.md").write_text(table + "\n")
            plot_nmse_vs_bits(rows, out / "dme_nmse_vs_bits.png")
            plot_server_time(rows, out / "dme_server_time.png")
    if args.server_scaling:
        result = run_server_scaling(
            repeats=args.repeats,
            seed=args.seed,
            progress=progress,
            small=args.small,
            blas_threads=args.blas_threads,
        )
        print(
            f"\nServer scaling: d = {result.dim}, b = {result.bits}, LogNormal(0,1) inputs, "
            f"median of {result.repeats} timed runs, {_threads_text(args.blas_threads)}"
        )
        text = server_scaling_markdown(result)
        print(text)
        if out is not None:
            write_csv(result.rows, out / "server_scaling.csv")
            (out / "server_scaling.md").write_text(text + "\n")
            plot_server_scaling(result, out / "server_scaling.png")
    if args.cossgd_table:
        cos_rows = run_cossgd_comparison(
            dims=None
            if args.dim is None
            else (_SMALL_COSSGD_TENSOR_DIM if args.small else _COSSGD_TENSOR_DIM, args.dim),
            families=args.families or _COSSGD_FAMILIES,
            trials=args.trials,
            seed=args.seed,
            progress=progress,
            small=args.small,
        )
        print(
            "\nCosSGD vs uniform quantizers: mean ||x_hat - x||^2 / ||x||^2 per vector "
            "(recorded, not a claim; symmetric-uniform needs b >= 2)"
        )
        text = cossgd_markdown(cos_rows)
        print(text)
        if out is not None:
            write_csv(cos_rows, out / "cossgd.csv")
            (out / "cossgd.md").write_text(text + "\n")
    if out is not None:
        print(f"\nwrote results to {out}")
    return 0


def register(sub) -> None:
    """Add the ``dme`` subcommand to the ``bench`` subparsers object ``sub``."""
    parser = sub.add_parser(
        "dme",
        help="distributed mean estimation: NMSE, bits on the wire, encode and server time",
        description="Distributed mean estimation benchmark on real payloads.",
    )
    parser.add_argument(
        "--compressors",
        nargs="+",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"registry names with options, e.g. kashin:variant=tf "
        f"(default: {' '.join(DEFAULT_COMPRESSORS)})",
    )
    parser.add_argument("--bits", type=int, nargs="+", help="target bits per coordinate (1-4)")
    parser.add_argument("--dim", type=int, help="vector length d (2^16)")
    parser.add_argument("--clients", type=int, nargs="+", help="client counts n (1 4 16)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, help="input families (all)")
    parser.add_argument("--trials", type=int, help="independent rounds per configuration (3)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of inputs and rounds (default: 0)"
    )
    parser.add_argument("--out", help="folder for CSV, Markdown and PNG files")
    add_progress_option(parser, "configuration")
    parser.add_argument("--small", action="store_true", help="tiny sizes (tests, notebooks)")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the compressor x bits x family sweep (default on)",
    )
    parser.add_argument(
        "--server-scaling",
        action="store_true",
        help="also time EDEN vs QUIC-FL aggregation at d=2^18, b=4, n=1..64",
    )
    parser.add_argument(
        "--cossgd-table",
        action="store_true",
        help="also compare CosSGD with uniform quantizers at 1-8 bits",
    )
    parser.add_argument("--repeats", type=int, help="timed runs for --server-scaling (5)")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads while timing (1; 0 keeps the library default)",
    )
    parser.set_defaults(run=_run)
