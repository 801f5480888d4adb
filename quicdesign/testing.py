"""Conformance kit for compressors, in the spirit of scikit-learn's ``check_estimator``.

:func:`check_compressor` runs a battery of checks that every implementation of the
:class:`~quicdesign.compressors.base.Compressor` protocol must pass, ours and third
parties'. A failure raises ``AssertionError`` naming the check, the compressor and the
dimension. :func:`parametrize_compressors` turns a set of compressors into a pytest
parametrization; :func:`parametrize_checks` into one pytest case per (compressor, check),
so a failure names both.

Checks live in one registry: a function ``check_<name>(ctx)`` decorated with
``@register_check("<name>")``; :func:`iter_checks` yields ``(name, check)`` pairs in
registration order. Adding a check is adding one decorated function.

Optional hooks a compressor may provide:

- ``payload_size(dim) -> int``: the exact payload size; checked when present and the
  compressor declares ``fixed_rate``.
- ``linear_aggregate`` (bool, default True): False when ``result()`` is not the weighted
  mean of single-payload decodes (e.g. a median sketch estimator); the weighted-mean
  check then only tests invariance to a common scaling of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .errors import InputDTypeError, InputVectorError, PayloadError

__all__ = [
    "CHECKS",
    "check_compressor",
    "default_compressors",
    "iter_checks",
    "parametrize_checks",
    "parametrize_compressors",
    "register_check",
]

#: Standard errors a mean deviation may reach before unbiasedness fails.
UNBIASED_Z = 5.0
_DEFAULT_TRIALS = 300
_MIN_GLOBAL_DOF = 50
_SEED_STRIDE = 1_000_003

#: Name -> check, in the order :func:`check_compressor` runs them (cheap checks first,
#: the statistical one last).
CHECKS: dict = {}


def register_check(name):
    """Decorator adding ``check(ctx)`` to :data:`CHECKS` under ``name``."""

    def register(check):
        if name in CHECKS:
            raise ValueError(f"a check named {name!r} is already registered")
        CHECKS[name] = check
        return check

    return register


def iter_checks(names=None):
    """Yield ``(name, check)`` for the named checks (all, in order, by default)."""
    selected = list(CHECKS) if names is None else list(names)
    unknown = sorted(set(selected) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; available: {list(CHECKS)}")
    for name in selected:
        yield name, CHECKS[name]


class _Context:
    """What one check needs: the compressor, a dimension, a test vector and seeds."""

    def __init__(self, compressor, dim, seed, trials):
        self.compressor = compressor
        self.dim = dim
        self.seed = seed
        self.trials = trials
        rng = np.random.default_rng([seed, dim])
        # signed and heavy-tailed, so range, norm and outliers all matter
        self.x = rng.lognormal(0.0, 1.0, dim) * rng.choice([-1.0, 1.0], dim)
        self.round_seed = seed * _SEED_STRIDE + dim

    def rng(self, *salt):
        return np.random.default_rng([self.seed, self.dim, *salt])

    def encode(self, vector=None, *, client_id=0, round_seed=None, salt=0):
        return self.compressor.encode(
            self.x if vector is None else vector,
            round_seed=self.round_seed if round_seed is None else round_seed,
            client_id=client_id,
            rng=self.rng(client_id, salt),
        )

    def aggregator(self, dim=None):
        return self.compressor.aggregator(self.dim if dim is None else dim, self.round_seed)

    def decode(self, payload, round_seed=None):
        return self.compressor.decode(
            payload, dim=self.dim, round_seed=self.round_seed if round_seed is None else round_seed
        )


def _fail(ctx, check, message):
    raise AssertionError(
        f"check_compressor[{check}] failed for {ctx.compressor!r} at dim={ctx.dim}: {message}"
    )


def _scale(ctx):
    return float(np.max(np.abs(ctx.x)))


def _close(a, b, ctx, rtol=1e-9):
    """Equal up to float rounding of sums: relative to the largest magnitude involved."""
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), _scale(ctx), 1e-300)
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= rtol * scale))


def _check_decoded(ctx, check, decoded, what):
    if not isinstance(decoded, np.ndarray):
        _fail(ctx, check, f"{what} returned {type(decoded).__name__}, not a numpy array")
    if decoded.dtype != np.float64 or decoded.shape != (ctx.dim,):
        _fail(
            ctx,
            check,
            f"{what} has dtype {decoded.dtype} and shape {decoded.shape}, "
            f"expected float64 and ({ctx.dim},)",
        )
    if not np.all(np.isfinite(decoded)):
        _fail(ctx, check, f"{what} holds non-finite values")


@register_check("round_trip")
def check_round_trip(ctx):
    """Payload is bytes; decode gives float64 of length d; dtypes and strides accepted."""
    check = "round_trip"
    original = ctx.x.copy()
    payload = ctx.encode()
    if not isinstance(payload, bytes):
        _fail(ctx, check, f"encode returned {type(payload).__name__}, not bytes")
    _check_decoded(ctx, check, ctx.decode(payload), "decode")
    strided_base = np.repeat(ctx.x, 2)
    strided_copy = strided_base.copy()
    inputs = {
        "float16": ctx.x.astype(np.float16),
        "float32": ctx.x.astype(np.float32),
        "float64": ctx.x,
        "non-contiguous": strided_base[::2],
    }
    for label, vector in inputs.items():
        before = vector.copy()
        try:
            payload = ctx.encode(vector, client_id=1)
        except Exception as exc:
            _fail(ctx, check, f"{label} input rejected: {exc!r}")
        _check_decoded(ctx, check, ctx.decode(payload), f"decode of {label} input")
        if not np.array_equal(vector, before):
            _fail(ctx, check, f"encode modified its {label} input")
    if not np.array_equal(ctx.x, original) or not np.array_equal(strided_base, strided_copy):
        _fail(ctx, check, "encode modified its input")


@register_check("input_validation")
def check_input_validation(ctx):
    """Integer input, NaN/inf and empty vectors are refused with quicdesign errors."""
    check = "input_validation"
    cases = [
        ("an integer vector", np.arange(ctx.dim, dtype=np.int64), InputDTypeError),
        ("an empty vector", np.zeros(0), InputVectorError),
    ]
    for bad_value in (np.nan, np.inf):
        vector = ctx.x.copy()
        vector[-1] = bad_value
        cases.append((f"a vector holding {bad_value}", vector, InputVectorError))
    for label, vector, expected in cases:
        try:
            ctx.encode(vector)
        except expected:
            continue
        except Exception as exc:
            _fail(ctx, check, f"{label} raised {exc!r}, expected {expected.__name__}")
        _fail(ctx, check, f"{label} was accepted, expected {expected.__name__}")


@register_check("determinism")
def check_determinism(ctx):
    """Fixed seeds and rng state give identical bytes."""
    check = "determinism"
    first, second = ctx.encode(client_id=2), ctx.encode(client_id=2)
    if first != second:
        _fail(ctx, check, "two encodings with the same seeds and rng state differ")
    if ctx.decode(first).tobytes() != ctx.decode(first).tobytes():
        _fail(ctx, check, "decoding the same payload twice gave different results")


@register_check("bytes_accounting")
def check_bytes_accounting(ctx):
    """Bits per coordinate come from the bytes; declared payload sizes are exact."""
    check = "bytes_accounting"
    payload = ctx.encode()
    measured = ctx.compressor.bits_per_coordinate(payload, ctx.dim)
    if not math.isclose(measured, 8.0 * len(payload) / ctx.dim, rel_tol=1e-12):
        _fail(ctx, check, f"bits_per_coordinate {measured} != 8 * len(payload) / d")
    declared = getattr(ctx.compressor, "payload_size", None)
    if declared is not None and ctx.compressor.properties.fixed_rate:
        other = ctx.encode(ctx.x[::-1] * 0.5 + 1.0, client_id=3)
        for label, data in (("payload", payload), ("payload of another vector", other)):
            if len(data) != declared(ctx.dim):
                _fail(
                    ctx,
                    check,
                    f"{label} has {len(data)} bytes, payload_size says {declared(ctx.dim)}",
                )


def _payloads(ctx, count, salt=0):
    return [ctx.encode(ctx.x * (1.0 + 0.25 * k), client_id=k, salt=salt) for k in range(count)]


@register_check("merge")
def check_merge(ctx):
    """Two shards merged equal one aggregator over all clients, to float rounding."""
    check = "merge"
    payloads = _payloads(ctx, 6)
    whole, first, second = ctx.aggregator(), ctx.aggregator(), ctx.aggregator()
    for k, payload in enumerate(payloads):
        whole.add(payload, weight=1.0 + k)
        (first if k < 3 else second).add(payload, weight=1.0 + k)
    first.merge(second)
    if first.count != whole.count or whole.count != len(payloads):
        _fail(
            ctx,
            check,
            f"counts {first.count} (merged) and {whole.count} (single), expected {len(payloads)}",
        )
    if not _close(first.result(), whole.result(), ctx):
        _fail(ctx, check, "merged shards differ from a single aggregator")
    overlapping = ctx.aggregator()
    overlapping.add(payloads[0])
    try:
        overlapping.merge(whole)
    except ValueError:
        pass
    else:
        _fail(ctx, check, "merging shards that share a client was accepted")


@register_check("weighted_mean")
def check_weighted_mean(ctx):
    """``result()`` is the weighted mean of the single-payload decodes."""
    check = "weighted_mean"
    payloads = _payloads(ctx, 4)
    weights = [0.5, 1.0, 2.5, 7.0]
    aggregator = ctx.aggregator()
    for payload, weight in zip(payloads, weights, strict=True):
        aggregator.add(payload, weight=weight)
    result = aggregator.result()
    _check_decoded(ctx, check, result, "result()")
    if getattr(ctx.compressor, "linear_aggregate", True):
        decoded = [ctx.decode(payload) for payload in payloads]
        expected = sum(w * d for w, d in zip(weights, decoded, strict=True)) / sum(weights)
        if not _close(result, expected, ctx):
            _fail(ctx, check, "result() is not the weighted mean of the decoded payloads")
    scaled = ctx.aggregator()
    for payload, weight in zip(payloads, weights, strict=True):
        scaled.add(payload, weight=3.0 * weight)
    if not _close(scaled.result(), result, ctx):
        _fail(ctx, check, "result() changes when every weight is scaled by the same factor")


def _corrupt_payloads(ctx, payload):
    flipped = bytearray(payload)
    flipped[0] ^= 0xFF
    wrong_dim = ctx.encode(np.append(ctx.x, 1.0), client_id=1)
    wrong_round = ctx.encode(client_id=1, round_seed=(ctx.round_seed + 1) % 2**64)
    return {
        "truncated by one byte": payload[:-1],
        "truncated to half": payload[: len(payload) // 2],
        "empty": b"",
        "extended by one byte": payload + b"\x00",
        "with flipped magic": bytes(flipped),
        "of another dimension": wrong_dim,
        "of another round": wrong_round,
        "that is a str": "not a payload",
    }


def _expect_rejected(ctx, check, aggregator, label, payload):
    before_count = aggregator.count
    before = aggregator.result().tobytes()
    try:
        aggregator.add(payload)
    except PayloadError:
        pass
    except Exception as exc:
        _fail(ctx, check, f"payload {label} raised {exc!r}, expected PayloadError")
    else:
        _fail(ctx, check, f"payload {label} was accepted")
    if aggregator.count != before_count or aggregator.result().tobytes() != before:
        _fail(ctx, check, f"rejecting the payload {label} changed the aggregator")


@register_check("corrupt_payload")
def check_corrupt_payload(ctx):
    """Corrupt or foreign payloads raise PayloadError and leave the state unchanged."""
    check = "corrupt_payload"
    aggregator = ctx.aggregator()
    aggregator.add(ctx.encode(client_id=0))
    good = ctx.encode(client_id=1)
    for label, payload in _corrupt_payloads(ctx, good).items():
        _expect_rejected(ctx, check, aggregator, label, payload)
    aggregator.add(good)
    if aggregator.count != 2:
        _fail(ctx, check, "a valid payload was not counted after rejections")


@register_check("duplicate_client")
def check_duplicate_client(ctx):
    """A second payload from the same client is refused without changing the state."""
    check = "duplicate_client"
    aggregator = ctx.aggregator()
    aggregator.add(ctx.encode(client_id=5))
    _expect_rejected(ctx, check, aggregator, "repeated verbatim", ctx.encode(client_id=5))
    _expect_rejected(
        ctx,
        check,
        aggregator,
        "re-encoded by the same client",
        ctx.encode(ctx.x * 2.0, client_id=5, salt=1),
    )


@register_check("empty_aggregator")
def check_empty_aggregator(ctx):
    """``result()`` of an aggregator without payloads raises ``ValueError``."""
    check = "empty_aggregator"
    aggregator = ctx.aggregator()
    if aggregator.count != 0:
        _fail(ctx, check, f"a fresh aggregator has count {aggregator.count}")
    try:
        aggregator.result()
    except ValueError:
        return
    _fail(ctx, check, "result() of an empty aggregator did not raise ValueError")


def _public_state(compressor):
    """What a user set: the repr and the public attributes, compared by repr."""
    return repr(compressor), {
        key: repr(value) for key, value in vars(compressor).items() if not key.startswith("_")
    }


@register_check("parameters_unchanged")
def check_parameters_unchanged(ctx):
    """Encoding, aggregating and decoding leave the compressor's parameters as given."""
    check = "parameters_unchanged"
    before = _public_state(ctx.compressor)
    properties = ctx.compressor.properties
    aggregator = ctx.aggregator()
    for payload in _payloads(ctx, 2, salt=7):
        aggregator.add(payload)
    aggregator.result()
    after = _public_state(ctx.compressor)
    if after != before or ctx.compressor.properties != properties:
        _fail(ctx, check, f"using the compressor changed it from {before[0]} to {after[0]}")


_PLAIN = (type(None), bool, int, float, complex, str, bytes, range, slice)


def _not_picklable(obj, where="compressor", depth=0):
    """Where ``obj`` holds something pickle cannot rebuild by reference, or None.

    Follows the reduction pickle itself uses (``__reduce_ex__(4)``): lambdas, local
    functions and classes, open files, locks and generators are found wherever they sit.
    """
    if depth > 30:
        return f"{where}: nested deeper than 30 levels"
    if isinstance(obj, _PLAIN) or isinstance(obj, (np.generic, np.dtype)):
        return None
    if isinstance(obj, np.ndarray):
        return f"{where}: an object array" if obj.dtype.hasobject else None
    if isinstance(obj, (tuple, list, set, frozenset)):
        for k, item in enumerate(obj):
            found = _not_picklable(item, f"{where}[{k}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(obj, dict):
        for key, item in obj.items():
            found = _not_picklable(key, f"{where} key", depth + 1) or _not_picklable(
                item, f"{where}[{key!r}]", depth + 1
            )
            if found:
                return found
        return None
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        name = getattr(obj, "__qualname__", "")
        if "<lambda>" in name or "<locals>" in name:
            return f"{where}: {name} cannot be pickled by reference"
        if isinstance(obj, type) or not hasattr(obj, "__self__"):
            return None  # module-level classes and functions travel by name
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception as exc:  # noqa: BLE001 - what pickle would raise
        return f"{where}: {type(obj).__name__} refuses to be pickled ({exc})"
    if isinstance(reduced, str):
        return None  # a global, pickled by name
    factory = reduced[0]
    if getattr(factory, "__qualname__", "").endswith(("<lambda>",)) or "<locals>" in getattr(
        factory, "__qualname__", ""
    ):
        return f"{where}: rebuilt by a local function"
    for part in reduced[1:3]:
        found = _not_picklable(part, f"{where}.{type(obj).__name__}", depth + 1)
        if found:
            return found
    return None


@register_check("pickle")
def check_pickle(ctx):
    """The compressor survives the pickle protocol: same repr, bytes and decodes.

    Compressors travel to worker processes (loky, Dask, Ray) by pickle. The package
    never imports pickle, so the check follows pickle's own reduction
    (``__reduce_ex__``/``__getstate__``/``__setstate__``, the path ``copy.deepcopy``
    also takes): the state must hold nothing pickle cannot rebuild, and the rebuilt
    compressor must behave the same.
    """
    check = "pickle"
    import copy

    problem = _not_picklable(ctx.compressor)
    if problem:
        _fail(ctx, check, f"cannot be pickled: {problem}")
    restored = copy.deepcopy(ctx.compressor)
    if repr(restored) != repr(ctx.compressor):
        _fail(ctx, check, f"restored as {restored!r}")
    # 64 coordinates, so a compressor ignoring the rng cannot repeat its bytes by chance
    longer = np.resize(ctx.x, max(ctx.dim, 64))
    payload = ctx.encode(longer, client_id=3, salt=5)
    again = restored.encode(longer, round_seed=ctx.round_seed, client_id=3, rng=ctx.rng(3, 5))
    # bytes that differ between two encodes of the original are the determinism check's
    if again != payload and ctx.encode(longer, client_id=3, salt=5) == payload:
        _fail(ctx, check, "the restored compressor encodes other bytes")
    payload = ctx.encode(client_id=3, salt=5)
    decoded = restored.decode(payload, dim=ctx.dim, round_seed=ctx.round_seed)
    if not _close(decoded, ctx.decode(payload), ctx):
        _fail(ctx, check, "the restored compressor decodes differently")


#: Clients added while the aggregator's memory is watched by the commutes_with_sum check.
_WATCHED_CLIENTS = 14
#: Dimension from which per-client storage stands out from bookkeeping.
_MEMORY_CHECK_MIN_DIM = 256


@register_check("commutes_with_sum")
def check_commutes_with_sum(ctx):
    """What a compressor declares about summing before decoding holds.

    Where ``properties.sums_before_decoding`` is declared, the server sums clients in a
    transformed domain and inverts once: its memory does not grow with the number of
    clients (watched with ``tracemalloc`` over 14 clients at ``dim >= 256``). Where the
    compressor also exposes ``stages`` (a :class:`quicdesign.stages.Pipeline`), the
    declaration matches the pipeline (it sums after at least one stage), and every
    stage declaring ``commutes_with_sum`` inverts a weighted sum of client outputs to
    the weighted sum of their inverses.
    """
    check = "commutes_with_sum"
    stages = getattr(ctx.compressor, "stages", None)
    if stages is not None:
        summed = stages.sum_depth > 0
        if summed != ctx.compressor.properties.sums_before_decoding:
            _fail(
                ctx,
                check,
                f"properties.sums_before_decoding is "
                f"{ctx.compressor.properties.sums_before_decoding}, but its pipeline "
                f"{'sums after' if summed else 'has no'} summed stage(s)",
            )
        _check_stages_commute(ctx, check, stages)
    if not ctx.compressor.properties.sums_before_decoding or ctx.dim < _MEMORY_CHECK_MIN_DIM:
        return
    import tracemalloc

    payloads = _payloads(ctx, 2 + _WATCHED_CLIENTS, salt=11)
    aggregator = ctx.aggregator()
    for payload in payloads[:2]:  # let lazy caches fill before watching
        aggregator.add(payload)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for payload in payloads[2:]:
            aggregator.add(payload)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()
    # storing every client's float64 vector would take 8 * dim bytes per client
    limit = 2 * 8 * ctx.dim + 512 * _WATCHED_CLIENTS
    if grown > limit:
        _fail(
            ctx,
            check,
            f"declares sums_before_decoding, but its memory grew by {grown} bytes over "
            f"{_WATCHED_CLIENTS} clients (limit {limit}): it keeps per-client data",
        )


def _check_stages_commute(ctx, check, pipeline):
    """TFF-style base test: ``invert(sum w_i y_i) == sum w_i invert(y_i)`` per stage."""
    weights = [0.5, 1.0, 2.5]
    for index, stage in enumerate(pipeline.stages):
        if not stage.commutes_with_sum:
            continue
        outputs = []
        for k, weight in enumerate(weights):
            state = pipeline.client_state(ctx.dim, ctx.round_seed, k, ctx.rng(k, 13))
            x = ctx.x * (1.0 + k)
            for earlier in pipeline.stages[:index]:
                x, _ = earlier.apply(x, state)
            y, side = stage.apply(x, state)
            outputs.append((weight, x, y, side))
        server = pipeline.server_state(ctx.dim, ctx.round_seed)
        dim = outputs[0][1].size
        summed = sum(w * np.asarray(y, dtype=np.float64) for w, _, y, _ in outputs)
        inverted = stage.invert(summed, None, server, dim)
        expected = sum(w * stage.invert(y, side, server, dim) for w, _, y, side in outputs)
        if not _close(inverted, expected, ctx, rtol=1e-6):
            _fail(
                ctx,
                check,
                f"stage {index} ({type(stage).__name__}) declares commutes_with_sum but "
                "inverting a weighted sum differs from the weighted sum of inverses",
            )


@register_check("unbiasedness")
def check_unbiasedness(ctx):
    """Mean of independent encodings matches the input within a variance-derived bound.

    Trial ``i`` uses its own round seed, client id and rng. With ``e_j`` the mean error of
    coordinate ``j`` over the trials and ``v_j`` its sample variance:

    - per coordinate, ``|e_j| <= 5 sqrt(max(v_j, mean(v)) / trials)`` (plus float32
      rounding): a localized bias. The floor ``mean(v)`` keeps rare events (a rounding
      that happens in 1% of the trials, a coordinate rand-k seldom keeps) from making
      ``v_j`` look like zero;
    - along ``x`` and 8 fixed random directions, the mean projected error is within 5
      standard errors of the projections: a bias along a direction, e.g. of scale;
    - when the effective number of coordinates is at least 50,
      ``sum e_j**2 / sum(v_j / trials)`` is within 5 of its standard deviations from 1:
      a bias spread thinly over many coordinates.

    Schemes that keep a coordinate in few trials (rand-k with ``k << d``) need
    ``trials`` well above ``d / k``.
    """
    check = "unbiasedness"
    if not ctx.compressor.properties.unbiased:
        return
    trials = ctx.trials
    directions = ctx.rng(0, 99).standard_normal((8, ctx.dim))
    directions = np.vstack([ctx.x, directions])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    total = np.zeros(ctx.dim)
    total_squares = np.zeros(ctx.dim)
    projections = np.empty((trials, directions.shape[0]))
    for trial in range(trials):
        round_seed = (ctx.round_seed * 7919 + trial + 1) % 2**64
        payload = ctx.compressor.encode(
            ctx.x, round_seed=round_seed, client_id=trial, rng=ctx.rng(trial, 7)
        )
        error = ctx.decode(payload, round_seed=round_seed) - ctx.x
        total += error
        total_squares += error * error
        projections[trial] = directions @ error
    mean_error = total / trials
    variance = np.maximum(total_squares - trials * mean_error**2, 0.0) / (trials - 1)
    # float32 side information and transforms round at about 1e-7 of the largest entry
    rounding = 1e-6 * _scale(ctx)
    floor = float(np.mean(variance))
    z = np.abs(mean_error) / (np.sqrt(np.maximum(variance, floor) / trials) + rounding)
    worst = int(np.argmax(z))
    if z[worst] > UNBIASED_Z:
        _fail(
            ctx,
            check,
            f"mean of {trials} decodes is {z[worst]:.1f} standard errors off "
            f"at coordinate {worst} (x={ctx.x[worst]:.4g}, mean error "
            f"{mean_error[worst]:.3g}, max |x| {_scale(ctx):.4g})",
        )
    projected = projections.mean(axis=0)
    projected_se = projections.std(axis=0, ddof=1) / math.sqrt(trials)
    projected_z = np.abs(projected) / (projected_se + rounding * math.sqrt(ctx.dim))
    if projected_z[0] > UNBIASED_Z:
        _fail(
            ctx,
            check,
            f"mean error along x is {projected_z[0]:.1f} standard errors "
            f"({projected[0]:.3g}; ||x|| = {np.linalg.norm(ctx.x):.4g})",
        )
    if projected_z.max() > UNBIASED_Z:
        _fail(
            ctx,
            check,
            f"mean error along a random direction is {projected_z.max():.1f} standard errors",
        )
    squared_se = variance / trials
    spread = float(np.sum(squared_se))
    if spread > 0:
        dof = spread**2 / float(np.sum(squared_se**2))
        if dof >= _MIN_GLOBAL_DOF:
            ratio = float(np.sum(mean_error**2)) / spread
            limit = 1.0 + UNBIASED_Z * math.sqrt(2.0 / dof)
            if ratio > limit:
                _fail(
                    ctx,
                    check,
                    f"squared mean error is {ratio:.2f} times its expected value "
                    f"over {trials} trials (limit {limit:.2f}): a diffuse bias",
                )


def check_compressor(
    compressor, *, dims=(1, 7, 1000), seed=0, statistical=True, trials=_DEFAULT_TRIALS, checks=None
):
    """Run the conformance checks on ``compressor``.

    Parameters
    ----------
    compressor : Compressor
        The instance to check.
    dims : sequence of int
        Vector lengths to test.
    seed : int
        Seed of the test vectors and of every round seed, client id and rng used.
    statistical : bool
        Run the statistical unbiasedness check (only for ``properties.unbiased``).
    trials : int
        Independent encodings per dimension for the unbiasedness check.
    checks : iterable of str, optional
        Names from :data:`CHECKS` to run (all by default).

    Raises
    ------
    AssertionError
        On the first failed check, naming it, the compressor and the dimension.
    """
    selected = [
        (name, check)
        for name, check in iter_checks(checks)
        if statistical or name != "unbiasedness"
    ]
    for dim in dims:
        ctx = _Context(compressor, int(dim), seed, trials)
        for _, check in selected:
            check(ctx)


def default_compressors():
    """One default-parameter instance per registered compressor, by registry name."""
    from .compressors import COMPRESSORS

    return {name: factory() for name, factory in COMPRESSORS.items()}


def parametrize_compressors(compressors=None, *, argname="compressor"):
    """A ``pytest.mark.parametrize`` over compressors with readable ids.

    Parameters
    ----------
    compressors : mapping or iterable, optional
        ``{id: compressor}`` or compressors (ids from ``repr``); every registered
        compressor with default parameters when omitted.
    argname : str
        Name of the test function's argument.

    Examples
    --------
    >>> from quicdesign.testing import check_compressor, parametrize_compressors
    >>> @parametrize_compressors()
    ... def test_conformance(compressor):
    ...     check_compressor(compressor)
    """
    import pytest  # only needed by test suites, never by the runtime

    if compressors is None:
        compressors = default_compressors()
    if not isinstance(compressors, Mapping):
        compressors = {repr(compressor): compressor for compressor in compressors}
    return pytest.mark.parametrize(argname, list(compressors.values()), ids=list(compressors))


def parametrize_checks(compressors=None, *, checks=None, argnames=("compressor", "check")):
    """A ``pytest.mark.parametrize`` with one case per (compressor, check).

    Ids read ``<compressor id>-<check name>``, so a failure names both. The test receives
    the compressor and the check name; run it with
    ``check_compressor(compressor, checks=[check])``.

    Parameters
    ----------
    compressors : mapping or iterable, optional
        As for :func:`parametrize_compressors`.
    checks : iterable of str, optional
        Names from :data:`CHECKS` (all by default).
    argnames : pair of str
        Names of the test function's two arguments.
    """
    import pytest  # only needed by test suites, never by the runtime

    if compressors is None:
        compressors = default_compressors()
    if not isinstance(compressors, Mapping):
        compressors = {repr(compressor): compressor for compressor in compressors}
    cases = [
        pytest.param(compressor, name, id=f"{label}-{name}")
        for label, compressor in compressors.items()
        for name, _ in iter_checks(checks)
    ]
    return pytest.mark.parametrize(list(argnames), cases)
