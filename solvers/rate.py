"""Rate-constrained (entropy-coded) unbiased designs.

With shared randomness an unbiased quantizer may use many messages if they are entropy
coded. The family designed here is subtractive dithering on a uniform grid of step
``delta``: ``R(h, x) = (x - K/2 + (h + 1/2) / H) * delta``. It is an ordinary receiver
table, so the closed-form sender keeps it exactly unbiased, the exact objective gives its
vNMSE (``~ delta^2 / 12``) and the same verification and LP certificate apply. The rate is
the conditional entropy of the message given ``h``, computed exactly from the piecewise
linear sender probabilities; the code model ``P(x | h)`` is stored in the table for the
entropy coder.

``delta`` is chosen to hit a target rate, or to minimize ``vNMSE + lambda * bits``
(sweeping ``lambda`` traces the rate-distortion curve).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import optimize

import quicdesign
from quicdesign._validate import check_real, check_tail_prob
from quicdesign.errors import ParameterError
from quicdesign.sender import SenderRule
from quicdesign.table import Table

from .design import DesignResult, DesignSpec
from .distributions import StandardNormal, as_distribution
from .objective import evaluate, message_masses

__all__ = [
    "RatePoint",
    "dithered_receiver",
    "rate_point",
    "design_entropy_coded",
    "rate_distortion_curve",
    "EXACT_COORDINATE_BITS",
]

#: Wire cost of one exactly-sent coordinate: u32 index + f32 value.
EXACT_COORDINATE_BITS = 64
#: Default tail: with many messages the grid covers far out, so tails are rare.
DEFAULT_TAIL_PROB = 1e-6
_MAX_MESSAGE_BITS = 12


def dithered_receiver(delta: float, shared_bits: int, threshold: float) -> np.ndarray:
    """Uniform-grid receiver with ``2**shared_bits`` dither offsets covering ``[-T, T]``.

    Returns
    -------
    ndarray, shape (H, K)
        ``K`` is the smallest power of two with ``(K/2 - 1/2) * delta >= threshold``.
    """
    if not (math.isfinite(delta) and delta > 0):
        raise ParameterError(f"delta must be positive, got {delta}")
    needed = 2 * threshold / delta + 1
    message_bits = max(1, math.ceil(math.log2(needed)))
    if message_bits > _MAX_MESSAGE_BITS:
        raise ParameterError(
            f"delta {delta:.3g} needs 2**{message_bits} messages to cover T={threshold:.3g}; "
            "use a larger delta or tail_prob"
        )
    num_shared, num_messages = 1 << shared_bits, 1 << message_bits
    offsets = (np.arange(num_shared)[:, None] + 0.5) / num_shared
    return (np.arange(num_messages)[None, :] - num_messages / 2 + offsets) * delta


class RatePoint(dict):
    """vNMSE and expected wire bits of one design (a dict with attribute access)."""

    def __getattr__(self, name):
        # AttributeError (not KeyError) for a missing key, so hasattr/getattr work
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"RatePoint has no field {name!r}") from None


def _entropy_bits(probabilities: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, -probabilities * np.log2(probabilities), 0.0)
    return terms.sum(axis=-1)


def rate_point(receiver, distribution=None, tail_prob=DEFAULT_TAIL_PROB) -> RatePoint:
    """Exact vNMSE, code model and expected bits per coordinate of a receiver table.

    Parameters
    ----------
    receiver : array_like, shape (H, K)
    distribution : optional
        Value distribution (standard normal by default).
    tail_prob : float
        Mass sent exactly (``EXACT_COORDINATE_BITS`` each).

    Returns
    -------
    RatePoint
        ``vnmse``, ``entropy_bits`` (mean over h of H(X | h), inside values),
        ``expected_bits`` (including exact tails), ``code_model`` (H, K), ``lower``,
        ``upper``.
    """
    tail_prob = check_tail_prob(tail_prob)
    dist = as_distribution(distribution)
    lower, upper = dist.tail_interval(tail_prob)
    rule = SenderRule(receiver)
    masses = message_masses(rule, dist, lower, upper)
    inside = masses.sum(axis=1, keepdims=True)
    code_model = masses / inside
    entropy = float(np.mean(_entropy_bits(code_model)))
    vnmse = evaluate(receiver, dist, lower, upper, gradient=False, rule=rule).vnmse
    expected = (1 - tail_prob) * entropy + tail_prob * EXACT_COORDINATE_BITS
    return RatePoint(
        vnmse=vnmse,
        entropy_bits=entropy,
        expected_bits=expected,
        code_model=code_model,
        lower=lower,
        upper=upper,
    )


def _point_for_delta(delta, shared_bits, dist, tail_prob):
    lower, upper = dist.tail_interval(tail_prob)
    threshold = max(-lower, upper)
    return rate_point(dithered_receiver(delta, shared_bits, threshold), dist, tail_prob)


def design_entropy_coded(
    target_bits: float | None = None,
    *,
    lam: float | None = None,
    delta: float | None = None,
    shared_bits: int = 4,
    tail_prob: float = DEFAULT_TAIL_PROB,
    distribution=None,
    certify: bool = True,
    overhead_bits: float = 0.0,
) -> DesignResult:
    """Design an entropy-coded unbiased quantizer.

    Exactly one of ``target_bits``, ``lam`` or ``delta`` selects the operating point.

    Parameters
    ----------
    target_bits : float, optional
        Expected bits per coordinate to hit (entropy + exact tails + ``overhead_bits``).
    lam : float, optional
        Minimize ``vNMSE + lam * expected bits`` over the grid step.
    delta : float, optional
        Use this grid step.
    shared_bits : int
        ``l`` (dither resolution ``2**l``; 4 is within ~1 % of continuous dither).
    tail_prob : float
        Mass sent exactly.
    distribution : optional
        Value distribution (standard normal by default).
    certify : bool
        Run the LP certificate of the sender.
    overhead_bits : float
        Per-coordinate coder/header overhead to budget for when hitting ``target_bits``
        (0..1).

    Returns
    -------
    DesignResult
        ``.table`` carries ``code_model``; ``manifest["coding"]`` records the rate.
    """
    from .certify import certify as run_certificate
    from .verify import verify

    if sum(v is not None for v in (target_bits, lam, delta)) != 1:
        raise ParameterError("give exactly one of target_bits, lam or delta")
    overhead_bits = check_real(overhead_bits, "overhead_bits", 0.0, 1.0)
    target_bits = None if target_bits is None else check_real(target_bits, "target_bits", 0.2, 7)
    lam = None if lam is None else check_real(lam, "lam", 0.0)
    delta = None if delta is None else check_real(delta, "delta", 0.0)
    spec = DesignSpec(1, shared_bits, tail_prob, None, distribution)  # validates l, p, dist
    dist = spec.distribution
    began = time.perf_counter()

    def bits_at(step):
        return _point_for_delta(step, shared_bits, dist, tail_prob).expected_bits

    if target_bits is not None:
        if not 0.2 <= target_bits <= 7:
            raise ParameterError(f"target_bits must be in [0.2, 7], got {target_bits}")
        goal = target_bits - overhead_bits
        # Rate falls monotonically as the step grows; bracket generously in log space.
        log_step = optimize.brentq(
            lambda s: bits_at(math.exp(s)) - goal, math.log(1e-2), math.log(40.0), xtol=1e-10
        )
        delta = math.exp(log_step)
    elif lam is not None:
        if not lam > 0:
            raise ParameterError(f"lam must be positive, got {lam}")

        def penalized(s):
            point = _point_for_delta(math.exp(s), shared_bits, dist, tail_prob)
            return point.vnmse + lam * point.expected_bits

        delta = math.exp(
            optimize.minimize_scalar(
                penalized,
                bounds=(math.log(1e-2), math.log(40.0)),
                method="bounded",
                options={"xatol": 1e-8},
            ).x
        )
    point = _point_for_delta(delta, shared_bits, dist, tail_prob)
    receiver = dithered_receiver(delta, shared_bits, max(-point.lower, point.upper))
    message_bits = int(math.log2(receiver.shape[1]))
    normal_vnmse = (
        point.vnmse
        if isinstance(dist, StandardNormal)
        else rate_point(receiver, StandardNormal(), tail_prob).vnmse
    )
    table = Table(
        receiver,
        bits=message_bits,
        shared_bits=shared_bits,
        tail_prob=tail_prob,
        lower=point.lower,
        upper=point.upper,
        code_model=point.code_model,
    )
    certificate = run_certificate(table, dist).as_dict() if certify else None
    table = table.with_manifest(
        parameters={"distribution": dist.description},
        quality={
            "vnmse": normal_vnmse,
            "vnmse_definition": "E|Zhat-Z|^2 / E|Z|^2 for Z ~ N(0,1), tail sent exactly",
            "design_objective": point.vnmse,
            "bits_per_coordinate": point.expected_bits,
        },
        coding={
            "kind": "entropy",
            "coder": "constriction ANS, categorical model per h",
            "grid_step": delta,
            "entropy_bits": point.entropy_bits,
            "expected_bits": point.expected_bits,
            "exact_coordinate_bits": EXACT_COORDINATE_BITS,
        },
        design={
            "objective": "dithered uniform grid; exact vNMSE and conditional entropy",
            "operating_point": (
                {"target_bits": target_bits, "overhead_bits": overhead_bits}
                if target_bits is not None
                else {"lam": lam}
                if lam is not None
                else {"delta": delta}
            ),
            "solver_versions": {"quicdesign": quicdesign.__version__, "numpy": np.__version__},
            "wall_time_s": round(time.perf_counter() - began, 4),
            "certificate": certificate,
        },
    )
    verification = verify(table).as_dict()
    table = table.with_manifest(verification=verification)
    ok = verification["ok"] and (certificate is None or certificate["ok"])
    return DesignResult(
        table=table,
        vnmse=point.vnmse,
        expected_bits=point.expected_bits,
        entropy_bits=point.entropy_bits,
        grid_step=delta,
        success=ok,
        status=0 if ok else 2,
        message="designed, verified" + (" and certified" if certify else "")
        if ok
        else "verification or certificate failed",
        nit=0,
        wall_time=time.perf_counter() - began,
        certificate=certificate,
        verification=verification,
        spec=spec,
        starts=[],
    )


def rate_distortion_curve(lams, **options) -> list[DesignResult]:
    """Designs for several ``lam`` values (each minimizes ``vNMSE + lam * bits``)."""
    return [design_entropy_coded(lam=lam, certify=False, **options) for lam in lams]
