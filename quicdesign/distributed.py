"""Aggregate one round on a Dask or Ray cluster: a tree reduction of shards.

The payloads are split into groups (by default one per worker); each group is aggregated
on a worker into a shard (``docs/shard-format.md``), and shards are combined pairwise in
``ceil(log2(groups))`` levels. Only shard *bytes* travel between tasks and back to the
caller, and each is read through the validated shard reader (optionally with a keyed
checksum), so a worker never has to trust an unpickled aggregator. Works for every
compressor of the protocol: pass its :class:`~quicdesign.compressors.Compressor` instead of
a table.

Dask and Ray are optional (``pip install quicdesign[dask]`` or ``quicdesign[ray]``) and
imported only when a client is given; workers need ``quicdesign`` installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._validate import check_dim, check_int, check_round_seed, check_weight
from .errors import ParameterError
from .shard import from_bytes

__all__ = ["ScatteredPayloads", "aggregate", "scatter", "tree_levels"]


def _empty(source, round_seed: int, dim: int):
    from .compressors.base import Compressor

    if isinstance(source, Compressor):
        return source.aggregator(dim, round_seed)
    from .codec import QuicFLAggregator

    # A table with a code model is an entropy-coded design (QuicFLEntropy's aggregator).
    if getattr(source, "code_model", None) is not None:
        from .entropy import QuicFLEntropyAggregator

        return QuicFLEntropyAggregator(source, round_seed, dim)
    return QuicFLAggregator(source, round_seed, dim)


def _leaf(source, round_seed: int, dim: int, payloads, weights, key) -> bytes:
    """Task: aggregate one group of payloads into shard bytes."""
    aggregator = _empty(source, round_seed, dim)
    for payload, weight in zip(payloads, weights, strict=True):
        aggregator.add(payload, weight)
    return aggregator.to_bytes(key=key)


def _combine(source, round_seed: int, dim: int, key, *shards: bytes) -> bytes:
    """Task: validate shard bytes, merge them, return the combined shard bytes."""
    combined = None
    for data in shards:
        shard = from_bytes(source, data, key=key, round_seed=round_seed, dim=dim)
        if combined is None:
            combined = shard  # freshly built from bytes: ours to extend in place
        else:
            combined.merge(shard)
    return combined.to_bytes(key=key)


def tree_levels(num_groups: int, fan_in: int = 2) -> int:
    """Number of combine levels of the reduction tree for ``num_groups`` leaves."""
    num_groups = check_int(num_groups, "num_groups", 1)
    fan_in = check_int(fan_in, "fan_in", 2)
    return 0 if num_groups == 1 else math.ceil(math.log(num_groups, fan_in) - 1e-12)


def _split(items: Sequence, num_groups: int) -> list[list]:
    """Contiguous, nearly equal groups (empty groups dropped)."""
    size = len(items)
    bounds = [size * k // num_groups for k in range(num_groups + 1)]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _reduce(leaves: list, combine, fan_in: int):
    """Combine task handles ``fan_in`` at a time until one is left."""
    level = leaves
    while len(level) > 1:
        level = [
            combine(*level[start : start + fan_in])
            if len(level[start : start + fan_in]) > 1
            # a lone handle moves up unchanged
            else level[start]
            for start in range(0, len(level), fan_in)
        ]
    return level[0]


class _Serial:
    """Runs the same tree in this process (no engine)."""

    workers = 1

    def __init__(self, source):
        self.source = source

    def put_all(self, groups):
        return groups

    def leaf(self, *args):
        return _leaf(self.source, *args)

    def combine(self, *args):
        return _combine(self.source, *args)

    def result(self, handle) -> bytes:
        return handle


class _Dask:
    def __init__(self, client, source):
        self.client = client
        self.workers = max(1, len(client.scheduler_info().get("workers", {})))
        # every task needs the table: one copy per worker, not one per task
        # hash=False: a content-hashed key would be shared with an earlier call's scatter of
        # the same table, whose release can then race with this use ("lost dependencies")
        self.source = (
            None if source is None else client.scatter([source], broadcast=True, hash=False)[0]
        )

    def put_all(self, groups):
        # one scatter call spreads the groups over the workers round-robin
        return self.client.scatter(groups, hash=False)

    def leaf(self, *args):
        return self.client.submit(_leaf, self.source, *args, pure=False)

    def combine(self, *args):
        return self.client.submit(_combine, self.source, *args, pure=False)

    def result(self, handle) -> bytes:
        return handle.result()


class _Ray:
    def __init__(self, ray, source):
        if not ray.is_initialized():
            raise ParameterError("client='ray' needs a running ray.init()")
        self.ray = ray
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.source = None if source is None else ray.put(source)
        self._leaf = ray.remote(_leaf)
        self._combine = ray.remote(_combine)

    def put_all(self, groups):
        return [self.ray.put(group) for group in groups]

    def leaf(self, *args):
        return self._leaf.remote(self.source, *args)

    def combine(self, *args):
        return self._combine.remote(self.source, *args)

    def result(self, handle) -> bytes:
        return self.ray.get(handle)


class ScatteredPayloads:
    """A round's payloads already placed on the workers, in groups (see :func:`scatter`).

    Attributes
    ----------
    groups : list
        One engine handle (Dask future, Ray object ref, or a list) per group of payloads.
    weights : list of list of float
        The weights of each group.
    count, nbytes : int
        Number of payloads and their total size in bytes.
    """

    def __init__(self, engine_kind: str, groups, weights, count: int, nbytes: int):
        self.engine_kind = engine_kind
        self.groups = groups
        self.weights = weights
        self.count = count
        self.nbytes = nbytes


def scatter(payloads, *, client=None, weights=None, num_groups=None) -> ScatteredPayloads:
    """Place payloads on the workers in groups (one per worker by default).

    In a deployment clients would upload to the workers directly; this does it from the
    caller, so :func:`aggregate` can then be timed (or rerun) without the upload.
    """
    payloads = list(payloads)
    if not payloads:
        raise ParameterError("aggregate needs at least one payload")
    weights = [1.0] * len(payloads) if weights is None else [check_weight(w) for w in weights]
    if len(weights) != len(payloads):
        raise ParameterError(f"{len(weights)} weights for {len(payloads)} payloads")
    engine = _engine(client, None)
    groups = engine.workers if num_groups is None else check_int(num_groups, "num_groups", 1)
    return ScatteredPayloads(
        type(engine).__name__,
        engine.put_all(_split(payloads, groups)),
        _split(weights, groups),
        len(payloads),
        sum(len(p) for p in payloads),
    )


def _engine(client, source):
    if client is None:
        return _Serial(source)
    if client == "ray" or getattr(client, "__name__", None) == "ray":
        import ray

        return _Ray(ray, source)
    if type(client).__name__ == "Client" and hasattr(client, "submit"):
        return _Dask(client, source)
    raise ParameterError(
        f"client must be None, a distributed.Client or 'ray', got {type(client).__name__}"
    )


def aggregate(
    payloads: Sequence[bytes],
    table,
    round_seed: int,
    dim: int,
    *,
    client=None,
    weights: Sequence[float] | None = None,
    num_groups: int | None = None,
    fan_in: int = 2,
    key: bytes | None = None,
):
    """Aggregate one round's payloads as a tree reduction of shards.

    Parameters
    ----------
    payloads : sequence of bytes, or ScatteredPayloads
        One payload per client (each client at most once), or payloads already placed
        on the workers by :func:`scatter` (then ``weights`` and ``num_groups`` are the
        ones given there).
    table : quicdesign.Table or quicdesign.compressors.Compressor
        The QUIC-FL table of the round, or the compressor of any scheme.
    round_seed : int
        The round's seed.
    dim : int
        Length of the client vectors.
    client : distributed.Client or "ray", optional
        The engine: a running Dask client, or ``"ray"`` after ``ray.init()``. None runs
        the same tree in this process.
    weights : sequence of float, optional
        Positive weight per payload (default 1).
    num_groups : int, optional
        Leaf groups (default: one per Dask worker or Ray CPU).
    fan_in : int
        Shards per combine task (2: a binary tree of depth ``ceil(log2(groups))``).
    key : bytes, optional
        Key for the shards' checksums (a MAC between the tasks).

    Returns
    -------
    QuicFLAggregator
        A new aggregator holding every client; ``result()`` gives the weighted mean.

    Raises
    ------
    PayloadError
        If any payload or shard is invalid (the round fails; nothing is half-applied).
    """
    round_seed = check_round_seed(round_seed)
    dim = check_dim(dim)
    fan_in = check_int(fan_in, "fan_in", 2)
    _empty(table, round_seed, dim)  # fail fast here on a bad table or compressor
    engine = _engine(client, table)
    if not isinstance(payloads, ScatteredPayloads):
        payloads = scatter(payloads, client=client, weights=weights, num_groups=num_groups)
    elif payloads.engine_kind != type(engine).__name__:
        raise ParameterError("payloads were scattered with another client")
    leaves = [
        engine.leaf(round_seed, dim, group, group_weights, key)
        for group, group_weights in zip(payloads.groups, payloads.weights, strict=True)
    ]
    # Dask may forget a task's result as soon as no client-side future references it, even
    # while a dependent task is being submitted ("computation on lost data"): every
    # intermediate handle stays referenced until the root's bytes are back.
    handles = list(leaves)

    def combine(*shards):
        handles.append(engine.combine(round_seed, dim, key, *shards))
        return handles[-1]

    root = _reduce(leaves, combine, fan_in)
    data = engine.result(root)
    handles.clear()
    return from_bytes(table, data, key=key, round_seed=round_seed, dim=dim)
