"""Propose a value law for a user's vectors and measure what a direct design would gain.

Rotation (the default runtime path) makes any input close to N(0, 1), so the shipped
normal tables are already right for it. A table designed for the values' own law pays off
only on the direct path (no rotation). :func:`fit_input_law` fits candidate laws to the
vectors after the direct path's normalization (unit-RMS chunks), designs a direct table
for the best one and measures both paths on the user's own vectors, so the decision
between rotating and designing rests on a measurement, not on a likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

import quicdesign
from quicdesign.errors import ParameterError

from .distributions import rms_normalized

__all__ = ["InputLawFit", "fit_input_law"]

#: Candidate families, fitted with location 0 (the data are centred by assumption).
CANDIDATES = ("norm", "t", "laplace", "logistic")
_CHUNK = 1024
_MAX_FIT_VALUES = 200_000


@dataclass
class InputLawFit:
    """Result of :func:`fit_input_law`.

    Attributes
    ----------
    law : scipy.stats frozen distribution
        The best candidate (highest log-likelihood per value) of the normalized values.
    name : str
        Its family name (``"norm"``, ``"t"``, ``"laplace"`` or ``"logistic"``).
    log_likelihoods : dict
        Mean log-likelihood per value of every candidate.
    table : quicdesign.Table
        A ``direct`` table designed for ``law`` after the runtime's normalization.
    direct_vnmse, rotated_vnmse : float
        Measured mean vNMSE on the given vectors: the designed table on the direct path,
        and the shipped table with the same bits on the rotated path.
    gain : float
        ``1 - direct_vnmse / rotated_vnmse``; negative when rotation is better.
    """

    law: object
    name: str
    log_likelihoods: dict
    table: quicdesign.Table
    direct_vnmse: float
    rotated_vnmse: float
    gain: float

    def summary(self) -> str:
        """One line for humans."""
        verdict = "design a direct table" if self.gain > 0 else "keep rotation"
        args = tuple(round(float(a), 3) for a in self.law.args)
        return (
            f"best law {self.name}{args}; measured vNMSE "
            f"direct/designed {self.direct_vnmse:.4g} vs rotated/shipped "
            f"{self.rotated_vnmse:.4g} (gain {self.gain:+.1%}): {verdict}"
        )


def _fit(values: np.ndarray) -> tuple[dict, dict]:
    laws, scores = {}, {}
    for name in CANDIDATES:
        family = getattr(stats, name)
        params = family.fit(values, floc=0)
        law = family(*params)
        if name == "t" and params[0] <= 2:  # no variance: unusable for unit-RMS scaling
            continue
        laws[name] = law
        scores[name] = float(np.mean(law.logpdf(values)))
    return laws, scores


def _measure(vectors, encoder, aggregator) -> float:
    ratios = []
    for i, vector in enumerate(vectors):
        server = aggregator(i)
        server.add(encoder(i).encode(vector, client_id=1, rng=i))
        ratios.append(np.sum((server.result() - vector) ** 2) / np.sum(vector**2))
    return float(np.mean(ratios))


def fit_input_law(
    samples, bits: int = 2, shared_bits: int | None = None, *, starts: int = 2, seed: int = 0
) -> InputLawFit:
    """Fit a law to real vectors and measure a designed direct table against rotation.

    Parameters
    ----------
    samples : array_like or list of array_like
        One vector or several (e.g. gradients); each is cut into chunks of 1024 values in
        order, as the direct runtime does.
    bits, shared_bits : int
        The budget to compare at (``shared_bits`` defaults to the shipped table's).
    starts, seed : int
        Design options (:func:`solvers.design`).

    Returns
    -------
    InputLawFit
    """
    from .design import design

    vectors = [np.asarray(v, dtype=np.float64).ravel() for v in _as_list(samples)]
    if not vectors or any(v.size < 2 or not np.all(np.isfinite(v)) for v in vectors):
        raise ParameterError("samples must be finite vectors of at least 2 values")
    values = np.concatenate([rms_normalized(v, _CHUNK) for v in vectors])
    if values.size > _MAX_FIT_VALUES:
        values = np.random.default_rng(seed).choice(values, _MAX_FIT_VALUES, replace=False)
    laws, scores = _fit(values)
    name = max(scores, key=scores.get)
    shipped = quicdesign.load_table(bits, shared_bits)
    result = design(
        bits,
        shipped.shared_bits,
        shipped.tail_prob,
        None if name == "norm" else laws[name],
        input_model="direct",
        certify=False,
        starts=starts,
        seed=seed,
    )
    pieces = [v[i : i + _CHUNK] for v in vectors for i in range(0, v.size, _CHUNK)]
    pieces = [p for p in pieces if p.size > 1 and np.any(p)]
    direct = _measure(
        pieces,
        lambda i: quicdesign.DirectEncoder(result.table, i),
        lambda i: quicdesign.DirectAggregator(result.table, i, pieces[i].size),
    )
    rotated = _measure(
        pieces,
        lambda i: quicdesign.QuicFLEncoder(shipped, i),
        lambda i: quicdesign.QuicFLAggregator(shipped, i, pieces[i].size),
    )
    return InputLawFit(
        law=laws[name],
        name=name,
        log_likelihoods=scores,
        table=result.table,
        direct_vnmse=direct,
        rotated_vnmse=rotated,
        gain=1 - direct / rotated if rotated > 0 else -math.inf,
    )


def _as_list(samples) -> list:
    if isinstance(samples, (list, tuple)) and samples and np.ndim(samples[0]) >= 1:
        return list(samples)
    return [samples]
