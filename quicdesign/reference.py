"""Published reference values the toolkit is checked against, each with its source.

Every value records where it comes from: the paper, the table (or figure/code) and the
row. Values are copied as printed (so a check against them needs a relative tolerance of
about the last printed digit). Tests, the CLI and the benchmarks read them from here only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Source",
    "Reference",
    "QUIC_FL_PAPER",
    "EDEN_PAPER",
    "QUIC_FL_VNMSE",
    "STOCHASTIC_ROUNDING_VNMSE",
    "EDEN_VNMSE",
    "LLOYD_MAX_NORMAL",
    "OFFICIAL_B2_L5_ROWS",
    "THRESHOLD_P_1_512",
    "values",
]

QUIC_FL_PAPER = (
    "Ben-Basat et al., Accelerating Federated Learning with Quick Distributed Mean "
    "Estimation (QUIC-FL), ICML 2024, arXiv 2205.13341"
)
EDEN_PAPER = (
    "Vargaftik et al., EDEN: Communication-Efficient and Robust Distributed Mean "
    "Estimation for Federated Learning, ICML 2022, arXiv 2108.08842"
)
_QUIC_FL_CODE = (
    "official QUIC-FL code (BSD-3), "
    "github.com/amitport/QUIC-FL-Quick-Unbiased-Compression-for-Federated-Learning"
)


@dataclass(frozen=True)
class Source:
    """Where a reference value is printed."""

    paper: str
    table: str
    row: str

    def __str__(self):
        return f"{self.paper}; {self.table}; {self.row}"


@dataclass(frozen=True)
class Reference:
    """A published value and its source."""

    value: object
    source: Source


_VNMSE_TABLE = "vNMSE of the optimized quantizers under the Gaussian model, p = 1/512"


def _vnmse(column, values, paper=QUIC_FL_PAPER, row="b={}, l={}"):
    return {
        key: Reference(
            value,
            Source(paper, f"{_VNMSE_TABLE}, column {column!r}", row.format(*_as_tuple(key))),
        )
        for key, value in values.items()
    }


def _as_tuple(key):
    return key if isinstance(key, tuple) else (key,)


#: QUIC-FL's official tables, keyed by (bits, shared_bits): b + 0.125 bits per coordinate.
QUIC_FL_VNMSE = _vnmse(
    "official", {(1, 6): 1.4670, (2, 5): 0.2149, (3, 4): 0.04312, (4, 4): 0.009684}
)
#: Unbiased stochastic rounding between optimized levels (l = 0), keyed by bits.
STOCHASTIC_ROUNDING_VNMSE = _vnmse(
    "l=0 (SQ)", {1: 8.5967, 2: 0.57327, 3: 0.09259, 4: 0.019468}, row="b={}, l=0"
)
#: EDEN at b bits per coordinate, ``D_LM / (1 - D_LM)``, keyed by bits.
EDEN_VNMSE = _vnmse(
    "EDEN (b bits)", {1: 0.5708, 2: 0.1331, 3: 0.03578, 4: 0.009592}, paper=EDEN_PAPER, row="b={}"
)
#: Lloyd-Max quantizer of N(0, 1): (positive centroids, MSE D_LM), keyed by bits.
LLOYD_MAX_NORMAL = {
    bits: Reference(
        value,
        Source(EDEN_PAPER, "Lloyd-Max centroids of N(0, 1) used by EDEN/DRIVE", f"b={bits}"),
    )
    for bits, value in {
        1: ((0.79788,), 0.3634),
        2: ((0.45278, 1.51042), 0.1175),
        3: ((0.24509, 0.75601, 1.34391, 2.15195), 0.03455),
        4: ((0.12840, 0.38805, 0.65676, 0.94234, 1.25623, 1.61805, 2.06902, 2.73259), 0.009501),
    }.items()
}
#: Rows x = 2 and x = 3 of the official b = 2, l = 5 receiver table (h = 0..31), keyed by x.
OFFICIAL_B2_L5_ROWS = {
    x: Reference(
        tuple(float(v) for v in text.split()), Source(_QUIC_FL_CODE, "b=2, l=5 table", f"x={x}")
    )
    for x, text in {
        2: "0.0208 0.0624 0.1034 0.1437 0.1838 0.2254 0.2630 0.3015 0.3409 0.3801 0.4190 "
        "0.4584 0.4976 0.5369 0.5766 0.6166 0.6566 0.6972 0.7389 0.7804 0.8229 0.8661 "
        "0.9105 0.9556 1.0020 1.0492 1.0995 1.1514 1.2022 1.2619 1.3188 1.3710",
        3: "1.4762 1.5192 1.5632 1.6094 1.6562 1.7052 1.7558 1.8082 1.8637 1.9221 1.9833 "
        "2.0478 2.1161 2.1891 2.2668 2.3514 2.4423 2.5412 2.6508 2.7697 2.9024 3.0559 "
        "3.2330 3.4322 3.6735 3.9591 4.3182 4.7805 5.3604 6.3316 7.8632 9.9648",
    }.items()
}
#: Support threshold T = Phi^-1(1 - p/2) for p = 1/512.
THRESHOLD_P_1_512 = Reference(
    3.0972690781987846,
    Source(QUIC_FL_PAPER, "support threshold T = Phi^-1(1 - p/2), computed", "p=1/512"),
)


def values(references: dict) -> dict:
    """The bare values of a dict of :class:`Reference` (same keys)."""
    return {key: reference.value for key, reference in references.items()}
