"""Exact design objective and its gradient, for a fixed receiver table.

With the closed-form sender (:class:`quicdesign.sender.SenderRule`) the expected squared
error at ``z`` is ``a_k + b_k z - z^2`` on each piece, so integrating it against the value
distribution only needs the partial moments at the breakpoints: no grid, no quadrature
error. The gradient follows from the envelope theorem,
``dF/dR(h, x) = (2/H) * int phi(z) P(h sends x | z) (R(h, x) - y(z)) dz`` with ``y`` the
midpoint of the event randomizing at ``z``, constant on each piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quicdesign.sender import SenderRule

from .distributions import ValueDistribution

__all__ = ["ObjectiveValue", "evaluate", "message_masses"]


@dataclass(frozen=True)
class ObjectiveValue:
    """Normalized expected squared error of a receiver table on a value distribution.

    Attributes
    ----------
    vnmse : float
        ``E[(Z_hat - Z)^2 ; lower <= Z <= upper] / E[Z^2]`` (the tails are sent exactly).
    gradient : ndarray or None
        ``d vnmse / d R``, same shape as the receiver.
    uncovered : float
        Probability mass of ``[lower, upper]`` outside the rule's support; a table is
        only unbiased when this is 0.
    """

    vnmse: float
    gradient: np.ndarray | None
    uncovered: float


def evaluate(
    receiver,
    distribution: ValueDistribution,
    lower: float,
    upper: float,
    *,
    gradient: bool = True,
    rule: SenderRule | None = None,
) -> ObjectiveValue:
    """Evaluate the design objective (and gradient) of a receiver table exactly.

    Parameters
    ----------
    receiver : array_like, shape (H, K)
        Receiver table with rows non-decreasing in ``x``.
    distribution : ValueDistribution
        The value distribution.
    lower, upper : float
        Values outside ``[lower, upper]`` are sent exactly and cost nothing.
    gradient : bool
        Whether to compute the gradient.
    rule : SenderRule, optional
        A rule already built for ``receiver``.

    Returns
    -------
    ObjectiveValue
    """
    rule = SenderRule(receiver) if rule is None else rule
    receiver = rule.receiver
    num_shared = rule.num_shared
    t = rule.breakpoints
    clipped = np.clip(t, lower, upper)
    m0, m1, m2 = distribution.partial_moments(clipped)
    mass, first, second = np.diff(m0), np.diff(m1), np.diff(m2)
    slopes = rule.slopes
    total = np.sum((rule.second_moments[:-1] - slopes * t[:-1]) * mass + slopes * first - second)
    lo_mass, hi_mass = distribution.partial_moments(np.array([lower, upper]))[0]
    uncovered = float((hi_mass - lo_mass) - np.sum(mass))
    norm = distribution.second_moment()
    if not gradient:
        return ObjectiveValue(float(total / norm), None, max(uncovered, 0.0))

    fired_mass = _fired_mass(t, mass, first)
    target = slopes / 2
    # int phi P(h sends x | z) dz and int phi P(h sends x | z) y(z) dz, per (h, x).
    grad = receiver * _per_message(rule, mass, fired_mass, np.ones_like(mass))
    grad -= _per_message(rule, mass, fired_mass, target)
    grad *= 2.0 / (num_shared * norm)
    return ObjectiveValue(float(total / norm), grad, max(uncovered, 0.0))


def _fired_mass(t, mass, first):
    """``int phi(z) u(z) dz`` on each piece, ``u`` the probability the event has fired."""
    width = np.diff(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, (first - t[:-1] * mass) / width, 0.0)


def _per_message(rule: SenderRule, mass, fired_mass, weight) -> np.ndarray:
    """``sum_pieces weight_e * int phi P(h sends x | z) dz`` for every ``(h, x)``.

    ``h`` sends ``x`` for sure on the pieces strictly between its events into and out of
    level ``x`` (a prefix-sum difference) and with probability ``1 - u`` / ``u`` on the
    pieces where it randomizes.
    """
    num_shared = rule.num_shared
    cumulative = np.concatenate(([0.0], np.cumsum(weight * mass)))
    position = rule.event_position
    enter = np.concatenate((np.full((num_shared, 1), -1), position), axis=1) + 1
    leave = np.concatenate((position, np.full((num_shared, 1), rule.num_events)), axis=1)
    total = cumulative[leave] - cumulative[enter]
    h, j = rule.event_shared, rule.event_level
    total[h, j] += weight * (mass - fired_mass)
    total[h, j + 1] += weight * fired_mass
    return total


def message_masses(receiver, distribution: ValueDistribution, lower: float, upper: float):
    """Probability of each message given ``h``, for values inside ``[lower, upper]``.

    Returns
    -------
    ndarray, shape (H, K)
        ``P(X = x, lower <= Z <= upper | h)``; rows sum to the inside mass.
    """
    rule = receiver if isinstance(receiver, SenderRule) else SenderRule(receiver)
    t = rule.breakpoints
    m0, m1, _ = distribution.partial_moments(np.clip(t, lower, upper))
    mass, first = np.diff(m0), np.diff(m1)
    return _per_message(rule, mass, _fired_mass(t, mass, first), np.ones_like(mass))
