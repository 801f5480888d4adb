"""The design entry point: specification, multistart optimization, result object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy
from scipy.optimize import OptimizeResult

import quicdesign
from quicdesign._validate import check_int, check_positive_float, check_tail_prob
from quicdesign.errors import ParameterError
from quicdesign.table import Table

from .distributions import StandardNormal, as_distribution
from .objective import evaluate
from .optimize import LocalSolution, refine, starting_points

__all__ = ["DesignSpec", "DesignResult", "design", "MAX_BITS", "MAX_SHARED_BITS"]

MAX_BITS = 8
MAX_SHARED_BITS = 8
DEFAULT_TAIL_PROB = 1 / 512


@dataclass(frozen=True)
class DesignSpec:
    """What to design: bits, shared bits, tail and value distribution.

    Parameters
    ----------
    bits : int
        Message bits ``b`` (1..8).
    shared_bits : int
        Shared-randomness bits ``l`` (0..8); ``H = 2**l`` shared values.
    tail_prob : float
        Fraction of values sent exactly, half in each tail (ignored if ``threshold``).
    threshold : float, optional
        Symmetric threshold ``T``; values with ``|z| > T`` are sent exactly.
    distribution : optional
        ``None`` (standard normal), a frozen ``scipy.stats`` continuous distribution, a
        1-D sample, or a :class:`ValueDistribution`.
    """

    bits: int
    shared_bits: int
    tail_prob: float = DEFAULT_TAIL_PROB
    threshold: float | None = None
    distribution: object = field(default=None, compare=False)

    def __post_init__(self):
        check_int(self.bits, "bits", 1, MAX_BITS)
        check_int(self.shared_bits, "shared_bits", 0, MAX_SHARED_BITS)
        object.__setattr__(self, "distribution", as_distribution(self.distribution))
        if self.threshold is not None:
            threshold = check_positive_float(self.threshold, "threshold")
            low, high = self.distribution.partial_moments(np.array([-threshold, threshold]))[0]
            tail = 1.0 - float(high - low)
            if not 0 < tail < 1:
                raise ParameterError(
                    f"threshold {threshold} leaves tail mass {tail}, not in (0, 1)"
                )
            object.__setattr__(self, "threshold", threshold)
            object.__setattr__(self, "tail_prob", tail)
        else:
            object.__setattr__(self, "tail_prob", check_tail_prob(self.tail_prob))

    @property
    def interval(self) -> tuple[float, float]:
        """``(lower, upper)``: the quantized interval."""
        if self.threshold is not None:
            return -self.threshold, self.threshold
        return self.distribution.tail_interval(self.tail_prob)

    def cache_key(self) -> dict:
        """Primitive fields identifying the design problem."""
        return {
            "bits": self.bits,
            "shared_bits": self.shared_bits,
            "tail_prob": self.tail_prob,
            "threshold": self.threshold,
            "distribution": self.distribution.key,
        }


class DesignResult(OptimizeResult):
    """Outcome of :func:`design`, in the style of ``scipy.optimize.OptimizeResult``.

    Attributes
    ----------
    table : quicdesign.Table
        The designed table (manifest carries provenance, quality and certificate).
    vnmse : float
        Design objective on the spec's distribution (standard normal by default).
    success : bool
        Whether the design is verified unbiased and (if requested) certified.
    status : int
        0 success, 1 local optimizer stopped early, 2 verification or certificate failed.
    message : str
        Human-readable status.
    nit : int
        Total quasi-Newton iterations over all starts.
    wall_time : float
        Seconds spent.
    starts : list of dict
        vNMSE, iterations and label of every start.
    certificate : dict or None
        LP certificate (see :func:`solvers.certify`).
    verification : dict
        Report of :func:`solvers.verify`.
    """


def _coarser_start(receiver: np.ndarray, num_shared: int) -> np.ndarray:
    """Duplicate rows of a table with fewer shared values (same objective), to refine."""
    return np.repeat(receiver, num_shared // receiver.shape[0], axis=0)


def design(
    bits: int,
    shared_bits: int,
    tail_prob: float = DEFAULT_TAIL_PROB,
    distribution=None,
    *,
    threshold: float | None = None,
    starts: int = 4,
    max_iter: int = 3000,
    warm_start=None,
    certify: bool = True,
    seed: int = 0,
    n_jobs: int = 1,
    hops: int = 0,
) -> DesignResult:
    """Design a near-optimal unbiased quantizer table.

    Parameters
    ----------
    bits, shared_bits : int
        Message bits ``b`` (1..8) and shared-randomness bits ``l`` (0..8).
    tail_prob : float
        Fraction of values sent exactly (default 1/512).
    distribution : optional
        Value distribution (default standard normal); see :class:`DesignSpec`.
    threshold : float, optional
        Symmetric threshold instead of ``tail_prob``.
    starts : int
        Number of structured and jittered starting tables.
    max_iter : int
        L-BFGS-B iteration cap per run.
    warm_start : array_like or Table, optional
        An extra start: a receiver with ``H`` rows, or a divisor of ``H`` (rows are then
        duplicated, which keeps its objective).
    certify : bool
        Cross-check the closed-form sender with the cvxpy/HiGHS LP.
    seed : int
        Seed of the jittered starts.
    n_jobs : int
        Starts run in parallel with joblib when ``n_jobs != 1``.
    hops : int
        Basin-hopping rounds after the starts: perturb the best table at a random
        scale, re-optimize, keep it if better (a search for better optima).

    Returns
    -------
    DesignResult
    """
    spec = DesignSpec(bits, shared_bits, tail_prob, threshold, distribution)
    return _design_spec(
        spec,
        starts=starts,
        max_iter=max_iter,
        warm_start=warm_start,
        certify=certify,
        seed=seed,
        n_jobs=n_jobs,
        hops=hops,
    )


def _design_spec(spec, *, starts, max_iter, warm_start, certify, seed, n_jobs, hops=0):
    from .certify import certify as run_certificate
    from .verify import verify

    began = time.perf_counter()
    dist = spec.distribution
    lower, upper = spec.interval
    num_shared, num_messages = 1 << spec.shared_bits, 1 << spec.bits
    rng = np.random.default_rng(seed)
    candidates = starting_points(
        num_shared, num_messages, lower, upper, count=max(int(starts), 1), rng=rng
    )
    if warm_start is not None:
        receiver = np.asarray(getattr(warm_start, "receiver", warm_start), dtype=np.float64)
        if (
            receiver.ndim != 2
            or receiver.shape[1] != num_messages
            or num_shared % receiver.shape[0] != 0
        ):
            raise ParameterError(
                f"warm_start must have {num_messages} columns and a number of rows dividing "
                f"{num_shared}, got shape {receiver.shape}"
            )
        candidates.append(("warm-start", _coarser_start(receiver, num_shared)))

    def run(label, start):
        return refine(start, dist, lower, upper, max_iter=max_iter, label=label)

    if n_jobs == 1 or len(candidates) == 1:
        solutions = [run(label, start) for label, start in candidates]
    else:
        from joblib import Parallel, delayed

        solutions = Parallel(n_jobs=n_jobs)(delayed(run)(lb, st) for lb, st in candidates)
    best: LocalSolution = min(solutions, key=lambda s: s.vnmse)
    for hop in range(int(hops)):
        spacing = np.ptp(best.receiver) / best.receiver.size
        noise = rng.normal(scale=spacing * rng.choice([0.3, 1.0, 3.0]), size=best.receiver.shape)
        candidate = run(f"hop{hop}", best.receiver + noise)
        solutions.append(candidate)
        if candidate.vnmse < best.vnmse:
            best = candidate

    normal_vnmse = (
        best.vnmse
        if isinstance(dist, StandardNormal)
        else evaluate(best.receiver, StandardNormal(), lower, upper, gradient=False).vnmse
    )
    table = Table(
        best.receiver,
        bits=spec.bits,
        shared_bits=spec.shared_bits,
        tail_prob=spec.tail_prob,
        lower=lower,
        upper=upper,
    )
    certificate = run_certificate(table, dist).as_dict() if certify else None
    wall_time = time.perf_counter() - began
    manifest = {
        "parameters": {"distribution": dist.description},
        "quality": {
            "vnmse": normal_vnmse,
            "vnmse_definition": "E|Zhat-Z|^2 / E|Z|^2 for Z ~ N(0,1), tail sent exactly",
            "design_objective": best.vnmse,
            "bits_per_coordinate": spec.bits + 64 * spec.tail_prob,
        },
        "design": {
            "objective": "exact piecewise-quadratic vNMSE with the closed-form optimal sender",
            "optimizer": "scipy.optimize.minimize L-BFGS-B, multistart, restarts",
            "solver_versions": {
                "quicdesign": quicdesign.__version__,
                "numpy": np.__version__,
                "scipy": scipy.__version__,
            },
            "starts": [
                {"label": s.start, "vnmse": s.vnmse, "iterations": s.iterations} for s in solutions
            ],
            "iterations": sum(s.iterations for s in solutions),
            "wall_time_s": round(wall_time, 4),
            "certificate": certificate,
        },
    }
    table = table.with_manifest(**manifest)
    verification = verify(table).as_dict()
    table = table.with_manifest(verification=verification)

    failed = not verification["ok"] or (certificate is not None and not certificate["ok"])
    status = 2 if failed else (0 if best.success else 1)
    message = {
        0: "designed, verified" + (" and certified" if certify else ""),
        1: f"designed and verified; best local run stopped early: {best.message}",
        2: "verification or certificate failed",
    }[status]
    return DesignResult(
        table=table,
        vnmse=best.vnmse,
        success=status != 2,
        status=status,
        message=message,
        nit=sum(s.iterations for s in solutions),
        nfev=sum(s.evaluations for s in solutions),
        wall_time=wall_time,
        starts=[
            {"label": s.start, "vnmse": s.vnmse, "iterations": s.iterations} for s in solutions
        ],
        certificate=certificate,
        verification=verification,
        spec=spec,
    )
