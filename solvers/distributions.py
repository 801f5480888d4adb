"""Value distributions a design is optimized for.

A design only needs the cumulative partial moments ``M_k(t) = E[Z^k ; Z <= t]`` for
``k = 0, 1, 2`` (the objective is piecewise quadratic in ``z``), the quantiles that set
the exactly-sent tails, and ``E[Z^2]`` to normalize the error.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from scipy import special, stats

from quicdesign.errors import ParameterError

__all__ = [
    "ValueDistribution",
    "StandardNormal",
    "ScipyDistribution",
    "EmpiricalDistribution",
    "as_distribution",
    "RotatedChunkLaw",
    "rms_normalized",
    "seen_after_rms",
]


class ValueDistribution:
    """Interface of a value distribution (subclasses implement the four methods)."""

    #: Short JSON-able description recorded in table manifests.
    description: dict

    def partial_moments(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(E[1; Z<=t], E[Z; Z<=t], E[Z^2; Z<=t])`` elementwise."""
        raise NotImplementedError

    def tail_interval(self, tail_prob: float) -> tuple[float, float]:
        """Interval outside which a fraction ``tail_prob`` of the mass lies (half per side)."""
        raise NotImplementedError

    def second_moment(self) -> float:
        """``E[Z^2]`` over the whole distribution (tails included)."""
        raise NotImplementedError

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``size`` values."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """A stable string identifying the distribution, for caches."""
        return repr(sorted(self.description.items()))


class StandardNormal(ValueDistribution):
    """The standard normal, with closed-form partial moments."""

    description = {"kind": "standard_normal"}

    def partial_moments(self, t):
        t = np.asarray(t, dtype=np.float64)
        cdf = special.ndtr(t)
        with np.errstate(invalid="ignore", over="ignore"):
            pdf = np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
            tpdf = np.where(np.isfinite(t), t * pdf, 0.0)
        return cdf, -pdf, cdf - tpdf

    def tail_interval(self, tail_prob):
        threshold = float(-special.ndtri(tail_prob / 2))
        return -threshold, threshold

    def second_moment(self):
        return 1.0

    def sample(self, size, rng):
        return rng.standard_normal(size)


class ScipyDistribution(ValueDistribution):
    """Any continuous ``scipy.stats`` distribution (frozen).

    Partial moments are integrated with Gauss–Legendre rules on the cells of a fine
    quantile grid, so they are accurate to about machine precision for smooth densities.
    """

    _GRID_CELLS = 4096
    _GAUSS_POINTS = 8

    def __init__(self, frozen):
        if not hasattr(frozen, "dist") or not isinstance(frozen.dist, stats.rv_continuous):
            raise ParameterError(
                "distribution must be a frozen continuous scipy.stats distribution"
            )
        self.frozen = frozen
        args = [float(a) for a in frozen.args]
        kwds = {k: float(v) for k, v in sorted(frozen.kwds.items())}
        self.description = {"kind": "scipy", "name": frozen.dist.name, "args": args, "kwds": kwds}
        # The grid spans all but 1e-12 of the mass; moments beyond it are negligible.
        edges = frozen.ppf(np.linspace(1e-12, 1 - 1e-12, self._GRID_CELLS + 1))
        if not np.all(np.isfinite(edges)):
            raise ParameterError(f"cannot build a quantile grid for {frozen.dist.name}")
        self._edges = np.unique(edges)
        self._nodes, self._weights = np.polynomial.legendre.leggauss(self._GAUSS_POINTS)
        cells = self._cell_moments(self._edges[:-1], self._edges[1:])
        self._cumulative = np.concatenate([np.zeros((3, 1)), np.cumsum(cells, axis=1)], axis=1)
        self._cumulative[0] += frozen.cdf(self._edges[0])

    def _cell_moments(self, left, right):
        half = (right - left) / 2
        points = (left + right)[:, None] / 2 + half[:, None] * self._nodes[None, :]
        dens = self.frozen.pdf(points) * self._weights[None, :] * half[:, None]
        return np.stack([dens.sum(1), (dens * points).sum(1), (dens * points**2).sum(1)])

    def partial_moments(self, t):
        t = np.asarray(t, dtype=np.float64)
        flat = np.clip(t.ravel(), self._edges[0], self._edges[-1])
        cell = np.clip(
            np.searchsorted(self._edges, flat, side="right") - 1, 0, len(self._edges) - 2
        )
        moments = self._cumulative[:, cell] + self._cell_moments(self._edges[cell], flat)
        moments[0] = self.frozen.cdf(t.ravel())
        return tuple(m.reshape(t.shape) for m in moments)

    def tail_interval(self, tail_prob):
        return float(self.frozen.ppf(tail_prob / 2)), float(self.frozen.isf(tail_prob / 2))

    def second_moment(self):
        value = float(self.frozen.moment(2))
        if not np.isfinite(value) or value <= 0:
            raise ParameterError(f"{self.frozen.dist.name} has no finite positive second moment")
        return value

    def sample(self, size, rng):
        return self.frozen.rvs(size=size, random_state=rng)


class EmpiricalDistribution(ValueDistribution):
    """The empirical distribution of a sample (each point has mass ``1/n``)."""

    def __init__(self, sample):
        values = np.sort(np.asarray(sample, dtype=np.float64).ravel())
        if values.size < 2 or not np.all(np.isfinite(values)):
            raise ParameterError("an empirical sample needs at least 2 finite values")
        self.values = values
        digest = hashlib.sha256(values.tobytes()).hexdigest()[:16]
        self.description = {"kind": "empirical", "size": int(values.size), "sha256_16": digest}
        n = values.size
        with np.errstate(over="ignore"):
            self._cumulative = [np.concatenate(([0.0], np.cumsum(values**k) / n)) for k in range(3)]
        if not np.isfinite(self._cumulative[2][-1]):
            raise ParameterError("an empirical sample's squares overflow float64; rescale it")

    def tail_interval(self, tail_prob):
        low, high = np.quantile(self.values, [tail_prob / 2, 1 - tail_prob / 2])
        if not low < high:
            # a single-point interval leaves nothing to quantize (and divides by zero)
            raise ParameterError(
                f"the sample's central 1 - {tail_prob:g} interval is the single point {low:g}: "
                "it needs more distinct values"
            )
        return float(low), float(high)

    def partial_moments(self, t):
        t = np.asarray(t, dtype=np.float64)
        count = np.searchsorted(self.values, t, side="right")
        return tuple(c[count] for c in self._cumulative)

    def second_moment(self):
        return float(np.mean(self.values**2))

    def sample(self, size, rng):
        return rng.choice(self.values, size=size)


def as_distribution(distribution) -> ValueDistribution:
    """Coerce ``None``, a frozen scipy distribution, a sample or a ValueDistribution."""
    if distribution is None:
        return StandardNormal()
    if isinstance(distribution, ValueDistribution):
        return distribution
    if hasattr(distribution, "dist") and hasattr(distribution, "ppf"):
        return ScipyDistribution(distribution)
    if isinstance(distribution, (list, tuple, np.ndarray)):
        return EmpiricalDistribution(distribution)
    raise ParameterError(
        "distribution must be None (standard normal), a frozen scipy.stats continuous "
        f"distribution, a 1-D sample or a ValueDistribution, got {type(distribution).__name__}"
    )


def rms_normalized(values, chunk_size: int) -> np.ndarray:
    """Scale consecutive chunks of ``values`` to unit RMS, as the direct runtime does."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < chunk_size:
        chunk_size = values.size
    usable = values[: values.size - values.size % chunk_size].reshape(-1, chunk_size)
    rms = np.sqrt(np.mean(usable**2, axis=1, keepdims=True))
    usable = usable[rms[:, 0] > 0] / rms[rms[:, 0] > 0]
    return usable.ravel()


def seen_after_rms(
    distribution, chunk_size: int = 1024, num_chunks: int = 2048, seed: int = 0
) -> ValueDistribution:
    """The law a table sees when chunks of ``chunk_size`` values are scaled to unit RMS.

    A heavy-tailed law is not simply rescaled to unit variance: a chunk's RMS is itself
    random, and for t(3) at 1024 values per chunk the difference moves the vNMSE by ~2 %.
    So for a scipy law ``num_chunks`` chunks are drawn (fixed ``seed``: reproducible) and
    each is normalized; a sample is cut into chunks in the order given and normalized the
    same way. The standard normal is kept as is (its RMS is nearly constant).
    """
    if isinstance(distribution, StandardNormal) or distribution is None:
        return StandardNormal()
    if isinstance(distribution, (list, tuple, np.ndarray)):
        return EmpiricalDistribution(rms_normalized(distribution, chunk_size))
    law = as_distribution(distribution)
    if isinstance(law, EmpiricalDistribution):
        # already sorted, so chunk order is lost: one global scale
        return EmpiricalDistribution(law.values / math.sqrt(law.second_moment()))
    draws = rms_normalized(
        law.sample(chunk_size * num_chunks, np.random.default_rng(seed)), chunk_size
    )
    probe = np.array([0.5, 1.0, 2.0, 4.0])
    low, high = law.partial_moments(np.concatenate([-probe, probe]))[0].reshape(2, -1)
    if np.allclose(low, 1 - high, atol=1e-9):
        # a symmetric law: mirror the draws so the design (and its tails) stay symmetric
        draws = np.concatenate([draws, -draws])
    return EmpiricalDistribution(draws)


class RotatedChunkLaw(ScipyDistribution):
    """Exact law of one coordinate of a uniformly rotated chunk of ``n`` values scaled to
    unit RMS: ``sqrt(n) * u`` with ``u`` a coordinate of a uniform point on the sphere,
    i.e. ``(z / sqrt(n) + 1) / 2 ~ Beta((n-1)/2, (n-1)/2)`` on ``|z| < sqrt(n)``. It tends
    to N(0, 1) as ``n`` grows; designing for it is what "rotated" means for small chunks.
    """

    def __init__(self, chunk_size: int):
        if not isinstance(chunk_size, int) or chunk_size < 4 or chunk_size & (chunk_size - 1):
            raise ParameterError(f"chunk_size must be a power of two >= 4, got {chunk_size!r}")
        half = (chunk_size - 1) / 2
        root = math.sqrt(chunk_size)
        super().__init__(stats.beta(half, half, loc=-root, scale=2 * root))
        self.description = {"kind": "rotated_chunk", "chunk_size": chunk_size}
