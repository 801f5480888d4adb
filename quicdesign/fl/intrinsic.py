"""Intrinsic gradient compression (Melas-Kyriazi & Wang, arXiv 2112.02656).

The model is ``theta = theta_0 + sum_v A_v z_v`` with ``A_v in R^{D x d}`` regenerated
from a shared seed on every client and on the server (never sent). A client uploads
``A_v^T g`` (``d`` floats; by the chain rule the gradient in ``z_v``); the server averages
and steps ``z_v <- z_v - step * mean``.

Variants
--------
``static``
    One subspace for the whole run.
``k-subspace``
    ``K`` subspaces; step ``t`` updates subspace ``t mod K`` (or one drawn from the
    shared seed) and the model sums all ``K``.
``time-varying``
    A new subspace every ``period`` steps; at a period boundary the server folds
    ``theta_base <- theta_base + A_e z_e`` and restarts ``z`` at 0. The z-space optimizer
    has no state (plain SGD), so nothing else needs resetting.

Projection normalization
------------------------
Columns have unit norm (in expectation for the dense Gaussian, exactly for the SRHT when
``D`` is a power of two), so ``A A^T`` is (close to) an orthogonal projection with
``E[A A^T] = (d / D) I``: a step never exceeds the full-space step, and a learning rate
stable for full training is stable here. Progress per step shrinks roughly like ``d / D``,
so larger learning rates than full training usually pay off.

Dense Gaussian (spec)
    Words ``raw_words(projection_seed, index, "fl.intrinsic.dense", 2 * ceil(D d / 2))``;
    the first half ``w1`` and second half ``w2`` give ``u1 = ((w1 >> 11) + 0.5) / 2**53``
    and ``u2 = (w2 >> 11) / 2**53``; with ``r = sqrt(-2 ln u1)`` the normals are
    ``r cos(2 pi u2)`` followed by ``r sin(2 pi u2)``, truncated to ``D d`` and laid out
    row-major as ``(D, d)``; ``A = G / sqrt(D)`` (optionally orthonormalized by QR with a
    positive diagonal of R).
SRHT (spec)
    ``D' = 2**ceil(log2 D)``; signs: bit ``j`` of ``raw_words(projection_seed, index,
    "fl.intrinsic.srht-signs", ceil(D' / 64))`` (least significant first, set means -1);
    positions: the first ``d`` entries of the stable argsort of
    ``raw_words(projection_seed, index, "fl.intrinsic.srht-positions", D')``.
    ``A z = crop_D(diag(s) H scatter_P(z))`` and ``A^T g = gather_P(H diag(s) pad(g))`` with
    the orthonormal FWHT of :mod:`quicdesign.rotation`.

Bandwidth accounting
--------------------
Floats are sent at ``wire_dtype`` precision (``float32``: 32 bits each), framed like
every payload by the 21-byte envelope (:class:`~quicdesign.fl.RawFloats`; a download
with nothing to send is no message). Upload: ``d`` floats per participating client per
step. Download: at the start of a step a
participating client receives exactly the z-vectors that changed since it last synced
(``A`` and ``theta_0`` derive from seeds and cost nothing), or the whole model (``D``
floats) when that is smaller. A client that synced in the previous step of a static run
therefore downloads ``d`` floats; one that missed periods of a time-varying run
downloads each missed period's final ``z``. ``stateless_clients=True`` models clients that
keep nothing between steps (they need every non-zero vector: ``K d`` for K-subspace).
The server keeps ``z`` at wire precision so that every client's copy is bit-identical to
the server's. Gradients are evaluated at the server's ``theta``; a client that received
the whole model in float32 holds it rounded to float32 (an ulp-level difference the
simulation ignores).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from quicdesign._threads import single_threaded_blas
from quicdesign._validate import check_int, check_positive_float
from quicdesign.errors import ParameterError
from quicdesign.randomness import raw_words
from quicdesign.rotation import fwht

from ._common import generator, stream_seed
from .loop import RoundStep, run_steps
from .participation import FULL_PARTICIPATION, Participation
from .problems import client_batch_sizes
from .wire import BitCounter, RawFloats

__all__ = [
    "INTRINSIC_VARIANTS",
    "ProjectionSpec",
    "DenseGaussianProjection",
    "SRHTProjection",
    "IntrinsicServerState",
    "run_intrinsic",
    "DENSE_MAX_ENTRIES",
]

INTRINSIC_VARIANTS = ("static", "k-subspace", "time-varying")
#: "auto" projections switch from dense Gaussian to SRHT above this many matrix entries.
DENSE_MAX_ENTRIES = 10_000_000
_DENSE_PURPOSE = "fl.intrinsic.dense"
_SIGNS_PURPOSE = "fl.intrinsic.srht-signs"
_POSITIONS_PURPOSE = "fl.intrinsic.srht-positions"
_MANTISSA = 2.0**-53


class DenseGaussianProjection:
    """``A = G / sqrt(D)`` with ``G`` i.i.d. standard normal from the shared stream.

    Parameters
    ----------
    full_dim, sub_dim : int
        ``D`` and ``d``.
    seed : int
        Projection seed shared by clients and server.
    index : int
        Which subspace (the stream's ``client_id``).
    orthonormalize : bool
        Replace ``A`` by the Q factor of its QR decomposition (exactly orthonormal
        columns; reproducible on one machine, not across LAPACK builds).
    """

    kind = "dense"

    def __init__(self, full_dim, sub_dim, seed, index, *, orthonormalize=False):
        self.full_dim, self.sub_dim = full_dim, sub_dim
        count = full_dim * sub_dim
        pairs = -(-count // 2)
        words = raw_words(seed, index, _DENSE_PURPOSE, 2 * pairs)
        u1 = ((words[:pairs] >> np.uint64(11)).astype(np.float64) + 0.5) * _MANTISSA
        u2 = (words[pairs:] >> np.uint64(11)).astype(np.float64) * _MANTISSA
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * np.pi * u2
        normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
        matrix = normals.reshape(full_dim, sub_dim) / np.sqrt(full_dim)
        if orthonormalize:
            q, r = np.linalg.qr(matrix)
            # fix the column signs so the factor is unique
            matrix = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        matrix.flags.writeable = False
        self.matrix = matrix

    def forward(self, z):
        """``A z`` for ``z`` of shape ``(..., d)``."""
        return np.asarray(z) @ self.matrix.T

    def adjoint(self, g):
        """``A^T g`` for ``g`` of shape ``(..., D)``."""
        return np.asarray(g) @ self.matrix


class SRHTProjection:
    """Subsampled randomized Hadamard transform ``crop_D diag(s) H scatter_P``.

    Parameters are those of :class:`DenseGaussianProjection` (without QR).
    """

    kind = "srht"

    def __init__(self, full_dim, sub_dim, seed, index):
        self.full_dim, self.sub_dim = full_dim, sub_dim
        padded = 1 << (full_dim - 1).bit_length()
        if sub_dim > padded:
            raise ParameterError(f"sub_dim={sub_dim} exceeds the padded dimension {padded}")
        self.padded_dim = padded
        sign_words = raw_words(seed, index, _SIGNS_PURPOSE, -(-padded // 64))
        bits = np.unpackbits(
            sign_words.astype("<u8").view(np.uint8), count=padded, bitorder="little"
        )
        self.signs = 1.0 - 2.0 * bits
        order = np.argsort(raw_words(seed, index, _POSITIONS_PURPOSE, padded), kind="stable")
        self.positions = order[:sub_dim]
        self.signs.flags.writeable = False
        self.positions.flags.writeable = False

    def forward(self, z):
        z = np.asarray(z, dtype=np.float64)
        buffer = np.zeros((*z.shape[:-1], self.padded_dim))
        buffer[..., self.positions] = z
        out = fwht(buffer, out=buffer)
        out *= self.signs
        return out[..., : self.full_dim]

    def adjoint(self, g):
        g = np.asarray(g, dtype=np.float64)
        buffer = np.zeros((*g.shape[:-1], self.padded_dim))
        buffer[..., : self.full_dim] = g
        buffer *= self.signs
        return fwht(buffer, out=buffer)[..., self.positions]

    @property
    def matrix(self):
        """The dense ``(D, d)`` matrix (for tests and small ``D``)."""
        return self.forward(np.eye(self.sub_dim)).T


@dataclass(frozen=True)
class ProjectionSpec:
    """Everything a party needs to regenerate a projection (a few integers).

    ``kind`` is ``"dense"``, ``"srht"`` or ``"auto"`` (dense up to
    :data:`DENSE_MAX_ENTRIES` entries).
    """

    full_dim: int
    sub_dim: int
    seed: int
    kind: str = "auto"
    orthonormalize: bool = False

    def __post_init__(self):
        check_int(self.full_dim, "full_dim", 1)
        check_int(self.sub_dim, "sub_dim", 1)
        if self.kind not in ("auto", "dense", "srht"):
            raise ParameterError(f"projection kind must be auto, dense or srht, got {self.kind!r}")
        if self.kind != "srht" and self.sub_dim > self.full_dim:
            raise ParameterError(f"sub_dim={self.sub_dim} exceeds full_dim={self.full_dim}")

    @property
    def resolved_kind(self) -> str:
        """``dense`` or ``srht``."""
        if self.kind != "auto":
            return self.kind
        return "dense" if self.full_dim * self.sub_dim <= DENSE_MAX_ENTRIES else "srht"

    def build(self, index):
        """Regenerate subspace ``index`` from scratch (no cache)."""
        if self.resolved_kind == "dense":
            return DenseGaussianProjection(
                self.full_dim, self.sub_dim, self.seed, index, orthonormalize=self.orthonormalize
            )
        return SRHTProjection(self.full_dim, self.sub_dim, self.seed, index)


@dataclass
class IntrinsicServerState:
    """Server state of intrinsic gradient compression (small and picklable).

    Attributes
    ----------
    base : numpy.ndarray
        ``theta_0`` plus the folded finished periods (time-varying).
    coordinates : numpy.ndarray
        ``(V, d)`` z-vectors at wire precision: one (static), ``K`` (K-subspace) or one
        per period (time-varying; finished rows keep their final values).
    touched_at : numpy.ndarray
        ``(V,)`` last step at which each z-vector changed (-2: never).
    synced_at : numpy.ndarray
        ``(N,)`` step at which each client last downloaded (-1: it holds ``theta_0`` only).
    """

    base: np.ndarray
    coordinates: np.ndarray
    touched_at: np.ndarray
    synced_at: np.ndarray


def _wire_round(values, dtype):
    return np.asarray(values, dtype=dtype).astype(np.float64)


def _vector_index(variant, step, num_subspaces, period, schedule, seed):
    if variant == "static":
        return 0
    if variant == "time-varying":
        return step // period
    if schedule == "round-robin":
        return step % num_subspaces
    return int(generator(seed, "subspace-choice", step).integers(num_subspaces))


@single_threaded_blas
def run_intrinsic(
    problem,
    variant="static",
    *,
    subspace_dim,
    rounds,
    step_size,
    batch_size=32,
    num_subspaces=4,
    period=1,
    schedule="round-robin",
    projection="auto",
    orthonormalize=False,
    participation=FULL_PARTICIPATION,
    wire_dtype="float32",
    stateless_clients=False,
    seed=0,
    record_every=1,
    callback=None,
    progress=None,
    label=None,
):
    """Train with intrinsic gradient compression (FedSGD: one gradient per client per step).

    Parameters
    ----------
    problem : Problem
        Objective; ``dim`` is ``D``.
    variant : {"static", "k-subspace", "time-varying"}
        See the module docstring.
    subspace_dim : int
        ``d``, the upload size in floats.
    rounds : int
        Optimizer steps.
    step_size : float
        Learning rate in z-space (see the normalization notes).
    batch_size : int, sequence of int or None
        Client mini-batch sizes.
    num_subspaces : int
        ``K`` (k-subspace only).
    period : int
        Steps per subspace (time-varying only).
    schedule : {"round-robin", "random"}
        Subspace choice of k-subspace (random draws from the shared seed).
    projection : {"auto", "dense", "srht"}
        Projection family.
    orthonormalize : bool
        QR-orthonormalize dense projections.
    participation : Participation
        Client sampling (e.g. ``Participation(per_round=3)``).
    wire_dtype : {"float32", "float64"}
        Precision of every float on the wire.
    stateless_clients : bool
        Clients keep nothing between steps (see the bandwidth notes).
    seed : int
        Seeds projections, the initial model, mini-batches and sampling.
    record_every : int
        Record metrics every this many steps (and after the last one).
    callback : callable, optional
        ``callback(step, server_state, downloads)`` after every step, where
        ``downloads`` maps client id to ``(vector_ids, payload)``; ``vector_ids`` is None
        when the whole model was sent.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per round
        elsewhere.
    label : str, optional
        Run name.

    Returns
    -------
    RunHistory
        ``extras`` holds the final state, the projection spec and ``model``.
    """
    return run_steps(
        _IntrinsicStep,
        problem,
        rounds=rounds,
        record_every=record_every,
        callback=callback,
        progress=progress,
        variant=variant,
        subspace_dim=subspace_dim,
        total_rounds=rounds,
        step_size=step_size,
        batch_size=batch_size,
        num_subspaces=num_subspaces,
        period=period,
        schedule=schedule,
        projection=projection,
        orthonormalize=orthonormalize,
        participation=participation,
        wire_dtype=wire_dtype,
        stateless_clients=stateless_clients,
        seed=seed,
        label=label,
    )


class _IntrinsicStep(RoundStep):
    """Intrinsic compression state: the server state, its projections and streams."""

    def __init__(
        self,
        problem,
        variant,
        *,
        subspace_dim,
        total_rounds,
        step_size,
        batch_size,
        num_subspaces,
        period,
        schedule,
        projection,
        orthonormalize,
        participation,
        wire_dtype,
        stateless_clients,
        seed,
        label,
    ):
        if variant not in INTRINSIC_VARIANTS:
            raise ParameterError(f"variant must be one of {INTRINSIC_VARIANTS}, got {variant!r}")
        if schedule not in ("round-robin", "random"):
            raise ParameterError(f"schedule must be round-robin or random, got {schedule!r}")
        if not isinstance(participation, Participation):
            raise ParameterError("participation must be a Participation")
        rounds = check_int(total_rounds, "rounds", 0)
        self.step_size = check_positive_float(step_size, "step_size")
        self.num_subspaces = check_int(num_subspaces, "num_subspaces", 1)
        self.period = check_int(period, "period", 1)
        dtype = np.dtype(wire_dtype).newbyteorder("<")
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ParameterError(f"wire_dtype must be float32 or float64, got {wire_dtype!r}")
        self.dtype, self.wire = dtype, RawFloats(dtype.name)
        full_dim, num_clients = problem.dim, problem.num_clients
        sub_dim = check_int(subspace_dim, "subspace_dim", 1)
        self.spec = ProjectionSpec(
            full_dim, sub_dim, stream_seed(seed, "intrinsic-projection"), projection, orthonormalize
        )
        self.problem, self.variant, self.schedule, self.seed = problem, variant, schedule, seed
        self.participation, self.stateless_clients = participation, stateless_clients
        self.batches = client_batch_sizes(batch_size, num_clients)
        num_vectors = {
            "static": 1,
            "k-subspace": self.num_subspaces,
            "time-varying": max(1, -(-rounds // self.period)),
        }[variant]
        self.state = IntrinsicServerState(
            base=problem.initial_point(seed).astype(np.float64),
            coordinates=np.zeros((num_vectors, sub_dim)),
            touched_at=np.full(num_vectors, -2, dtype=np.int64),
            synced_at=np.full(num_clients, -1, dtype=np.int64),
        )
        # the server and the clients regenerate the same projection; one cache serves both
        self.projection_of = functools.lru_cache(maxsize=max(2, self.num_subspaces))(
            self.spec.build
        )
        self.counter = BitCounter(num_clients)
        self.label = label or f"intrinsic-{variant}-d{sub_dim}"
        self.config = {
            "variant": variant,
            "subspace_dim": sub_dim,
            "num_subspaces": self.num_subspaces,
            "period": self.period,
            "projection": self.spec.resolved_kind,
            "step_size": self.step_size,
            "seed": seed,
        }
        self.data_rng = generator(seed, "minibatches")
        self.sampling_rng = generator(seed, "participation")
        self.vector = 0

    def model(self):
        state, projection_of, last = self.state, self.projection_of, self.vector
        if self.variant == "time-varying":
            return state.base + projection_of(last).forward(state.coordinates[last])
        model = state.base.copy()
        for v in np.flatnonzero(state.touched_at >= 0):
            model += projection_of(int(v)).forward(state.coordinates[v])
        return model

    def extras(self):
        return {"state": self.state, "spec": self.spec, "model": self.model()}

    def _send_downloads(self, t, active, model):
        """Bring each active client up to date; ``{client: (vector_ids, payload)}``."""
        state, sub_dim = self.state, self.spec.sub_dim
        downloads = {}
        synced = np.full(active.size, -1) if self.stateless_clients else state.synced_at[active]
        lacking = state.touched_at[None, :] >= synced[:, None]
        payloads = []
        for row, client in enumerate(active):
            ids = np.flatnonzero(lacking[row])
            if ids.size * sub_dim <= self.spec.full_dim:
                values = state.coordinates[ids].reshape(1, -1)
            else:
                ids, values = None, model[None]
            # framed like every payload (the envelope, then the floats); nothing to send
            # is no message
            payload = (
                self.wire.encode_batch(values, round_seed=t, client_ids=[client])[0]
                if values.size
                else b""
            )
            payloads.append(payload)
            downloads[int(client)] = (ids, payload)
        self.counter.add_downloads(active, payloads)
        state.synced_at[active] = t
        return downloads

    def step(self, t):
        state, projection_of, period = self.state, self.projection_of, self.period
        vector = _vector_index(
            self.variant, t, self.num_subspaces, period, self.schedule, self.seed
        )
        self.vector = vector
        if self.variant == "time-varying" and vector > 0 and t % period == 0:
            # fold the finished period into the base; its final z stays for late clients
            state.base = state.base + projection_of(vector - 1).forward(
                state.coordinates[vector - 1]
            )
        model = self.model()
        active = self.participation.sample(self.problem.num_clients, self.sampling_rng)
        downloads = self._send_downloads(t, active, model)

        grads = self.problem.gradients(model, active, self.batches[active], self.data_rng)
        adjoint = projection_of(vector).adjoint(grads)
        uploads = self.wire.encode_batch(adjoint, round_seed=t, client_ids=active)
        self.counter.add_upload(active, uploads)
        if active.size:
            received = self.wire.decode_batch(uploads, dim=self.spec.sub_dim, round_seed=t)
            updated = state.coordinates[vector] - self.step_size * received.mean(axis=0)
            state.coordinates[vector] = _wire_round(updated, self.dtype)
            state.touched_at[vector] = t
        return state, downloads
