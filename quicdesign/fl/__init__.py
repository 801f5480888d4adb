"""A small vectorized federated-learning simulator built on the compressor protocol.

Problems (:mod:`.problems`) yield losses and stochastic gradients vectorized over
clients; runners train with the companion papers' algorithms and count the bits of real
payloads in both directions (:class:`BitCounter`):

- :func:`run_mcm`: MCM, Rand-MCM, MC, Diana, Artemis and SGD with any unbiased compressor;
- :func:`run_signsgd`: signSGD with majority vote or federated voting, plus the exact
  decoding-error theory (:func:`decoding_error`, :func:`hoeffding_bound`);
- :func:`run_intrinsic`: intrinsic gradient compression (static, K-subspace,
  time-varying) with shared-seed projections;
- :func:`run_fedsgd` / :func:`run_cossgd`: FedSGD or FedAvg (local steps, pseudo-gradients
  up) with per-tensor compression both ways.

Each runner is a :class:`RoundStep` (the algorithm's state and one round) driven by the
one training loop :func:`train`, which owns recording, progress and callbacks.

Named experiments (:data:`EXPERIMENTS`) back the ``quicdesign fl`` command. Importing
this package needs numpy only; scikit-learn and matplotlib are imported on use.
"""

from .data import (
    Dataset,
    Partition,
    dirichlet_partition,
    iid_partition,
    linear_teacher_dataset,
    shard_partition,
    sklearn_dataset,
    teacher_dataset,
    train_test_split,
)
from .experiments import EXPERIMENTS, Experiment, ExperimentResult, format_table, run_experiment
from .fedsgd import DOWNLINK_MODES, run_cossgd, run_fedsgd
from .history import RunHistory
from .intrinsic import (
    INTRINSIC_VARIANTS,
    DenseGaussianProjection,
    IntrinsicServerState,
    ProjectionSpec,
    SRHTProjection,
    run_intrinsic,
)
from .loop import RoundStep, train
from .mcm import (
    MCM_ALGORITHMS,
    MCMServerState,
    MCMWorkerStates,
    default_memory_rate,
    memory_step,
    run_mcm,
)
from .participation import FULL_PARTICIPATION, Participation, split_batch_sizes
from .problems import (
    MLP,
    LinearRegression,
    LogisticRegression,
    Model,
    NoisyQuadratic,
    Problem,
    SoftmaxRegression,
    SupervisedProblem,
    classification_problem,
    client_batch_sizes,
    heterogeneous_least_squares,
)
from .signsgd import (
    SIGN_RULES,
    VoteWeights,
    decode_signs,
    decode_vote,
    decoding_error,
    decoding_error_monte_carlo,
    encode_signs,
    encode_vote,
    hoeffding_bound,
    llr_weights,
    normal_sign_error,
    run_signsgd,
    weighted_vote,
)
from .wire import BitCounter, LocalTopK, RawFloats, broadcast, compressor_omega, send_each

__all__ = [
    "BitCounter",
    "DOWNLINK_MODES",
    "Dataset",
    "DenseGaussianProjection",
    "EXPERIMENTS",
    "Experiment",
    "ExperimentResult",
    "FULL_PARTICIPATION",
    "INTRINSIC_VARIANTS",
    "IntrinsicServerState",
    "LinearRegression",
    "LogisticRegression",
    "MCMServerState",
    "MCMWorkerStates",
    "MCM_ALGORITHMS",
    "MLP",
    "Model",
    "NoisyQuadratic",
    "Participation",
    "Partition",
    "Problem",
    "ProjectionSpec",
    "RawFloats",
    "LocalTopK",
    "RoundStep",
    "RunHistory",
    "SIGN_RULES",
    "SRHTProjection",
    "SoftmaxRegression",
    "SupervisedProblem",
    "VoteWeights",
    "broadcast",
    "classification_problem",
    "client_batch_sizes",
    "compressor_omega",
    "decode_signs",
    "decode_vote",
    "decoding_error",
    "decoding_error_monte_carlo",
    "default_memory_rate",
    "dirichlet_partition",
    "encode_signs",
    "encode_vote",
    "format_table",
    "heterogeneous_least_squares",
    "hoeffding_bound",
    "iid_partition",
    "linear_teacher_dataset",
    "llr_weights",
    "memory_step",
    "normal_sign_error",
    "run_cossgd",
    "run_experiment",
    "run_fedsgd",
    "run_intrinsic",
    "run_mcm",
    "run_signsgd",
    "send_each",
    "shard_partition",
    "sklearn_dataset",
    "split_batch_sizes",
    "teacher_dataset",
    "train",
    "train_test_split",
    "weighted_vote",
]
