"""FedSGD with per-tensor compression in both directions, and bidirectional CosSGD.

Each round the participating clients compute a stochastic gradient at the model they
hold, compress it tensor by tensor (uplink) and the server averages the decoded tensors
and steps its exact model. The downlink then brings every client's model up to date:

``"none"``
    The model is sent uncompressed (float32).
``"update"``
    The server keeps a copy of the client-visible model and compresses the difference
    to it tensor by tensor, so quantization errors are corrected in later rounds instead
    of accumulating (clients do not drift).
``"weights"``
    The absolute weights are compressed each round (what CosSGD's abstract describes).

The downlink is broadcast to every client each round, so absent clients stay in sync;
metrics are those of the client-visible model. Compressors may be biased here (CosSGD
with deterministic rounding is).
"""

from __future__ import annotations

import numpy as np

from quicdesign._progress import progress as reporter
from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int, check_positive_float
from quicdesign.errors import ParameterError

from ._common import generator, stream_seed
from .history import RunHistory
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
        Server learning rate.
    batch_size : int, sequence of int or None
        Client mini-batch sizes.
    uplink, downlink : Compressor, optional
        Protocol compressors (None: float32).
    downlink_mode : {"none", "update", "weights"}
        What goes down (see the module docstring); ``"none"`` ignores ``downlink``.
    per_tensor : bool
        Compress each tensor separately (CosSGD's choice) or the flat vector.
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
    if downlink_mode not in DOWNLINK_MODES:
        raise ParameterError(
            f"downlink_mode must be one of {DOWNLINK_MODES}, got {downlink_mode!r}"
        )
    if not isinstance(participation, Participation):
        raise ParameterError("participation must be a Participation")
    rounds = check_int(rounds, "rounds", 0)
    record_every = check_int(record_every, "record_every", 1)
    step = check_positive_float(step_size, "step_size")
    raw = RawFloats("float32")
    uplink = raw if uplink is None else uplink
    downlink = raw if downlink is None or downlink_mode == "none" else downlink
    num_clients = problem.num_clients
    tensors = [s for _, s in problem.tensor_slices] if per_tensor else [slice(0, problem.dim)]
    batches = client_batch_sizes(batch_size, num_clients)
    everyone = np.arange(num_clients)
    counter = BitCounter(num_clients)
    history = RunHistory(
        label or "fedsgd",
        {
            "uplink": "fp32" if uplink is raw else describe_compressor(uplink),
            "downlink": "fp32" if downlink is raw else describe_compressor(downlink),
            "downlink_mode": downlink_mode,
            "step_size": step,
            "seed": seed,
        },
        counter,
    )
    data_rng = generator(seed, "minibatches")
    coin_rng = generator(seed, "compressor-coins")
    sampling_rng = generator(seed, "participation")

    server_model = problem.initial_point(seed).astype(np.float64)
    # the initial model derives from the shared seed, so it is not sent
    visible = server_model.copy()
    history.record(0, problem.metrics(visible))
    bar = reporter(rounds, history.label, progress, unit="round")
    for t in range(rounds):
        active = participation.sample(num_clients, sampling_rng)
        if active.size:
            grads = problem.gradients(visible, active, batches[active], data_rng)
            decoded = np.empty_like(grads)
            for index, part in enumerate(tensors):
                decoded[:, part] = send_each(
                    uplink,
                    grads[:, part],
                    active,
                    round_seed=stream_seed(seed, "up", t, index),
                    rng=coin_rng,
                    counter=counter,
                )
            server_model = server_model - step * decoded.mean(axis=0)

        target = server_model - visible if downlink_mode == "update" else server_model
        received = np.empty_like(server_model)
        for index, part in enumerate(tensors if downlink is not raw else [slice(None)]):
            received[part] = broadcast(
                downlink,
                target[part],
                everyone,
                round_seed=stream_seed(seed, "down", t, index),
                rng=coin_rng,
                counter=counter,
            )
        visible = visible + received if downlink_mode == "update" else received

        if callback is not None:
            callback(t, server_model, visible)
        if (t + 1) % record_every == 0 or t + 1 == rounds:
            history.record(t + 1, problem.metrics(visible))
        bar.update()
    bar.close()
    history.extras.update(server_model=server_model, model=visible)
    return history


def run_cossgd(problem, *, bits_up=4, bits_down=4, downlink_mode="update", **options):
    """Bidirectional CosSGD: cosine quantization per tensor on the uplink and downlink.

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
