"""FedSGD / FedAvg with per-tensor compression in both directions, and bidirectional CosSGD.

Each round the participating clients compute a stochastic gradient at the model they
hold (FedSGD) or take ``local_steps`` SGD steps from it and form the pseudo-gradient,
held model minus local model (FedAvg), compress it tensor by tensor (uplink); the server
averages the decoded tensors and steps its exact model. The downlink then brings every
client's model up to date:

``"none"``
    The model is sent uncompressed (float32).
``"update"``
    The server keeps a copy of the client-visible model and compresses the difference
    to it tensor by tensor, so quantization errors are corrected in later rounds instead
    of accumulating (clients do not drift). Our extension, not CosSGD's protocol.
``"weights"``
    The absolute weights are compressed each round (CosSGD's protocol, with FedAvg
    pseudo-gradients up).

The downlink is broadcast to every client each round, so absent clients stay in sync;
metrics are those of the client-visible model. Compressors may be biased here (CosSGD
with deterministic rounding is).
"""

from __future__ import annotations

import numpy as np

from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int, check_positive_float
from quicdesign.errors import ParameterError

from ._common import generator, stream_seed
from .loop import RoundStep, run_steps
from .participation import FULL_PARTICIPATION, Participation
from .problems import client_batch_sizes
from .wire import BitCounter, RawFloats, broadcast, describe_compressor, send_each

__all__ = ["DOWNLINK_MODES", "run_fedsgd", "run_cossgd"]

DOWNLINK_MODES = ("none", "update", "weights")


@single_threaded_blas
def run_fedsgd(
    problem,
    *,
    rounds,
    step_size,
    batch_size=32,
    uplink=None,
    downlink=None,
    downlink_mode="update",
    per_tensor=True,
    local_steps=None,
    local_step_size=None,
    participation=FULL_PARTICIPATION,
    seed=0,
    record_every=1,
    callback=None,
    progress=None,
    label=None,
):
    """Federated SGD with optional compression of client gradients and of the downlink.

    Parameters
    ----------
    problem : Problem
        Objective; ``tensor_slices`` defines the tensors.
    rounds : int
        Number of rounds.
    step_size : float
        Server learning rate, applied to the mean decoded upload.
    batch_size : int, sequence of int or None
        Client mini-batch sizes.
    uplink, downlink : Compressor, optional
        Protocol compressors (None: float32).
    downlink_mode : {"none", "update", "weights"}
        What goes down (see the module docstring); ``"none"`` ignores ``downlink``.
    per_tensor : bool
        Compress each tensor separately (CosSGD's choice) or the flat vector.
    local_steps : int, optional
        None: FedSGD, clients upload one stochastic gradient. An int: FedAvg, clients
        take this many local SGD steps from the model they hold and upload the
        pseudo-gradient (held model minus local model); the usual server step is then 1.
    local_step_size : float, optional
        Client learning rate of the local steps (required with ``local_steps``).
    participation : Participation
        Client sampling.
    seed : int
        Seeds the initial model, mini-batches, sampling, coins and round seeds.
    record_every : int
        Record metrics every this many rounds (and after the last one).
    callback : callable, optional
        ``callback(round_index, server_model, visible_model)`` after every round.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per round
        elsewhere.
    label : str, optional
        Run name.

    Returns
    -------
    RunHistory
        Metrics of the client-visible model; ``extras`` has both final models.
    """
    return run_steps(
        _FedSGDStep,
        problem,
        rounds=rounds,
        record_every=record_every,
        callback=callback,
        progress=progress,
        step_size=step_size,
        batch_size=batch_size,
        uplink=uplink,
        downlink=downlink,
        downlink_mode=downlink_mode,
        per_tensor=per_tensor,
        local_steps=local_steps,
        local_step_size=local_step_size,
        participation=participation,
        seed=seed,
        label=label,
    )


class _FedSGDStep(RoundStep):
    """FedSGD/FedAvg state: the exact server model and the client-visible one."""

    def __init__(
        self,
        problem,
        *,
        step_size,
        batch_size,
        uplink,
        downlink,
        downlink_mode,
        per_tensor,
        local_steps,
        local_step_size,
        participation,
        seed,
        label,
    ):
        if downlink_mode not in DOWNLINK_MODES:
            raise ParameterError(
                f"downlink_mode must be one of {DOWNLINK_MODES}, got {downlink_mode!r}"
            )
        if not isinstance(participation, Participation):
            raise ParameterError("participation must be a Participation")
        step = check_positive_float(step_size, "step_size")
        local_step = None
        if local_steps is not None:
            local_steps = check_int(local_steps, "local_steps", 1)
            local_step = check_positive_float(local_step_size, "local_step_size")
        raw = RawFloats("float32")
        self.uplink = raw if uplink is None else uplink
        self.downlink = raw if downlink is None or downlink_mode == "none" else downlink
        self.raw, self.problem, self.step_size, self.mode = raw, problem, step, downlink_mode
        self.local_steps, self.local_step = local_steps, local_step
        self.participation, self.seed = participation, seed
        num_clients = problem.num_clients
        slices = [s for _, s in problem.tensor_slices] if per_tensor else [slice(0, problem.dim)]
        self.tensors = slices
        self.batches = client_batch_sizes(batch_size, num_clients)
        self.everyone = np.arange(num_clients)
        self.counter = BitCounter(num_clients)
        self.label = label or "fedsgd"
        self.config = {
            "uplink": "fp32" if self.uplink is raw else describe_compressor(self.uplink),
            "downlink": "fp32" if self.downlink is raw else describe_compressor(self.downlink),
            "downlink_mode": downlink_mode,
            "step_size": step,
            "local_steps": local_steps or 0,
            "seed": seed,
        }
        self.data_rng = generator(seed, "minibatches")
        self.coin_rng = generator(seed, "compressor-coins")
        self.sampling_rng = generator(seed, "participation")
        self.server_model = problem.initial_point(seed).astype(np.float64)
        # the initial model derives from the shared seed, so it is not sent
        self.visible = self.server_model.copy()

    def model(self):
        return self.visible

    def extras(self):
        return {"server_model": self.server_model, "model": self.visible}

    def _uploads(self, active):
        problem, batches = self.problem, self.batches[active]
        if self.local_steps is None:
            return problem.gradients(self.visible, active, batches, self.data_rng)
        local = np.repeat(self.visible[None], active.size, axis=0)
        for _ in range(self.local_steps):
            local -= self.local_step * problem.gradients(local, active, batches, self.data_rng)
        return self.visible[None] - local

    def step(self, t):
        seed, counter, coins = self.seed, self.counter, self.coin_rng
        active = self.participation.sample(self.problem.num_clients, self.sampling_rng)
        if active.size:
            uploads = self._uploads(active)
            decoded = np.empty_like(uploads)
            for index, part in enumerate(self.tensors):
                decoded[:, part] = send_each(
                    self.uplink,
                    uploads[:, part],
                    active,
                    round_seed=stream_seed(seed, "up", t, index),
                    rng=coins,
                    counter=counter,
                )
            self.server_model = self.server_model - self.step_size * decoded.mean(axis=0)

        update = self.mode == "update"
        target = self.server_model - self.visible if update else self.server_model
        received = np.empty_like(self.server_model)
        parts = self.tensors if self.downlink is not self.raw else [slice(None)]
        for index, part in enumerate(parts):
            received[part] = broadcast(
                self.downlink,
                target[part],
                self.everyone,
                round_seed=stream_seed(seed, "down", t, index),
                rng=coins,
                counter=counter,
            )
        self.visible = self.visible + received if update else received
        return self.server_model, self.visible


def run_cossgd(problem, *, bits_up=4, bits_down=4, downlink_mode="update", **options):
    """Bidirectional CosSGD: cosine quantization per tensor on the uplink and downlink.

    The paper's protocol is ``downlink_mode="weights"`` with FedAvg
    (``local_steps=..., local_step_size=..., step_size=1.0``); the default ``"update"``
    downlink is our error-corrected extension.

    Parameters
    ----------
    problem : Problem
        Objective.
    bits_up, bits_down : int
        Bits per entry in each direction.
    downlink_mode : {"none", "update", "weights"}
        ``"update"`` quantizes the global update against the clients' model,
        ``"weights"`` the absolute weights, ``"none"`` keeps the downlink in float32.
    **options
        Passed to :func:`run_fedsgd` (``rounds``, ``step_size``, ...) and, for the keys
        ``clip`` and ``rounding``, to the CosSGD compressor.

    Returns
    -------
    RunHistory
    """
    from quicdesign.compressors import CosSGD  # the compressor package is imported on use

    quantizer_options = {k: options.pop(k) for k in ("clip", "rounding") if k in options}
    options.setdefault("label", f"cossgd-{bits_up}/{bits_down}-{downlink_mode}")
    return run_fedsgd(
        problem,
        uplink=CosSGD(bits=bits_up, **quantizer_options),
        downlink=CosSGD(bits=bits_down, **quantizer_options),
        downlink_mode=downlink_mode,
        per_tensor=True,
        **options,
    )
