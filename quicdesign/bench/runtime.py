"""Runtime benchmark: QUIC-FL encode and server aggregation at large d.

Prints, per bit width: median encode time per vector, aggregation time for ``n`` clients
(one inverse transform at the end), the same clients decoded the naive way (an inverse
transform per client, as the reference implementation does), throughput and measured
bytes per coordinate. A second table sets the times against the machine's limits measured
in the same run, as two floors per stage (:func:`stage_floors`):

* the *traffic floor*: the bytes the stage must read or write, at the bandwidth of a
  64 MiB array copy. Encode: read the float32 input and the round's rotation signs (one
  bit each), write the payload. Aggregation, per client: read the payload, plus one read
  and one write of the float64 running sum per ``add_many`` call, shared by its ``n``
  clients;
* the *issue's floor* (issue 19: "memory traffic plus generating the shared values"): the
  traffic floor plus the measured time of the spec's generator drawing one client's
  shared values ``h`` (key derivation and ``ceil(d / 8)`` Philox words, the minimal call
  giving those bytes), which both the encoder and the server must derive per client. The
  rotation signs are drawn once per round and cached (by any implementation, this one
  included), so a per-vector floor counts only reading them.

Both are lower bounds for this wire format and randomness spec (given numpy's Philox),
not for QUIC-FL in general. Also printed: a numpy sort of the input, and ``add_many`` and
encode on the numpy and the compiled (numba) paths. BLAS is pinned to one thread by
default: on a small shared machine BLAS threads fight each other and the figures become
noise; for the same reason every time is CPU time of this (single-threaded) process. A
third table sets the entropy-coded server (wire v5, wide rANS) against the fixed-rate one,
both timed alternately in the same state of the memory allocator, and times the decoders
(v5, the v4 rANS it replaced, constriction's v3) and the bytes each version writes.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import numpy as np

from .._kernels import KERNELS_ENV, compiled_kernels
from .._limits import BENCH_MAX_CLIENTS, BENCH_MAX_DIM, BENCH_MAX_REPEATS, BENCH_MAX_VALUES
from .._progress import progress as reporter
from .._threads import blas_threads_text, limit_blas_threads
from .._validate import check_int
from ..codec import QuicFLAggregator, QuicFLEncoder
from ..errors import ParameterError
from ..randomness import PURPOSE_ROTATION, PURPOSE_SHARED_H, raw_words
from ..rotation import RotationLayout
from ..table import list_tables, load_table
from .transform import _median_seconds as _wall_median_seconds

__all__ = ["bench_runtime", "stage_floors"]


def _median_seconds(run, repeats):
    """Median CPU seconds of ``run``: every timed step is single-threaded (BLAS pinned,
    numba serial), and on a shared machine wall time mostly measures the scheduler."""
    return _wall_median_seconds(run, repeats, clock=time.process_time)


def _naive_per_client_decode(table, round_seed, dim, payloads):
    """Decode every client with its own inverse transform, then average (the baseline)."""
    total = np.zeros(dim)
    for payload in payloads:
        single = QuicFLAggregator(table, round_seed, dim)
        single.add(payload)
        total += single.result()
    return total / len(payloads)


_COPY_BYTES = 64 * 2**20


def _copy_bandwidth(repeats):
    """Bytes per second moved by a large array copy (read + write), median of runs."""
    source = np.ones(_COPY_BYTES // 8)
    target = np.empty_like(source)
    seconds = _median_seconds(lambda: np.copyto(target, source), max(repeats, 3))
    return 2 * _COPY_BYTES / seconds


def bench_runtime(
    dim=2**20,
    bits=(1, 2, 4),
    clients=16,
    repeats=5,
    seed=0,
    progress=None,
    blas_threads=1,
    shared_bits=None,
):
    """Time the QUIC-FL encoder and aggregator and print a table of figures.

    Parameters
    ----------
    dim : int
        Vector length (1..2**26).
    bits : sequence of int
        Bit widths (shipped default tables, 1..8).
    clients : int
        Number of clients aggregated (1..1024; ``clients * dim <= 2**28``).
    repeats : int
        Timed repetitions, the median is reported (1..1000).
    seed : int
        Seed of the inputs and private randomness.
    progress : bool, optional
        False: silent; otherwise a bar on a terminal, one line per timed step elsewhere.
    blas_threads : int or None
        BLAS threads while timing (default 1); None leaves BLAS as configured.
    shared_bits : sequence of int, optional
        Shared bits ``l`` of the shipped tables to time for every bit width (the default
        table only when omitted; widths without such a table are skipped).

    Returns
    -------
    list of dict
        One row of figures per bit width.

    Raises
    ------
    ParameterError
        For sizes outside these bounds, before anything is allocated.
    """
    dim = check_int(dim, "dim", 1, BENCH_MAX_DIM)
    clients = check_int(clients, "clients", 1, BENCH_MAX_CLIENTS)
    repeats = check_int(repeats, "repeats", 1, BENCH_MAX_REPEATS)
    bits = [check_int(b, "bits", 1, 8) for b in bits]
    if not bits:
        raise ParameterError("bits must name at least one bit width")
    if clients * dim > BENCH_MAX_VALUES:
        raise ParameterError(
            f"clients * dim = {clients * dim} exceeds {BENCH_MAX_VALUES} values held at once"
        )
    if blas_threads is not None:
        blas_threads = check_int(blas_threads, "blas_threads", 1, 1024)
    rng = np.random.default_rng(seed)
    vectors = rng.lognormal(size=(clients, dim)).astype(np.float32)
    with limit_blas_threads(blas_threads):
        return _bench_all(vectors, bits, repeats, seed, progress, blas_threads, shared_bits)


def _bench_all(vectors, bits, repeats, seed, progress, blas_threads, shared_bits=None):
    clients, dim = vectors.shape
    rows = []
    print(
        f"QUIC-FL runtime, d = {dim}, n = {clients} clients, float32 input, "
        f"median of {repeats} timed runs (CPU time), {blas_threads_text(blas_threads)}"
    )
    header = (
        f"{'b':>2} {'l':>2} {'encode ms':>10} {'enc Mcoord/s':>12} {'agg ms (n)':>11} "
        f"{'ms/client':>9} {'agg Mcoord/s':>12} {'naive ms/client':>15} {'speedup':>7} "
        f"{'bytes/coord':>11}"
    )
    print(
        "l = the table's shared-randomness bits; encode = the default path (compiled when "
        "numba is installed); agg = a loop of add() then result() for the n clients; naive = "
        "an inverse transform per client (one run); speedup = naive / agg per client"
    )
    print(header, flush=True)
    available = {(e["bits"], e["shared_bits"]) for e in list_tables()}
    grid = [
        (b, shared)
        for b in bits
        for shared in (shared_bits or [None])
        if shared is None or (b, shared) in available
    ]
    with reporter(3 * len(grid), "bench runtime", progress, unit="step") as bar:
        for b, shared in grid:
            row = _bench_bits(b, vectors, repeats, seed, bar, shared)
            rows.append(row)
            _print_row(b, row)
    print(
        "reference (paper notes, PyTorch CPU): encode ~120 ms, decode ~60 ms per client at d = 2^20"
    )
    _print_limits(rows, vectors, repeats)
    _print_entropy(rows, vectors, repeats, seed)
    return rows


def _print_entropy(rows, vectors, repeats, seed):
    """Entropy-coded server (wire v5, wide rANS) against the fixed-rate one at the same d,
    and the v5 decoder (numpy reference, compiled) against v4's and constriction's (v3)."""
    rates = [row for row in rows if row["bits"] in _ENTROPY_RATES]
    if not rates:
        return
    clients, dim = vectors.shape
    print(
        "entropy-coded (QDQE v5, wide rANS) vs fixed-rate server, ms/client with add_many "
        "on the default path, the two timed alternately; decode ns/symbol of one client "
        "(v5 numpy reference and compiled, v4 compiled, v3 constriction); bytes/coord of "
        "each version; lookups = one client's v5 slot-table lookups alone (one 16-lane "
        "gather per 16 symbols, as the decoder reads its table), and the ratio a server "
        "would reach doing the fixed-rate work plus those lookups, not overlapped"
    )
    print(
        f"{'b':>2} {'fixed ms/client':>15} {'entropy ms/client':>17} {'ratio':>5} "
        f"{'v5 numpy ns':>11} {'v5 compiled ns':>14} {'v4 compiled ns':>14} "
        f"{'v3 ns':>6} {'v5 bytes/coord':>14} {'v4 bytes/coord':>14} "
        f"{'v3 bytes/coord':>14} {'v5-v3 %':>7} {'lookups ms':>10} {'fixed+lookups':>13}",
        flush=True,
    )
    for row in rates:
        figures = _entropy_figures(row["bits"], vectors, repeats, seed)
        fixed = figures["fixed_ms_per_client"]
        figures["ratio_to_fixed"] = figures["ms_per_client"] / fixed
        lookups = figures["slot_lookups_ms"]
        figures["lookup_ratio_to_fixed"] = None if lookups is None else 1 + lookups / fixed
        row.update({f"entropy_{key}": value for key, value in figures.items()})
        print(
            f"{row['bits']:>2} {fixed:>15.2f} {figures['ms_per_client']:>17.2f} "
            f"{figures['ratio_to_fixed']:>5.2f} {_text(figures['rans_numpy_ns'], 1):>11} "
            f"{_text(figures['rans_compiled_ns']):>14} "
            f"{_text(figures['rans_v4_compiled_ns']):>14} "
            f"{_text(figures['constriction_ns'], 1):>6} "
            f"{figures['v5_bytes_per_coordinate']:>14.4f} "
            f"{figures['v4_bytes_per_coordinate']:>14.4f} "
            f"{_text(figures['v3_bytes_per_coordinate'], 4):>14} "
            f"{_text(figures['v5_overhead_percent'], 3):>7} "
            f"{_text(lookups):>10} {_text(figures['lookup_ratio_to_fixed']):>13}",
            flush=True,
        )


_ENTROPY_RATES = (1, 2, 3, 4)


def _text(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _entropy_figures(rate, vectors, repeats, seed):
    from .. import _rans
    from ..entropy import QuicFLEntropyAggregator, QuicFLEntropyEncoder, _models
    from ..table import load_entropy_table

    clients, dim = vectors.shape
    table = load_entropy_table(rate)
    encoder = QuicFLEntropyEncoder(table, round_seed=1)
    private = np.random.default_rng(seed + 2)
    payloads = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    fixed_table = load_table(rate)
    fixed_encoder = QuicFLEncoder(fixed_table, round_seed=1)
    fixed_payloads = [fixed_encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    # timed alternately in one state of the allocator: after the earlier stages, fresh
    # pages for the servers' temporaries cost up to ~1 ms per client, which would land
    # on whichever server is timed later (issue 19: "an ordering artefact")
    fixed_s, server_s = _alternate_median_seconds(
        (
            lambda: QuicFLAggregator(fixed_table, 1, dim).add_many(fixed_payloads),
            lambda: QuicFLEntropyAggregator(table, 1, dim).add_many(payloads),
        ),
        repeats,
    )
    # one client's symbols, coded and decoded by each coder on its own
    quantized = encoder._quantize(vectors[0], 0, np.random.default_rng(seed))
    keep = np.ones(quantized.codes.size, dtype=bool)
    keep[quantized.exact_indices] = False
    symbols, model_of = quantized.codes[keep], quantized.shared[keep]
    wide = _rans.RansModel(table.code_model, prob_bits=_rans.WIDE_PROB_BITS)
    lanes = _rans.wide_lanes(symbols.size)
    states, words = _rans.encode(wide, symbols, model_of, lanes=lanes)
    began = time.process_time()
    _rans.decode(wide, states, words, model_of, kernels=None, lanes=lanes)  # slow: run once
    numpy_ns = 1e9 * (time.process_time() - began) / symbols.size
    compiled_ns = v4_compiled_ns = lookups_ms = None
    with _kernels_choice("auto"):  # as for every compiled figure, whatever the switch says
        if compiled_kernels() is not None:
            compiled_ns = _decode_ns(wide, symbols, model_of, lanes, repeats)
            lookups_ms = 1e3 * _slot_lookup_seconds(wide, model_of, repeats, seed)
            v4_model = _rans.RansModel(table.code_model)
            v4_compiled_ns = _decode_ns(v4_model, symbols, model_of, _rans.LANES, repeats)
    constriction_ns = v3_bytes = overhead = None
    v5_bytes = float(np.mean([len(p) for p in payloads])) / dim
    encoder._wire_version = 4
    private = np.random.default_rng(seed + 2)
    v4 = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    v4_bytes = float(np.mean([len(p) for p in v4])) / dim
    try:
        constriction, coder_models = _models(table)
    except ParameterError:  # constriction is not installed: no version 3 figures
        pass
    else:
        constriction_ns = (
            1e9
            * _constriction_decode_seconds(constriction, coder_models, symbols, model_of, repeats)
            / symbols.size
        )
        encoder._wire_version = 3
        private = np.random.default_rng(seed + 2)
        v3 = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
        v3_bytes = float(np.mean([len(p) for p in v3])) / dim
        overhead = 100 * (v5_bytes / v3_bytes - 1)
    return {
        "fixed_ms_per_client": 1e3 * fixed_s / clients,
        "ms_per_client": 1e3 * server_s / clients,
        "rans_numpy_ns": numpy_ns,
        "rans_compiled_ns": compiled_ns,
        "rans_v4_compiled_ns": v4_compiled_ns,
        "slot_lookups_ms": lookups_ms,
        "constriction_ns": constriction_ns,
        "v5_bytes_per_coordinate": v5_bytes,
        "v4_bytes_per_coordinate": v4_bytes,
        "v3_bytes_per_coordinate": v3_bytes,
        "v5_overhead_percent": overhead,
    }


def _decode_ns(model, symbols, model_of, lanes, repeats):
    """Median ns per symbol of the compiled decoder of ``symbols`` in one rANS format."""
    from .. import _rans

    states, words = _rans.encode(model, symbols, model_of, lanes=lanes)
    decode = lambda: _rans.decode(model, states, words, model_of, lanes=lanes)  # noqa: E731
    return 1e9 * _median_seconds(decode, repeats) / symbols.size


def _slot_lookup_seconds(model, model_of, repeats, seed):
    """Median CPU seconds of the v5 decoder's slot-table lookups alone for one client:
    one entry per symbol at its model's row and a uniform slot (the decoder's slots are
    its states' low bits), read with the decoder's 16-lane gather."""
    from .._kernels import _rans_wide

    slots = np.random.default_rng(seed + 3).integers(0, 1 << model.prob_bits, model_of.size)
    index = ((model_of.astype(np.uint32) << model.prob_bits) | slots).astype(np.uint32)
    entries = model.wide_entries
    out = np.empty(index.size, dtype=np.uint32)
    _rans_wide.rans_slot_lookups(entries, index, out)  # checks the indices once
    return _median_seconds(lambda: _rans_wide._slot_lookups(entries, index, out), repeats)


def _alternate_median_seconds(runs, repeats):
    """Median CPU seconds of each of ``runs``, timed in turn (after one untimed round)."""
    timings = [[] for _ in runs]
    for repeat in range(repeats + 1):
        for run, times in zip(runs, timings, strict=True):
            began = time.process_time()
            run()
            if repeat:
                times.append(time.process_time() - began)
    return [statistics.median(times) for times in timings]


def _constriction_decode_seconds(constriction, coder_models, symbols, model_of, repeats):
    """Median seconds of constriction decoding the symbols grouped by model (as v3 does)."""
    order = np.argsort(model_of, kind="stable")
    grouped = symbols[order].astype(np.int32)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(model_of, minlength=len(coder_models)))))
    coder = constriction.stream.stack.AnsCoder()
    for h in range(len(coder_models) - 1, -1, -1):
        if bounds[h + 1] > bounds[h]:
            coder.encode_reverse(grouped[bounds[h] : bounds[h + 1]], coder_models[h])
    stream = coder.get_compressed()

    def decode():
        decoder = constriction.stream.stack.AnsCoder(stream)
        for h, model in enumerate(coder_models):
            if bounds[h + 1] > bounds[h]:
                decoder.decode(model, int(bounds[h + 1] - bounds[h]))

    return _median_seconds(decode, repeats)


def stage_floors(dim, payload_bytes, clients, bandwidth, shared_seconds):
    """Lower bounds of encode and per-client aggregation time (module docstring).

    Parameters
    ----------
    dim : int
        Vector length.
    payload_bytes : float
        Mean payload size in bytes.
    clients : int
        Clients aggregated by one ``add_many`` call.
    bandwidth : float
        Copy bandwidth in bytes per second (read plus written).
    shared_seconds : float
        Time of the spec's generator drawing one client's shared values.

    Returns
    -------
    dict
        Seconds: ``encode_traffic``, ``encode`` (traffic plus shared values),
        ``aggregate_traffic`` and ``aggregate`` (per client).
    """
    rotated = RotationLayout.for_dim(dim).rotated_dim
    encode_bytes = 4 * dim + rotated / 8 + payload_bytes
    aggregate_bytes = payload_bytes + 2 * 8 * rotated / clients
    return {
        "encode_traffic": encode_bytes / bandwidth,
        "encode": encode_bytes / bandwidth + shared_seconds,
        "aggregate_traffic": aggregate_bytes / bandwidth,
        "aggregate": aggregate_bytes / bandwidth + shared_seconds,
    }


def _generator_seconds(dim, repeats):
    """Median seconds of the spec's generator drawing one client's ``h`` (the minimal
    call: key derivation and one Philox word per 8 values) and the round's signs."""
    rotated = RotationLayout.for_dim(dim).rotated_dim
    shared = _median_seconds(
        lambda: raw_words(1, 0, PURPOSE_SHARED_H, -(-rotated // 8)), max(repeats, 3)
    )
    signs = _median_seconds(
        lambda: raw_words(1, 0, PURPOSE_ROTATION, -(-rotated // 64)), max(repeats, 3)
    )
    return shared, signs


def _print_limits(rows, vectors, repeats):
    """Times against the two floors and a sort, measured now (ratios from one run)."""
    clients, dim = vectors.shape
    bandwidth = _copy_bandwidth(repeats)
    shared_s, signs_s = _generator_seconds(dim, repeats)
    sort_s = _median_seconds(lambda: np.sort(vectors[0]), repeats)
    print(
        f"limits: copy {bandwidth / 1e9:.1f} GB/s; one client's h (Philox) "
        f"{1e3 * shared_s:.2f} ms; the round's signs {1e3 * signs_s:.2f} ms (once per "
        f"round, cached: not in the floors); numpy sort of the input {1e3 * sort_s:.2f} ms"
    )
    print(
        "floors: traffic = bytes read+written at copy bandwidth (encode: float32 input, "
        "1-bit signs, payload; aggregation per client: payload + float64 sum read+written "
        f"once per add_many of {clients}); floor = traffic + one client's h (issue 19's "
        "definition); times as 'ms (x traffic floor / x floor)'"
    )
    print(
        f"{'b':>2} {'enc traffic ms':>14} {'enc floor ms':>12} {'agg traffic ms':>14} "
        f"{'agg floor ms':>12} {'encode numpy':>20} {'encode compiled':>20} "
        f"{'add_many numpy/client':>21} {'compiled/client':>20} {'enc/sort':>8}"
    )
    for row in rows:
        floors = stage_floors(dim, row["bytes_per_coordinate"] * dim, clients, bandwidth, shared_s)
        row.update(
            copy_gb_s=bandwidth / 1e9,
            shared_values_ms=1e3 * shared_s,
            signs_ms=1e3 * signs_s,
            sort_ms=1e3 * sort_s,
            **{f"{key}_floor_ms": 1e3 * value for key, value in floors.items()},
        )
        encode = (floors["encode_traffic"], floors["encode"])
        aggregate = (floors["aggregate_traffic"], floors["aggregate"])
        print(
            f"{row['bits']:>2} {1e3 * encode[0]:>14.3f} {1e3 * encode[1]:>12.3f} "
            f"{1e3 * aggregate[0]:>14.3f} {1e3 * aggregate[1]:>12.3f} "
            f"{_with_ratios(row['encode_numpy_ms'], encode):>20} "
            f"{_with_ratios(row['encode_compiled_ms'], encode):>20} "
            f"{_with_ratios(row['add_many_numpy_ms_per_client'], aggregate):>21} "
            f"{_with_ratios(row['add_many_compiled_ms_per_client'], aggregate):>20} "
            f"{row['encode_ms'] / 1e3 / sort_s:>8.2f}",
            flush=True,
        )


def _with_ratios(milliseconds, floors_seconds):
    """A time and its ratios to the floors as text ("n/a" without the compiled path)."""
    if milliseconds is None:
        return "n/a"
    ratios = "/".join(f"{milliseconds / 1e3 / floor:.1f}" for floor in floors_seconds)
    return f"{milliseconds:.2f} ({ratios})"


def _print_row(b, row):
    print(
        f"{b:>2} {row['shared_bits']:>2} {row['encode_ms']:>10.1f} "
        f"{row['encode_mcoord_s']:>12.1f} {row['aggregate_ms']:>11.1f} "
        f"{row['aggregate_ms_per_client']:>9.2f} {row['aggregate_mcoord_s']:>12.1f} "
        f"{row['naive_ms_per_client']:>15.2f} "
        f"{row['naive_ms_per_client'] / row['aggregate_ms_per_client']:>7.2f} "
        f"{row['bytes_per_coordinate']:>11.4f}",
        flush=True,
    )


@contextlib.contextmanager
def _kernels_choice(choice):
    previous = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(KERNELS_ENV, None)
        else:
            os.environ[KERNELS_ENV] = previous


def _both_paths(run, repeats):
    """Median seconds of ``run`` on the numpy and the compiled kernels (None: no numba)."""
    seconds = {}
    for kernels in ("numpy", "auto"):
        with _kernels_choice(kernels):
            if kernels == "auto" and compiled_kernels() is None:
                seconds[kernels] = None
                continue
            run()  # the first call compiles (or loads the numba cache); not timed
            seconds[kernels] = _median_seconds(run, repeats)
    return seconds


def _bench_bits(b, vectors, repeats, seed, bar, shared_bits=None):
    clients, dim = vectors.shape
    table = load_table(b, shared_bits)
    encoder = QuicFLEncoder(table, round_seed=1)
    private = np.random.default_rng(seed + 1)
    encodes = _both_paths(lambda: encoder.encode(vectors[0], 0, rng=private), repeats)
    # the default path's figure (compiled when available), so every table shows one time
    encode_s = encodes["numpy"] if encodes["auto"] is None else encodes["auto"]
    payloads = [encoder.encode(v, c, rng=private) for c, v in enumerate(vectors)]
    bar.update(note=f"b={b} encode")

    def aggregate():
        aggregator = QuicFLAggregator(table, 1, dim)
        for payload in payloads:
            aggregator.add(payload)
        return aggregator.result()

    aggregate_s = _median_seconds(aggregate, repeats)
    bar.update(note=f"b={b} aggregate")
    batched = _both_paths(lambda: QuicFLAggregator(table, 1, dim).add_many(payloads), repeats)
    began = time.process_time()
    _naive_per_client_decode(table, 1, dim, payloads)
    naive_s = time.process_time() - began
    bar.update(note=f"b={b} naive decode")
    return {
        "bits": b,
        "shared_bits": table.shared_bits,
        "dim": dim,
        "clients": clients,
        "encode_ms": 1e3 * encode_s,
        "encode_mcoord_s": dim / encode_s / 1e6,
        "aggregate_ms": 1e3 * aggregate_s,
        "aggregate_ms_per_client": 1e3 * aggregate_s / clients,
        "aggregate_mcoord_s": clients * dim / aggregate_s / 1e6,
        "naive_ms_per_client": 1e3 * naive_s / clients,
        "encode_numpy_ms": 1e3 * encodes["numpy"],
        "encode_compiled_ms": None if encodes["auto"] is None else 1e3 * encodes["auto"],
        "add_many_numpy_ms_per_client": 1e3 * batched["numpy"] / clients,
        "add_many_compiled_ms_per_client": (
            None if batched["auto"] is None else 1e3 * batched["auto"] / clients
        ),
        "bytes_per_coordinate": float(np.mean([len(p) for p in payloads])) / dim,
    }
