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

__all__ = ["ObjectiveValue", "evaluate"]


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

    width = np.diff(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        fired_mass = np.where(width > 0, (first - t[:-1] * mass) / width, 0.0)
    target = slopes / 2
    cum_mass = np.concatenate(([0.0], np.cumsum(mass)))
    cum_target = np.concatenate(([0.0], np.cumsum(target * mass)))

    events = rule.num_events
    position = rule.event_position
    enter = np.concatenate((np.full((num_shared, 1), -1), position), axis=1) + 1
    leave = np.concatenate((position, np.full((num_shared, 1), events)), axis=1)
    grad = receiver * (cum_mass[leave] - cum_mass[enter]) - (cum_target[leave] - cum_target[enter])
    h, j = rule.event_shared, rule.event_level
    grad[h, j] += (mass - fired_mass) * (receiver[h, j] - target)
    grad[h, j + 1] += fired_mass * (receiver[h, j + 1] - target)
    grad *= 2.0 / (num_shared * norm)
    return ObjectiveValue(float(total / norm), grad, max(uncovered, 0.0))
