"""The design entry point: specification, multistart optimization, result object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy
from scipy.optimize import OptimizeResult

import quicdesign
from quicdesign._limits import (
    DESIGN_MAX_BITS,
    DESIGN_MAX_SHARED_BITS,
    MAX_HOPS,
    MAX_ITER,
    MAX_JOBS,
    MAX_STARTS,
)
from quicdesign._validate import check_int, check_positive_float, check_tail_prob
from quicdesign.errors import ParameterError
from quicdesign.input_model import DIRECT, ROTATED
from quicdesign.table import Table

from .distributions import RotatedChunkLaw, StandardNormal, as_distribution, seen_after_rms
from .objective import evaluate
from .optimize import LocalSolution, refine, starting_points

__all__ = [
    "DesignSpec",
    "DesignResult",
    "design",
    "check_design_options",
    "MAX_BITS",
    "MAX_SHARED_BITS",
    "MAX_STARTS",
    "MAX_HOPS",
    "MAX_ITER",
    "MAX_JOBS",
]

MAX_BITS = DESIGN_MAX_BITS
MAX_SHARED_BITS = DESIGN_MAX_SHARED_BITS
DEFAULT_TAIL_PROB = 1 / 512


def check_n_jobs(n_jobs) -> int:
    """``n_jobs`` as joblib reads it: -1 (all cores) or 1..``MAX_JOBS``."""
    n_jobs = check_int(n_jobs, "n_jobs", -1, MAX_JOBS)
    if n_jobs == 0:
        raise ParameterError("n_jobs must be -1 (all cores) or a positive count, got 0")
    return n_jobs


def check_design_options(*, starts, max_iter, certify, seed, hops=0) -> dict:
    """Validate the optimizer's effort against the documented bounds.

    Raises
    ------
    ParameterError
        If ``starts`` is not in 1..``MAX_STARTS``, ``hops`` not in 0..``MAX_HOPS``,
        ``max_iter`` not in 1..``MAX_ITER``, ``seed`` not in [0, 2**64) or ``certify``
        not a bool.
    """
    if not isinstance(certify, (bool, np.bool_)):
        raise ParameterError(f"certify must be True or False, got {certify!r}")
    return {
        "starts": check_int(starts, "starts", 1, MAX_STARTS),
        "max_iter": check_int(max_iter, "max_iter", 1, MAX_ITER),
        "certify": bool(certify),
        "seed": check_int(seed, "seed", 0, 2**64 - 1),
        "hops": check_int(hops, "hops", 0, MAX_HOPS),
    }


def _rotated_chunk_size(input_model) -> int | None:
    """``"rotated:N"`` -> N (design for the exact law of a rotated chunk of N values)."""
    if input_model in (None, ROTATED, DIRECT):
        return None
    text = str(input_model)
    if text.startswith(ROTATED + ":") and text[len(ROTATED) + 1 :].isdigit():
        return int(text[len(ROTATED) + 1 :])
    raise ParameterError(
        f"input_model must be None, 'rotated', 'rotated:N' or 'direct', got {input_model!r}"
    )


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
    input_model : {None, "rotated", "rotated:N", "direct"}
        What the runtime does to inputs before the table sees them. ``"direct"``: no
        rotation, unit-RMS chunks, so the design targets ``distribution`` as it looks after
        that scaling (use :class:`quicdesign.DirectEncoder`). ``"rotated"``: rotation makes
        inputs close to N(0, 1), so the design targets the standard normal whatever
        ``distribution`` is; ``"rotated:N"`` targets the exact law of a rotated chunk of
        ``N`` values (:class:`~solvers.distributions.RotatedChunkLaw`). ``None``: design
        for ``distribution`` as given, recorded as a rotated table (the rotated encoder
        then refuses a non-normal one unless forced).
    """

    bits: int
    shared_bits: int
    tail_prob: float = DEFAULT_TAIL_PROB
    threshold: float | None = None
    distribution: object = field(default=None, compare=False)
    input_model: str | None = None

    def __post_init__(self):
        check_int(self.bits, "bits", 1, MAX_BITS)
        check_int(self.shared_bits, "shared_bits", 0, MAX_SHARED_BITS)
        law = as_distribution(self.distribution)
        chunk_size = _rotated_chunk_size(self.input_model)
        # a law already normalized for the runtime remembers the input law it came from
        input_law = law.description.get("input_law", law.description)
        object.__setattr__(self, "input_law", input_law)
        if self.input_model == DIRECT and law.description.get("normalization") != DIRECT:
            # the runtime scales every chunk to unit RMS: design for what it then sees
            raw = self.distribution
            law = seen_after_rms(raw if isinstance(raw, (list, tuple, np.ndarray)) else law)
            law.description = {**law.description, "normalization": DIRECT, "input_law": input_law}
        elif chunk_size is not None:
            law = RotatedChunkLaw(chunk_size)  # the exact law of a rotated chunk
        elif self.input_model == ROTATED:
            law = StandardNormal()  # rotation makes any input close to N(0, 1)
        object.__setattr__(self, "distribution", law)
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
            "input_model": self.input_model,
        }

    def input_model_record(self) -> dict:
        """``parameters.input_model`` of the designed table (:mod:`quicdesign.input_model`)."""
        return {
            "normalization": DIRECT if self.input_model == DIRECT else ROTATED,
            "scale": "chunk-rms",
            "law": self.distribution.description,
            "input_law": self.input_law,
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
    input_model: str | None = None,
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
        Number of structured and jittered starting tables (1..``MAX_STARTS`` = 1000).
    max_iter : int
        L-BFGS-B iteration cap per run (1..``MAX_ITER`` = 100000).
    warm_start : array_like or Table, optional
        An extra start: a receiver with ``H`` rows, or a divisor of ``H`` (rows are then
        duplicated, which keeps its objective).
    certify : bool
        Cross-check the closed-form sender with the cvxpy/HiGHS LP.
    seed : int
        Seed of the jittered starts (0 <= seed < 2**64).
    n_jobs : int
        Starts run in parallel with joblib when ``n_jobs != 1`` (-1: all cores; at most
        ``MAX_JOBS`` = 1024).
    hops : int
        Basin-hopping rounds after the starts (0..``MAX_HOPS`` = 1000): perturb the best
        table at a random scale, re-optimize, keep it if better.
    input_model : {None, "rotated", "direct"}
        The runtime's input normalization (see :class:`DesignSpec`).

    Raises
    ------
    ParameterError
        For any argument outside its documented range, before any work starts.

    Returns
    -------
    DesignResult
    """
    spec = DesignSpec(bits, shared_bits, tail_prob, threshold, distribution, input_model)
    options = check_design_options(
        starts=starts, max_iter=max_iter, certify=certify, seed=seed, hops=hops
    )
    return _design_spec(spec, warm_start=warm_start, n_jobs=check_n_jobs(n_jobs), **options)


def _design_spec(spec, *, starts, max_iter, warm_start, certify, seed, n_jobs, hops=0):
    from .certify import certify as run_certificate
    from .verify import verify

    began = time.perf_counter()
    dist = spec.distribution
    lower, upper = spec.interval
    num_shared, num_messages = 1 << spec.shared_bits, 1 << spec.bits
    rng = np.random.default_rng(seed)
    candidates = starting_points(num_shared, num_messages, lower, upper, count=starts, rng=rng)
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
    for hop in range(hops):
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
        "parameters": {"distribution": dist.description, "input_model": spec.input_model_record()},
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
