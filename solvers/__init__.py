"""quicdesign's design layer: specs, exact objective, optimizers, certification, sweeps.

Needs scipy, cvxpy (HiGHS), joblib and tqdm (``pip install quicdesign[design]``). It
produces :class:`quicdesign.Table` objects; the runtime never imports this package.
"""

from .bound import (
    LowerBound,
    attach_bound,
    attach_floor,
    entropy_floor,
    larger_design,
    lower_bound,
)
from .certify import (
    Certificate,
    SenderLP,
    cap_message_probability,
    certify,
    solve_sender_lp,
    symmetric_sender,
)
from .design import DesignResult, DesignSpec, design
from .distributions import (
    EmpiricalDistribution,
    ScipyDistribution,
    StandardNormal,
    ValueDistribution,
)
from .fit import InputLawFit, fit_input_law
from .objective import ObjectiveValue, evaluate, message_masses
from .rate import design_entropy_coded, rate_distortion_curve, rate_point
from .sweep import cached_design, sweep
from .verify import VerificationReport, verify

__all__ = [
    "Certificate",
    "LowerBound",
    "attach_bound",
    "attach_floor",
    "entropy_floor",
    "larger_design",
    "lower_bound",
    "DesignResult",
    "DesignSpec",
    "EmpiricalDistribution",
    "InputLawFit",
    "ObjectiveValue",
    "ScipyDistribution",
    "SenderLP",
    "StandardNormal",
    "ValueDistribution",
    "VerificationReport",
    "cap_message_probability",
    "certify",
    "cached_design",
    "design",
    "design_entropy_coded",
    "fit_input_law",
    "message_masses",
    "rate_distortion_curve",
    "rate_point",
    "sweep",
    "evaluate",
    "solve_sender_lp",
    "symmetric_sender",
    "verify",
]
