"""Bidirectional compression with a preserved central model (MCM) and its baselines.

Algorithms (Philippenko & Dieuleveut, NeurIPS 2021; Artemis; Diana):

``sgd``
    Uncompressed both ways (an uplink compressor may be given: compressed SGD without
    memory).
``diana``
    Uplink compressed with memories ``h^i``; the model goes down uncompressed.
``artemis``
    Diana's uplink; the server compresses the aggregated gradient downwards and *every*
    party, the server included, steps with the decoded message.
``mcm``
    Diana's uplink; the server keeps the exact model ``w`` and broadcasts
    ``Omega = C_dwn(w - H)``; workers differentiate at ``w_hat = H + Omega`` and both
    sides update the memory ``H <- H + alpha_dwn * Omega``.
``rand-mcm``
    MCM with one downlink message and memory ``H^i`` per worker (required under partial
    participation: a worker that misses a broadcast would lose its mirror of ``H``).
``mc``
    MCM without downlink memory (``alpha_dwn = 0``): ``w_hat = C_dwn(w)``.

Round order (one uniform order for all algorithms): the server sends the model to the
round's workers, workers compute gradients at their local model and send compressed
differences to their memories, the server aggregates and steps. For MCM this is the
paper's order with the round boundary placed before the downlink.

Partial participation: only the round's workers exchange messages and update memories
(both sides); the aggregate ``mean_i h^i + sum_{i in S} q^i / (N pi)`` stays unbiased.
Artemis broadcasts its step to every worker so that all copies of the model stay equal.

Memories live twice, on the workers and on the server, in separate arrays updated by the
same function :func:`memory_step` from the same decoded message, so they stay
bit-identical; the run's ``callback`` lets tests check that after every round. Decoding is
a pure function of the payload bytes, so each payload is decoded once and the result fed
to both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int, check_positive_float
from quicdesign.errors import ParameterError

from ._common import generator, stream_seed
from .loop import RoundStep, run_steps
from .participation import FULL_PARTICIPATION, Participation
from .problems import client_batch_sizes
from .wire import (
    BitCounter,
    RawFloats,
    broadcast,
    compressor_omega,
    describe_compressor,
    send_each,
)

__all__ = [
    "MCM_ALGORITHMS",
    "MCMServerState",
    "MCMWorkerStates",
    "default_memory_rate",
    "memory_step",
    "run_mcm",
]

MCM_ALGORITHMS = ("sgd", "diana", "artemis", "mcm", "rand-mcm", "mc")
_DOWNLINK_COMPRESSED = ("artemis", "mcm", "rand-mcm", "mc")
_DOWNLINK_MEMORY = ("mcm", "rand-mcm", "mc")


def default_memory_rate(omega) -> float:
    """The memory rate ``1 / (2 (omega + 1))`` of the MCM paper's code."""
    return 1.0 / (2.0 * (float(omega) + 1.0))


def memory_step(memory, message, rate):
    """``memory + rate * message``: the one update both sides apply to every memory."""
    return memory + rate * message


@dataclass
class MCMServerState:
    """What the server holds.

    Attributes
    ----------
    model : numpy.ndarray
        The exact central model ``w`` (``(dim,)``), never compressed except in Artemis.
    up_memories : numpy.ndarray
        ``(N, dim)`` mirrors of the workers' uplink memories ``h^i``.
    down_memories : numpy.ndarray
        ``(1, dim)`` downlink memory ``H`` or ``(N, dim)`` per-worker ``H^i`` (Rand-MCM).
    """

    model: np.ndarray
    up_memories: np.ndarray
    down_memories: np.ndarray


@dataclass
class MCMWorkerStates:
    """What the workers hold, stacked over workers (row ``i`` is worker ``i``).

    Attributes
    ----------
    up_memories : numpy.ndarray
        ``(N, dim)`` uplink memories ``h^i``.
    down_memories : numpy.ndarray
        ``(N, dim)`` each worker's mirror of ``H`` (or of its ``H^i``).
    local_models : numpy.ndarray
        ``(N, dim)`` the model each worker differentiates at (``w_hat^i``).
    """

    up_memories: np.ndarray
    down_memories: np.ndarray
    local_models: np.ndarray


def _check_unbiased(compressor, direction):
    if isinstance(compressor, RawFloats):  # the exact channel
        return
    if not getattr(getattr(compressor, "properties", None), "unbiased", False):
        raise ParameterError(
            f"the {direction} compressor {compressor!r} is biased; the MCM family's "
            "guarantees need unbiased compressors"
        )


def _resolve_rates(algorithm, uplink, downlink, dim, up_rate, down_rate):
    if algorithm == "sgd":
        if up_rate not in (None, 0, 0.0):
            raise ParameterError("sgd has no uplink memory; leave up_rate unset")
        up = 0.0
    elif up_rate is None:
        up = default_memory_rate(compressor_omega(uplink, dim))
    else:
        up = check_positive_float(up_rate, "up_rate", allow_zero=True)
    if algorithm == "mc":
        if down_rate not in (None, 0, 0.0):
            raise ParameterError("mc is MCM without downlink memory; down_rate must be 0")
        down = 0.0
    elif algorithm in ("mcm", "rand-mcm"):
        if down_rate is None:
            down = default_memory_rate(compressor_omega(downlink, dim))
        else:
            down = check_positive_float(down_rate, "down_rate", allow_zero=True)
    else:
        if down_rate is not None:
            raise ParameterError(f"{algorithm} has no downlink memory; leave down_rate unset")
        down = 0.0
    return up, down


@single_threaded_blas
def run_mcm(
    problem,
    algorithm="mcm",
    *,
    rounds,
    step_size,
    uplink=None,
    downlink=None,
    batch_size=16,
    participation=FULL_PARTICIPATION,
    up_rate=None,
    down_rate=None,
    smart_init=True,
    step_decay=None,
    seed=0,
    record_every=1,
    callback=None,
    progress=None,
    label=None,
):
    """Train with an algorithm of the MCM family and record the server model.

    Parameters
    ----------
    problem : Problem
        Objective and stochastic gradients.
    algorithm : {"sgd", "diana", "artemis", "mcm", "rand-mcm", "mc"}
        See the module docstring.
    rounds : int
        Number of rounds.
    step_size : float
        Step ``gamma`` (constant unless ``step_decay`` is given).
    uplink, downlink : Compressor, optional
        Unbiased protocol compressors. ``None`` means uncompressed float32 (the
        simulator's exact channel at the usual 32 bits per coordinate); the
        downlink of ``sgd`` and ``diana`` is always uncompressed, the other algorithms
        need a downlink compressor.
    batch_size : int, sequence of int or None
        Per-worker mini-batch size (None: full local gradients, no sampling noise).
    participation : Participation
        Client sampling; the aggregate is the unbiased ``mean(h) + sum_S q^i / (N pi)``.
        ``mcm`` needs full participation (use ``rand-mcm``).
    up_rate, down_rate : float, optional
        Memory rates; default ``1 / (2 (omega + 1))`` from each compressor's ``omega``.
    smart_init : bool
        Start ``h^i`` at each worker's first gradient, sent uncompressed (float32) and
        counted as upload.
    step_decay : int, optional
        Decreasing step ``gamma * t0 / (t0 + t)`` with ``t0 = step_decay`` (round ``t``
        from 0): a constant step stops at a noise floor, an O(1/t) step keeps going
        toward the optimum (strongly convex objectives).
    seed : int
        Seeds mini-batches, participation, compressor coins and round seeds.
    record_every : int
        Record metrics every this many rounds (and after the last one).
    callback : callable, optional
        ``callback(round_index, server_state, worker_states)`` after every round.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per round
        elsewhere.
    label : str, optional
        Run name (default: the algorithm).

    Returns
    -------
    RunHistory
        Metrics of the server model; ``extras`` holds the final ``server`` and ``workers``
        states and the memory rates used.
    """
    return run_steps(
        _MCMStep,
        problem,
        rounds=rounds,
        record_every=record_every,
        callback=callback,
        progress=progress,
        algorithm=algorithm,
        step_size=step_size,
        uplink=uplink,
        downlink=downlink,
        batch_size=batch_size,
        participation=participation,
        up_rate=up_rate,
        down_rate=down_rate,
        smart_init=smart_init,
        step_decay=step_decay,
        seed=seed,
        label=label,
    )


class _MCMStep(RoundStep):
    """State of the MCM family: the server's and the workers' models and memories."""

    def __init__(
        self,
        problem,
        algorithm,
        *,
        step_size,
        uplink,
        downlink,
        batch_size,
        participation,
        up_rate,
        down_rate,
        smart_init,
        step_decay,
        seed,
        label,
    ):
        if algorithm not in MCM_ALGORITHMS:
            raise ParameterError(f"unknown algorithm {algorithm!r}; choose from {MCM_ALGORITHMS}")
        self.base_step = check_positive_float(step_size, "step_size")
        self.decay = None if step_decay is None else check_int(step_decay, "step_decay", 1)
        if not isinstance(participation, Participation):
            raise ParameterError("participation must be a Participation")
        if algorithm == "mcm" and not participation.is_full:
            raise ParameterError(
                "mcm keeps one downlink memory that absent workers would lose; "
                "use rand-mcm under partial participation"
            )
        exact = RawFloats("float32")
        uplink = exact if uplink is None else uplink
        if algorithm in _DOWNLINK_COMPRESSED:
            if downlink is None:
                raise ParameterError(f"{algorithm} needs a downlink compressor")
        elif downlink is not None:
            raise ParameterError(f"{algorithm} sends the model uncompressed; leave downlink unset")
        _check_unbiased(uplink, "uplink")
        if downlink is not None:
            _check_unbiased(downlink, "downlink")

        num_clients, dim = problem.num_clients, problem.dim
        self.alpha_up, self.alpha_down = _resolve_rates(
            algorithm, uplink, downlink, dim, up_rate, down_rate
        )
        self.problem, self.algorithm, self.seed = problem, algorithm, seed
        self.exact, self.uplink, self.downlink = exact, uplink, downlink
        self.participation = participation
        self.batches = client_batch_sizes(batch_size, num_clients)
        self.inclusion = participation.inclusion_probability(num_clients)
        self.everyone = np.arange(num_clients)

        start = problem.initial_point(seed).astype(np.float64)
        # H starts at w0 on both sides, so the first w_hat = w0 + C(0) = w0
        per_worker_down = 1 if algorithm in ("mcm", "mc") else num_clients
        self.server = MCMServerState(
            start.copy(), np.zeros((num_clients, dim)), np.tile(start, (per_worker_down, 1))
        )
        self.workers = MCMWorkerStates(
            np.zeros((num_clients, dim)),
            np.tile(start, (num_clients, 1)),
            np.tile(start, (num_clients, 1)),
        )
        self.counter = BitCounter(num_clients)
        self.label = label or algorithm
        self.config = {
            "algorithm": algorithm,
            "uplink": describe_compressor(uplink),
            "downlink": describe_compressor(downlink if downlink is not None else exact),
            "step_size": self.base_step,
            **({} if self.decay is None else {"step_decay": self.decay}),
            "seed": seed,
        }
        self.data_rng = generator(seed, "minibatches")
        self.coin_rng = generator(seed, "compressor-coins")
        self.sampling_rng = generator(seed, "participation")

        if smart_init and algorithm != "sgd":
            models = self.workers.local_models
            first = problem.gradients(models, self.everyone, self.batches, self.data_rng)
            sent = send_each(
                exact,
                first,
                self.everyone,
                round_seed=stream_seed(seed, "smart-init"),
                rng=self.coin_rng,
                counter=self.counter,
            )
            self.workers.up_memories[:] = sent
            self.server.up_memories[:] = sent

    def model(self):
        return self.server.model

    def extras(self):
        return {
            "up_rate": self.alpha_up,
            "down_rate": self.alpha_down,
            "server": self.server,
            "workers": self.workers,
        }

    def _downlink(self, active, down_seed):
        """1. the model goes down to this round's workers."""
        algorithm, server, workers = self.algorithm, self.server, self.workers
        alpha_down, coins, counter = self.alpha_down, self.coin_rng, self.counter
        if algorithm in ("mcm", "mc"):
            omega = broadcast(
                self.downlink,
                server.model - server.down_memories[0],
                active,
                round_seed=down_seed,
                rng=coins,
                counter=counter,
            )
            workers.local_models[active] = workers.down_memories[active] + omega
            workers.down_memories[active] = memory_step(
                workers.down_memories[active], omega, alpha_down
            )
            server.down_memories[0] = memory_step(server.down_memories[0], omega, alpha_down)
        elif algorithm == "rand-mcm":
            omegas = send_each(
                self.downlink,
                server.model - server.down_memories[active],
                active,
                round_seed=down_seed,
                rng=coins,
                counter=counter,
                direction="down",
            )
            workers.local_models[active] = workers.down_memories[active] + omegas
            workers.down_memories[active] = memory_step(
                workers.down_memories[active], omegas, alpha_down
            )
            server.down_memories[active] = memory_step(
                server.down_memories[active], omegas, alpha_down
            )
        elif algorithm in ("sgd", "diana"):
            workers.local_models[active] = broadcast(
                self.exact, server.model, active, round_seed=down_seed, rng=coins, counter=counter
            )
        # artemis: every worker already applied the last broadcast step

    def step(self, t):
        decay, base_step = self.decay, self.base_step
        step = base_step if decay is None else base_step * decay / (decay + t)
        server, workers, seed = self.server, self.workers, self.seed
        num_clients, coins, counter = self.problem.num_clients, self.coin_rng, self.counter
        active = self.participation.sample(num_clients, self.sampling_rng)
        up_seed = stream_seed(seed, "uplink", t)
        down_seed = stream_seed(seed, "downlink", t)
        self._downlink(active, down_seed)

        # 2. gradients at each worker's own model
        grads = self.problem.gradients(
            workers.local_models[active], active, self.batches[active], self.data_rng
        )

        # 3. uplink: compressed difference to the memory
        scale = num_clients * self.inclusion
        if self.algorithm == "sgd":
            sent = send_each(
                self.uplink, grads, active, round_seed=up_seed, rng=coins, counter=counter
            )
            estimate = sent.sum(axis=0) / scale
        else:
            sent = send_each(
                self.uplink,
                grads - workers.up_memories[active],
                active,
                round_seed=up_seed,
                rng=coins,
                counter=counter,
            )
            estimate = server.up_memories.mean(axis=0) + sent.sum(axis=0) / scale
            alpha_up = self.alpha_up
            workers.up_memories[active] = memory_step(workers.up_memories[active], sent, alpha_up)
            server.up_memories[active] = memory_step(server.up_memories[active], sent, alpha_up)

        # 4. the step
        if self.algorithm == "artemis":
            omega = broadcast(
                self.downlink,
                estimate,
                self.everyone,
                round_seed=down_seed,
                rng=coins,
                counter=counter,
            )
            server.model = server.model - step * omega
            workers.local_models = workers.local_models - step * omega
        else:
            server.model = server.model - step * estimate
        return server, workers
