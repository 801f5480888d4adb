"""signSGD with majority vote (MV) and with federated voting (FV), plus decoding theory.

Workers send the sign of their stochastic gradient (1 bit per coordinate); the server
decodes one sign per coordinate by a vote and broadcasts it; everyone steps
``x <- x - step * v``. MV (Bernstein et al., 2019) counts votes; FV (Park, Poor & Lee,
2024) weights worker ``m`` by the clipped log-likelihood ratio
``clip(ln((a + eps) / (1 - a + eps)), -L, L)`` of its agreement rate ``a`` with the
*decoded* sign, learned online by the server (it never sees true gradients), after a
majority-vote warm-up. ``"fv-oracle"`` (ours, not deployable) learns the same pooled
weights from agreement with the sign of the exact gradient instead of the vote: the
weights a perfect flip-probability estimator would give, which separates what the
weighted decoder is worth from what the online estimator loses.

Conventions of this implementation
----------------------------------
Wire
    Uplink: bit ``i`` set means coordinate ``i`` is negative; a zero gradient coordinate
    is sent as ``+1``. Downlink: the packed sign bits, followed by the little-endian
    uint32 indices of tied coordinates when the tie rule is ``"zero"`` (usually none).
    Bits are ``8 * len(payload)``; FV costs nothing extra (the weights stay on the server).
Ties
    ``tie="zero"`` (default, like ``torch.sign`` in the released code): a coordinate whose
    weighted sum is exactly 0 does not move. ``tie="random"``: it moves by a shared coin
    drawn from the round seed, and the downlink is exactly one bit per coordinate. With an
    odd number of workers MV never ties.
Agreement counts
    Updated every round, warm-up included: first multiplied by the forgetting factor,
    then ``A += #{i: s_i = v_i}`` and ``N += #{i: v_i != 0}`` (tied coordinates carry no
    evidence). ``estimator="pooled"`` keeps one count per worker (the paper's
    one-channel-per-worker model); ``"per-coordinate"`` keeps one per worker and
    coordinate, as in the released code. The latter's statistics near an optimum are
    noisy and self-referential; nothing is claimed about it.
Diagnostics
    ``track_truth=True`` (implied by ``"fv-oracle"``) also counts each worker's agreement
    with the sign of the exact gradient (``problem.full_gradient``, the server cannot
    know it), so a run reports agreement with the vote beside agreement with the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quicdesign._envelope import ENVELOPE_SIZE, config_tag
from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int, check_positive_float, check_probability
from quicdesign.errors import ParameterError, PayloadError
from quicdesign.randomness import raw_words

from ._common import generator, stream_seed
from .loop import RoundStep, run_steps
from .problems import client_batch_sizes
from .wire import BitCounter, _framed, _opened

__all__ = [
    "SIGN_RULES",
    "VoteWeights",
    "llr_weights",
    "weighted_vote",
    "encode_signs",
    "decode_signs",
    "encode_vote",
    "decode_vote",
    "run_signsgd",
    "normal_sign_error",
    "decoding_error",
    "decoding_error_monte_carlo",
    "hoeffding_bound",
]

SIGN_RULES = ("mv", "fv", "fv-oracle")
_ESTIMATORS = ("pooled", "per-coordinate")
_TIE_RULES = ("zero", "random")
_TIE_PURPOSE = "fl.signsgd.tie-coins"
_MAX_ENUMERATED_WORKERS = 22


def llr_weights(agreement, *, clip=10.0, eps=1e-5):
    """Clipped log-likelihood ratios ``clip(ln((a + eps) / (1 - a + eps)), -clip, clip)``."""
    agreement = np.asarray(agreement, dtype=np.float64)
    return np.clip(np.log((agreement + eps) / (1.0 - agreement + eps)), -clip, clip)


@dataclass
class VoteWeights:
    """Server-side agreement counts of FV (a small picklable state).

    Attributes
    ----------
    agreements, totals : numpy.ndarray
        ``(M,)`` (pooled) or ``(M, dim)`` (per-coordinate) discounted counts.
    """

    agreements: np.ndarray
    totals: np.ndarray

    @classmethod
    def zeros(cls, num_workers, dim, estimator="pooled"):
        """Empty counts for ``num_workers`` workers."""
        if estimator not in _ESTIMATORS:
            raise ParameterError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        shape = (num_workers,) if estimator == "pooled" else (num_workers, dim)
        return cls(np.zeros(shape), np.zeros(shape))

    def update(self, signs, decoded, forgetting=1.0):
        """Discount, then count agreements of ``(M, dim)`` signs with the decoded vote."""
        agree = signs == decoded
        decided = np.broadcast_to(decoded != 0, signs.shape)
        self.agreements *= forgetting
        self.totals *= forgetting
        if self.agreements.ndim == 1:
            self.agreements += agree.sum(axis=1)
            self.totals += decided.sum(axis=1)
        else:
            self.agreements += agree
            self.totals += decided

    def agreement_rates(self):
        """``A / N`` (0.5 where nothing has been counted)."""
        return np.divide(
            self.agreements, self.totals, out=np.full(self.totals.shape, 0.5), where=self.totals > 0
        )

    def weights(self, *, clip=10.0, eps=1e-5):
        """The clipped LLR weights of the current counts."""
        return llr_weights(self.agreement_rates(), clip=clip, eps=eps)


def weighted_vote(signs, weights=None, *, tie="zero", tie_seed=0):
    """Decode one sign per coordinate from ``(M, dim)`` votes in ``{-1, +1}``.

    Parameters
    ----------
    signs : numpy.ndarray
        ``(M, dim)`` votes.
    weights : numpy.ndarray, optional
        ``(M,)`` or ``(M, dim)``; None is majority vote.
    tie : {"zero", "random"}
        Tie rule (see the module docstring).
    tie_seed : int
        Round seed of the shared tie coins (``tie="random"``).

    Returns
    -------
    numpy.ndarray
        ``int8`` decoded signs; 0 marks a tie under ``tie="zero"``.
    """
    if tie not in _TIE_RULES:
        raise ParameterError(f"tie must be one of {_TIE_RULES}, got {tie!r}")
    signs = np.asarray(signs)
    if weights is None:
        score = signs.sum(axis=0, dtype=np.int64)
    else:
        weights = np.asarray(weights, dtype=np.float64)
        score = (weights[:, None] * signs if weights.ndim == 1 else weights * signs).sum(axis=0)
    decoded = np.sign(score).astype(np.int8)
    if tie == "random":
        ties = decoded == 0
        if ties.any():
            coins = _tie_coins(tie_seed, signs.shape[1])
            decoded[ties] = coins[ties]
    return decoded


def _tie_coins(seed, dim):
    words = raw_words(seed, 0, _TIE_PURPOSE, -(-dim // 64))
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), count=dim, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


#: Magics of the sign uplink and the vote downlink (docs/wire-format.md).
SIGNS_MAGIC = b"QDSU"
VOTE_MAGIC = b"QDSV"
_SIGNS_CONFIG = config_tag("signs", 1)
_VOTE_CONFIG = config_tag("vote", 1)


def encode_signs(gradients, *, round_seed=0, client_ids=None):
    """Pack each row's signs into a 1-bit-per-coordinate payload (bit set = negative).

    Each payload is the envelope (magic ``QDSU``; ``client_ids[j]``, row ``j``'s index by
    default) and ``ceil(dim / 8)`` bytes of :func:`quicdesign._wire.pack_codes` codes of
    width 1, so the payloads go through the one validated reader on the way back.
    """
    negative = np.atleast_2d(np.asarray(gradients) < 0)
    clients = range(len(negative)) if client_ids is None else client_ids
    payloads = []
    for row, client in zip(negative, clients, strict=True):
        writer = _framed(SIGNS_MAGIC, row.size, client, round_seed, _SIGNS_CONFIG)
        writer.write_codes(row.view(np.uint8), 1)
        payloads.append(writer.to_bytes())
    return payloads


def _read_signs(reader, dim, field):
    bits = reader.read_codes(1, dim, field)
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def decode_signs(payloads, dim, *, round_seed=0):
    """Unpack payloads from :func:`encode_signs` into an ``(M, dim)`` int8 array of +-1.

    ``PayloadError`` for a foreign, other-round, other-dimension, malformed or repeated
    client's payload.
    """
    rows, clients = [], set()
    for payload in payloads:
        reader, envelope = _opened(payload, SIGNS_MAGIC, "sign", dim, round_seed, _SIGNS_CONFIG)
        if envelope.client_id in clients:
            raise PayloadError(f"client {envelope.client_id} sent two sign payloads")
        clients.add(envelope.client_id)
        rows.append(_read_signs(reader, dim, "sign bits"))
        reader.expect_end()
    return np.array(rows, dtype=np.int8).reshape(len(rows), dim)


def encode_vote(decoded, *, round_seed=0):
    """Downlink payload: the envelope (magic ``QDSV``, client 0 = the server), sign bits,
    then uint32 indices of tied (zero) coordinates."""
    decoded = np.asarray(decoded)
    writer = _framed(VOTE_MAGIC, decoded.size, 0, round_seed, _VOTE_CONFIG)
    writer.write_codes((decoded < 0).view(np.uint8), 1)
    writer.write_array(np.flatnonzero(decoded == 0).astype("<u4"))
    return writer.to_bytes()


def decode_vote(payload, dim, *, round_seed=0):
    """Invert :func:`encode_vote` into an int8 vector in ``{-1, 0, +1}``."""
    reader, _ = _opened(payload, VOTE_MAGIC, "vote", dim, round_seed, _VOTE_CONFIG)
    decoded = _read_signs(reader, dim, "vote sign bits")
    if reader.remaining % 4:
        raise PayloadError(
            f"a vote payload for dim={dim} is {ENVELOPE_SIZE + -(-dim // 8)} bytes plus 4 per tie"
        )
    ties = reader.read_array("<u4", reader.remaining // 4, "tie indices")
    if ties.size and int(ties.max()) >= dim:
        raise PayloadError("a tie index is out of range")
    decoded[ties] = 0
    return decoded


@single_threaded_blas
def run_signsgd(
    problem,
    rule="fv",
    *,
    rounds,
    step_size,
    batch_size,
    warmup=50,
    clip=10.0,
    eps=1e-5,
    forgetting=1.0,
    estimator="pooled",
    tie="zero",
    track_truth=False,
    seed=0,
    record_every=1,
    callback=None,
    progress=None,
    label=None,
):
    """Train with signSGD-MV or signSGD-FV (every worker takes part in every round).

    Parameters
    ----------
    problem : Problem
        Objective and stochastic gradients.
    rule : {"mv", "fv", "fv-oracle"}
        Majority vote, federated (weighted) vote, or FV with weights learned from the
        exact gradient's sign (a baseline; needs ``problem.full_gradient``).
    rounds : int
        Number of rounds.
    step_size : float
        Step ``eta`` of ``x <- x - eta * v``.
    batch_size : int or sequence of int
        Per-worker batch sizes (unknown to the server); see :func:`split_batch_sizes`.
    warmup : int
        FV decodes by majority vote during the first ``warmup`` rounds.
    clip, eps : float
        LLR clipping level ``L`` and smoothing ``eps``.
    forgetting : float
        Discount ``lambda`` in ``(0, 1]`` applied to the counts every round.
    estimator : {"pooled", "per-coordinate"}
        One weight per worker, or one per worker and coordinate (released code).
    tie : {"zero", "random"}
        Tie rule.
    track_truth : bool
        Also count agreement with the exact gradient's sign (a diagnostic).
    seed : int
        Seeds mini-batches and the tie coins.
    record_every : int
        Record metrics every this many rounds (and after the last one).
    callback : callable, optional
        ``callback(round_index, model, vote_weights)`` after every round.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per round
        elsewhere.
    label : str, optional
        Run name.

    Returns
    -------
    RunHistory
        ``extras["weights"]`` holds the final learned weights and ``extras["state"]``
        the :class:`VoteWeights`; with the truth tracked, ``extras["truth_state"]``
        holds the counts of agreement with the exact gradient's sign (else None).
    """
    return run_steps(
        _SignSGDStep,
        problem,
        rounds=rounds,
        record_every=record_every,
        callback=callback,
        progress=progress,
        rule=rule,
        step_size=step_size,
        batch_size=batch_size,
        warmup=warmup,
        clip=clip,
        eps=eps,
        forgetting=forgetting,
        estimator=estimator,
        tie=tie,
        track_truth=track_truth,
        seed=seed,
        label=label,
    )


class _SignSGDStep(RoundStep):
    """signSGD state: the model, the vote counts and (optionally) the truth counts."""

    def __init__(
        self,
        problem,
        rule,
        *,
        step_size,
        batch_size,
        warmup,
        clip,
        eps,
        forgetting,
        estimator,
        tie,
        track_truth,
        seed,
        label,
    ):
        if rule not in SIGN_RULES:
            raise ParameterError(f"rule must be one of {SIGN_RULES}, got {rule!r}")
        if tie not in _TIE_RULES:
            raise ParameterError(f"tie must be one of {_TIE_RULES}, got {tie!r}")
        self.warmup = check_int(warmup, "warmup", 0)
        self.step_size = check_positive_float(step_size, "step_size")
        self.clip = check_positive_float(clip, "clip")
        self.eps = check_positive_float(eps, "eps")
        self.forgetting = check_probability(forgetting, "forgetting")
        self.problem, self.rule, self.tie, self.seed = problem, rule, tie, seed
        num_workers, dim = problem.num_clients, problem.dim
        self.batches = client_batch_sizes(batch_size, num_workers)
        self.everyone = np.arange(num_workers)
        self.state = VoteWeights.zeros(num_workers, dim, estimator)
        self.truth = None
        if rule == "fv-oracle" or track_truth:
            if not callable(getattr(problem, "full_gradient", None)):
                raise ParameterError(f"{rule} with the truth tracked needs problem.full_gradient")
            self.truth = VoteWeights.zeros(num_workers, dim, estimator)
        self.learned = self.truth if rule == "fv-oracle" else self.state
        self.counter = BitCounter(num_workers)
        self.label = label or f"signsgd-{rule}"
        self.config = {
            "rule": rule,
            "estimator": estimator,
            "warmup": self.warmup,
            "step_size": self.step_size,
            "batch_sizes": "/".join(map(str, self.batches)),
            "seed": seed,
        }
        self.data_rng = generator(seed, "minibatches")
        self.current = problem.initial_point(seed).astype(np.float64)

    def model(self):
        return self.current

    def extras(self):
        return {
            "weights": self.learned.weights(clip=self.clip, eps=self.eps),
            "state": self.state,
            "truth_state": self.truth,
            "model": self.current,
        }

    def step(self, t):
        problem, everyone, dim = self.problem, self.everyone, self.problem.dim
        grads = problem.gradients(self.current, everyone, self.batches, self.data_rng)
        uploads = encode_signs(grads)
        self.counter.add_upload(everyone, uploads)
        signs = decode_signs(uploads, dim)
        weights = None
        if self.rule != "mv" and t >= self.warmup:
            weights = self.learned.weights(clip=self.clip, eps=self.eps)
        tie_seed = stream_seed(self.seed, "ties", t)
        decoded = weighted_vote(signs, weights, tie=self.tie, tie_seed=tie_seed)
        payload = encode_vote(decoded)
        self.counter.add_download(everyone, payload)
        if self.truth is not None:  # the sign at the model the gradients were taken at
            exact_signs = np.sign(problem.full_gradient(self.current))
            self.truth.update(signs, exact_signs, self.forgetting)
        self.current = self.current - self.step_size * decode_vote(payload, dim)
        self.state.update(signs, decoded, self.forgetting)
        return self.current, self.state


def _normal_cdf(x):
    x = np.asarray(x, dtype=np.float64)
    # math.erfc is exact to an ulp; M values at most, so the Python-level map is cheap
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-x / math.sqrt(2.0))


def normal_sign_error(snr, batch_sizes):
    """Sign-flip probabilities ``Phi(-snr * sqrt(B_m))`` under Gaussian gradient noise."""
    snr = check_positive_float(snr, "snr", allow_zero=True)
    return _normal_cdf(-snr * np.sqrt(np.asarray(batch_sizes, dtype=np.float64)))


def _check_flip_inputs(flip_probabilities, weights):
    p = np.asarray(flip_probabilities, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any((p < 0) | (p > 1)):
        raise ParameterError("flip probabilities must be a non-empty 1-D array in [0, 1]")
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != p.shape:
        raise ParameterError(f"weights must have shape {p.shape}, got {w.shape}")
    return p, w


def decoding_error(flip_probabilities, weights=None):
    """Exact probability that a weighted vote decodes the wrong sign.

    Enumerates the ``2**M`` flip patterns (``M <= 22``); a tie counts one half. Workers
    flip independently; the true sign is +1 without loss of generality.

    Parameters
    ----------
    flip_probabilities : array_like
        ``(M,)`` probability that each worker sends the wrong sign.
    weights : array_like, optional
        ``(M,)`` vote weights; None is majority vote.

    Returns
    -------
    float
        ``P(sum_m w_m s_m < 0) + P(sum_m w_m s_m = 0) / 2``.
    """
    p, w = _check_flip_inputs(flip_probabilities, weights)
    m = p.size
    if m > _MAX_ENUMERATED_WORKERS:
        raise ParameterError(
            f"exact enumeration is limited to {_MAX_ENUMERATED_WORKERS} "
            "workers; use decoding_error_monte_carlo"
        )
    flips = ((np.arange(1 << m)[:, None] >> np.arange(m)) & 1).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_prob = flips @ np.log(p) + (1 - flips) @ np.log1p(-p)
    prob = np.exp(log_prob)
    score = (1 - 2 * flips) @ w
    # scores are sums of M terms: treat rounding-level values as exact ties
    tol = 1e-12 * np.abs(w).sum()
    return float(prob[score < -tol].sum() + 0.5 * prob[np.abs(score) <= tol].sum())


def decoding_error_monte_carlo(flip_probabilities, weights=None, *, draws=100_000, seed=0):
    """Monte-Carlo estimate of :func:`decoding_error` (same tie convention)."""
    p, w = _check_flip_inputs(flip_probabilities, weights)
    draws = check_int(draws, "draws", 1)
    flips = generator(seed, "decoding-monte-carlo").random((draws, p.size)) < p
    score = np.where(flips, -1.0, 1.0) @ w
    tol = 1e-12 * np.abs(w).sum()
    return float(np.mean(score < -tol) + 0.5 * np.mean(np.abs(score) <= tol))


def hoeffding_bound(flip_probabilities, weights=None):
    """Hoeffding bound ``exp(-mu**2 / (2 sum w**2))`` with ``mu = sum w (1 - 2 p)``.

    Returns 1 when ``mu <= 0`` (the bound says nothing there).
    """
    p, w = _check_flip_inputs(flip_probabilities, weights)
    mu = float(np.dot(w, 1 - 2 * p))
    if mu <= 0:
        return 1.0
    return float(np.exp(-(mu**2) / (2 * np.dot(w, w))))
