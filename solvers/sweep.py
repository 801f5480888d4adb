"""Cached designs and parallel sweeps over many (b, l, p) budgets.

The cache (``joblib.Memory``) is a local speed-up keyed on the spec's primitive fields
and the package version; it is never the shipped format (tables are). Sweeps use
``joblib.Parallel``: ``backend="loky"`` locally, or any registered joblib backend
(``"dask"`` with ``distributed``, ``"ray"``) to run the same sweep on a cluster; an
enclosing ``joblib.parallel_config(...)`` is honoured when ``backend`` is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import quicdesign
from quicdesign.errors import ParameterError

from .design import DEFAULT_TAIL_PROB, DesignResult, DesignSpec, _design_spec

__all__ = ["cached_design", "sweep", "DEFAULT_SHARED_BITS", "default_specs"]

#: Shared bits of the shipped default table per bit width. b = 1..4 follow QUIC-FL.
#: For b = 5..8 we take the smallest l at which one more shared bit gains less than
#: 1.5 % vNMSE (measured: 3 -> 4 gains 1.3, 1.2, 1.2, 1.2 % for b = 5..8, while 2 -> 3
#: gains 4.6, 4.5, 4.4, 4.4 %), so l = 3; see README for the sweep command.
DEFAULT_SHARED_BITS = {1: 6, 2: 5, 3: 4, 4: 4, 5: 3, 6: 3, 7: 3, 8: 3}
#: Extra shipped tables with 8 shared bits.
EXTRA_SHARED_BITS = {1: 8, 2: 8, 3: 8, 4: 8}


def default_specs() -> list[DesignSpec]:
    """The specs of every shipped table: defaults first, then the l = 8 extras."""
    specs = [DesignSpec(b, l, DEFAULT_TAIL_PROB) for b, l in DEFAULT_SHARED_BITS.items()]
    specs += [DesignSpec(b, l, DEFAULT_TAIL_PROB) for b, l in EXTRA_SHARED_BITS.items()]
    return specs


def _design_from_key(key: dict, distribution, options: dict) -> DesignResult:
    spec = DesignSpec(
        key["bits"], key["shared_bits"], key["tail_prob"], key["threshold"], distribution
    )
    return _design_spec(spec, warm_start=None, n_jobs=1, **options)


def cached_design(spec: DesignSpec, cache_dir=None, **options) -> DesignResult:
    """Design ``spec``, memoized on disk when ``cache_dir`` is given.

    Parameters
    ----------
    spec : DesignSpec
    cache_dir : path-like, optional
        joblib cache location; no caching when None.
    **options
        ``starts``, ``max_iter``, ``certify``, ``seed`` (see :func:`solvers.design`).
    """
    options = {"starts": 4, "max_iter": 3000, "certify": True, "seed": 0, **options}
    if cache_dir is None:
        return _design_from_key(spec.cache_key(), spec.distribution, options)
    from joblib import Memory

    memory = Memory(Path(cache_dir), verbose=0)
    cached = memory.cache(_cached_entry, ignore=["distribution"])
    return cached(spec.cache_key(), spec.distribution, options, quicdesign.__version__)


def _cached_entry(key, distribution, options, version):
    # `version` is part of the cache key: a new release never reuses old designs.
    return _design_from_key(key, distribution, options)


def _require_backend(backend: str | None) -> None:
    """Register ``backend`` with joblib if it needs it; clear errors for missing engines."""
    if backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as exc:
            raise ParameterError('backend "ray" needs ray (pip install quicdesign[ray])') from exc
        if not ray.is_initialized():
            raise ParameterError('backend "ray" needs a running ray.init() in this process')
        register_ray()
    elif backend == "dask":
        try:
            from distributed import get_client
        except ImportError as exc:
            raise ParameterError('backend "dask" needs distributed (quicdesign[dask])') from exc
        try:
            get_client()
        except ValueError as exc:
            raise ParameterError('backend "dask" needs a running distributed.Client') from exc


def _progress_parallel(bar):
    """A joblib Parallel that advances ``bar`` as tasks complete (any backend, any mode)."""
    from joblib import Parallel

    class _Parallel(Parallel):
        def print_progress(self):
            bar.update(self.n_completed_tasks - bar.n)

    return _Parallel


def sweep(
    specs: Iterable[DesignSpec] | Sequence[tuple],
    *,
    n_jobs: int = -1,
    backend: str | None = None,
    cache_dir=None,
    progress: bool | None = None,
    **options,
) -> list[DesignResult]:
    """Design many specs in parallel, in input order.

    Parameters
    ----------
    specs : iterable of DesignSpec or (bits, shared_bits[, tail_prob]) tuples
    n_jobs : int
        joblib workers (-1: all cores, or all workers of the cluster).
    backend : str, optional
        ``"loky"`` (local processes), ``"threading"``, ``"dask"`` (needs a running
        ``distributed.Client``; its workers do the designs) or ``"ray"`` (needs a running
        ``ray.init()``). None honours an enclosing ``joblib.parallel_config``. Workers need
        ``quicdesign[design]`` installed; ``cache_dir`` must be a folder they all see.
    cache_dir : path-like, optional
        Design cache location shared by the workers.
    progress : bool, optional
        Show a tqdm bar (default: only on a terminal).
    **options
        Passed to :func:`cached_design`.

    Returns
    -------
    list of DesignResult
    """
    from joblib import delayed, parallel_config
    from tqdm.auto import tqdm

    specs = [s if isinstance(s, DesignSpec) else DesignSpec(*s) for s in specs]
    _require_backend(backend)
    jobs = [delayed(cached_design)(spec, cache_dir, **options) for spec in specs]
    disable = None if progress is None else not progress
    with (
        tqdm(total=len(specs), desc="designing", unit="table", disable=disable) as bar,
        # backend=None keeps an enclosing parallel_config's backend
        parallel_config(n_jobs=n_jobs, **({} if backend is None else {"backend": backend})),
    ):
        parallel_class = _progress_parallel(bar)
        try:
            # Generator mode hands results back as they finish, in order...
            parallel = parallel_class(return_as="generator")
        except ValueError:
            # ...but some backends (Ray's, multiprocessing) only return whole lists.
            parallel = parallel_class(return_as="list")
        results = list(parallel(jobs))
        bar.update(len(specs) - bar.n)
    return results
