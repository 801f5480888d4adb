"""Cached designs and parallel sweeps over many (b, l, p) budgets.

The cache is a folder of table directories in the shipped table format (see
``solvers/_cache.py`` and ``docs/table-format.md``), keyed on the spec, the design options
and the package version; nothing in it is ever unpickled. Sweeps use
``joblib.Parallel``: ``backend="loky"`` locally, or any registered joblib backend
(``"dask"`` with a running ``distributed.Client``, ``"ray"`` after ``ray.init()``,
registered here when needed) to run the same sweep on a cluster; an enclosing
``joblib.parallel_config(...)`` is honoured when ``backend`` is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from quicdesign._threads import single_threaded_blas
from quicdesign.errors import ParameterError

from . import _cache
from .design import (
    DEFAULT_TAIL_PROB,
    DesignResult,
    DesignSpec,
    _design_spec,
    check_design_options,
    check_n_jobs,
)

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


@single_threaded_blas  # same platform, same options -> the same table, bit for bit
def _design_from_key(key: dict, distribution, options: dict) -> DesignResult:
    spec = DesignSpec(
        key["bits"],
        key["shared_bits"],
        key["tail_prob"],
        key["threshold"],
        distribution,
        key.get("input_model"),
    )
    return _design_spec(spec, warm_start=None, n_jobs=1, **options)


def _checked_options(options: dict) -> dict:
    unknown = set(options) - {"starts", "max_iter", "certify", "seed", "hops"}
    if unknown:
        raise ParameterError(f"unknown design options {sorted(unknown)}")
    defaults = {"starts": 4, "max_iter": 3000, "certify": True, "seed": 0, "hops": 0}
    return check_design_options(**{**defaults, **options})


def cached_design(spec: DesignSpec, cache_dir=None, **options) -> DesignResult:
    """Design ``spec``, memoized on disk when ``cache_dir`` is given.

    Parameters
    ----------
    spec : DesignSpec
    cache_dir : path-like, optional
        Cache folder (table-format entries, safe to share between processes); no
        caching when None. A missing, corrupt or foreign entry is designed again.
    **options
        ``starts``, ``max_iter``, ``certify``, ``seed``, ``hops`` (see
        :func:`solvers.design`).
    """
    options = _checked_options(options)
    if cache_dir is None:
        return _design_from_key(spec.cache_key(), spec.distribution, options)
    key = _cache.design_key(spec.cache_key(), options)
    hit = _cache.load_entry(cache_dir, key)
    if hit is not None:
        table, fields = hit
        return DesignResult(table=table, spec=spec, **fields)
    result = _design_from_key(spec.cache_key(), spec.distribution, options)
    _cache.store_entry(cache_dir, key, result)
    return result


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


def _list_mode_parallel(bar):
    """A joblib Parallel returning a list that reports each task to ``bar`` as it ends.

    For backends without generator mode (Ray's, multiprocessing): joblib calls
    ``print_progress`` after every completed batch, from its callback thread.
    """
    from joblib import Parallel

    class _Parallel(Parallel):
        reported = 0

        def print_progress(self):
            done = self.n_completed_tasks
            if done > self.reported:
                bar.update(done - self.reported)
                self.reported = done

    return _Parallel(return_as="list")


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
        ``quicdesign[design]`` installed.
    cache_dir : path-like, optional
        Cache folder shared by the workers (see :func:`cached_design`); on a cluster it
        must be a folder every worker sees.
    progress : bool, optional
        False: silent; otherwise a bar on a terminal, one line per table elsewhere.
    **options
        Passed to :func:`cached_design`.

    Returns
    -------
    list of DesignResult
    """
    from joblib import Parallel, delayed, parallel_config

    from quicdesign._progress import progress as reporter

    n_jobs = check_n_jobs(n_jobs)
    specs = [s if isinstance(s, DesignSpec) else DesignSpec(*s) for s in specs]
    _checked_options(options)  # fail here, not once per worker
    _require_backend(backend)
    jobs = [delayed(cached_design)(spec, cache_dir, **options) for spec in specs]
    # backend=None keeps the backend of an enclosing parallel_config
    config = {"n_jobs": n_jobs} if backend is None else {"n_jobs": n_jobs, "backend": backend}
    with (
        reporter(len(specs), "designing", progress, unit="table") as bar,
        parallel_config(**config),
    ):
        try:
            parallel = Parallel(return_as="generator")
        except ValueError:
            # Ray's backend (like multiprocessing) has no generator mode: take the list,
            # with progress reported from joblib's completion callback instead.
            return _list_mode_parallel(bar)(jobs)
        results = []
        for result in parallel(jobs):
            results.append(result)
            bar.update(note=f"{result.table.name} vNMSE {result.vnmse:.4g}")
    return results
