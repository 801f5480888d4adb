"""Dithered lattice quantization: nearest points, the code model and its table format.

Lattices (scaled by a step ``s``):

- ``d4``: ``D4 = {y in Z^4 : sum(y) even}``;
- ``e8``: ``E8 = D8 u (D8 + 1/2)``, the nearest point taken as the closer of the nearest
  points of ``D8`` and of the coset ``D8 + 1/2`` (two ``D8`` roundings, Conway and Sloane,
  *Sphere Packings*, ch. 20).

A point is a coset bit ``c`` (E8 only) and an integer vector ``y`` of even sum; its value
is ``s (y + c/2)``. With a shared dither ``w`` uniform on ``[0, 2)^n`` (a fundamental
region of ``2 Z^n``, a sublattice), the decoded ``s (q - w)`` with ``q = Q(z/s + w)`` equals
``z`` plus an error uniform on the Voronoi cell and independent of ``z``: exactly unbiased,
vNMSE ``G det^(2/n) s^2`` per coordinate (``G`` the normalized second moment).

Code model (designed offline by ``solvers.lattice``): coordinate ``i`` of coset ``c`` has
candidates ``s (k + o_i)``, ``k`` an integer and ``o_i = frac(c/2 - w_i)``, with weights
``weights[bin(o_i), k - k_min]`` (``bin(o) = floor(o * bins)``). The model of a block is the
product of these weights restricted to the lattice (``sum(y)`` even), coded exactly by the
chain rule: the coset bit, then the parity of ``y_i`` for all but the last coordinate
(binary, from suffix sums of the per-parity masses), then each ``k`` within its parity
class (a fixed categorical row per ``(bin, parity of k)``). The arithmetic is elementwise
IEEE (no ``exp``, no reductions of varying order), so encoder and decoder compute the same
probabilities bit for bit.

The model ships in the table format (``docs/table-format.md``): a manifest with
``parameters.kind = "lattice-code-model"`` and the arrays ``weights`` and ``class_mass``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import check_int
from .errors import ParameterError, TableError
from .table import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    _atomic_write,
    _read_array,
    _read_manifest,
    _serialize_manifest,
    _sha256,
    shipped_tables_dir,
)

__all__ = [
    "LATTICES",
    "LatticeSpec",
    "LatticeCodeModel",
    "load_lattice_model",
    "nearest_dn",
    "nearest_lattice_point",
    "block_code_lengths",
]

MODEL_KIND = "lattice-code-model"
#: Most offset bins and symbols per row a model may have (bounded before reading).
MAX_MODEL_BINS = 1 << 10
MAX_MODEL_SYMBOLS = 1 << 12


@dataclass(frozen=True)
class LatticeSpec:
    """A lattice of block length ``block`` with ``cosets`` cosets of ``D_block``.

    ``error_coefficient`` is the per-coordinate error variance at step 1:
    ``G det^(2/n)``.
    """

    name: str
    block: int
    cosets: int
    error_coefficient: float


LATTICES = {
    # G(E8) = 929/12960, det 1; G(D4) = 0.0766032346, det 2 (Conway and Sloane, table 2.3)
    "e8": LatticeSpec("e8", 8, 2, 929 / 12960),
    "d4": LatticeSpec("d4", 4, 1, 0.0766032346 * math.sqrt(2.0)),
}


def lattice_spec(name) -> LatticeSpec:
    """The :class:`LatticeSpec` named ``name``; ``ParameterError`` if unknown."""
    try:
        return LATTICES[name]
    except (KeyError, TypeError):
        raise ParameterError(f"unknown lattice {name!r}; choose from {sorted(LATTICES)}") from None


# ------------------------------------------------------------------------ nearest points


def nearest_dn(x: np.ndarray) -> np.ndarray:
    """Nearest point of ``D_n`` to every row of ``x`` (float64, integer-valued).

    Round every coordinate; where the sum is odd, round the coordinate farthest from an
    integer the other way.
    """
    rounded = np.floor(x + 0.5)
    error = x - rounded
    odd = np.flatnonzero(np.sum(rounded, axis=1) % 2 != 0)
    if odd.size:
        worst = np.argmax(np.abs(error[odd]), axis=1)
        rounded[odd, worst] += np.where(error[odd, worst] > 0, 1.0, -1.0)
    return rounded


def nearest_lattice_point(x: np.ndarray, spec: LatticeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Nearest lattice point to every row of ``x``: ``(y, c)`` with the point ``y + c / 2``.

    ``y`` has even row sums; ``c`` (int64) is the coset bit, 0 for ``d4``.
    """
    y = nearest_dn(x)
    coset = np.zeros(x.shape[0], dtype=np.int64)
    if spec.cosets == 2:
        shifted = nearest_dn(x - 0.5)
        closer = np.sum(np.square(x - 0.5 - shifted), axis=1) < np.sum(np.square(x - y), axis=1)
        y[closer] = shifted[closer]
        coset[closer] = 1
    return y, coset


# ---------------------------------------------------------------------------- code model


class LatticeCodeModel:
    """Step, offset bins and per-coordinate weights of a dithered-lattice code.

    Parameters
    ----------
    lattice : str
        ``"e8"`` or ``"d4"``.
    scale : float
        Lattice step ``s`` applied to unit-RMS coordinates.
    weights : array_like, shape (bins, K)
        Unnormalized weight of ``k = k_min + column`` for offsets in each bin; ``bins`` a
        power of two, ``K`` a multiple of 4, ``k_min = -K/2``.
    class_mass : array_like, shape (bins, 2)
        Sum of each row over even and over odd ``k`` (stored so that no platform's
        summation order enters the probabilities).
    manifest : dict, optional
        Provenance (design, quality).
    """

    def __init__(self, lattice, scale, weights, class_mass, manifest=None):
        self.spec = lattice_spec(lattice)
        self.lattice = self.spec.name
        scale = float(scale)
        if not (math.isfinite(scale) and 1e-3 <= scale <= 1e3):
            raise TableError(f"lattice scale must be in [1e-3, 1e3], got {scale!r}")
        self.scale = scale
        weights = np.array(weights, dtype=np.float64)
        if weights.ndim != 2:
            raise TableError(f"weights must be 2-D, got shape {weights.shape}")
        bins, symbols = weights.shape
        if bins < 1 or bins > MAX_MODEL_BINS or bins & (bins - 1):
            raise TableError(f"weights need a power-of-two number of bins <= {MAX_MODEL_BINS}")
        if symbols < 4 or symbols > MAX_MODEL_SYMBOLS or symbols % 4:
            raise TableError(f"weights need a multiple of 4 symbols <= {MAX_MODEL_SYMBOLS}")
        if not np.all(np.isfinite(weights)) or weights.min() < 0:
            raise TableError("weights must be finite and non-negative")
        class_mass = np.array(class_mass, dtype=np.float64)
        if class_mass.shape != (bins, 2):
            raise TableError(f"class_mass must have shape {(bins, 2)}, got {class_mass.shape}")
        expected = np.stack((weights[:, 0::2].sum(axis=1), weights[:, 1::2].sum(axis=1)), 1)
        if not np.all(class_mass > 0) or not np.allclose(class_mass, expected, rtol=1e-9):
            raise TableError("class_mass must be the positive even and odd row sums of weights")
        weights.setflags(write=False)
        class_mass.setflags(write=False)
        self.weights = weights
        self.class_mass = class_mass
        self.bins = bins
        self.num_symbols = symbols
        self.k_min = -symbols // 2
        self._manifest = dict(manifest or {})

    @property
    def block(self) -> int:
        """Coordinates per lattice block."""
        return self.spec.block

    @property
    def vnmse(self) -> float:
        """Exact per-coordinate error variance for unit-RMS input: ``G det^(2/n) s^2``."""
        return self.spec.error_coefficient * self.scale**2

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the scale and both arrays (identifies the model)."""
        data = (
            float.hex(self.scale).encode()
            + self.weights.astype("<f8").tobytes()
            + self.class_mass.astype("<f8").tobytes()
        )
        return _sha256(data)[:16]

    @property
    def manifest(self) -> dict:
        """A copy of the provenance record."""
        return dict(self._manifest)

    @property
    def expected_bits(self) -> float | None:
        """Designed coded bits per coordinate (recorded by the solver), if any."""
        value = self._manifest.get("coding", {}).get("expected_bits")
        return float(value) if isinstance(value, (int, float)) else None

    def class_rows(self):
        """Categorical rows ``(bin, parity of k)`` in group order ``2 * bin + parity``;
        each row has ``K/2`` in-range symbols and a final escape symbol (weight 0)."""
        rows = np.zeros((2 * self.bins, self.num_symbols // 2 + 1))
        rows[0::2, :-1] = self.weights[:, 0::2]
        rows[1::2, :-1] = self.weights[:, 1::2]
        return rows

    def __repr__(self):
        return (
            f"LatticeCodeModel(lattice={self.lattice!r}, scale={self.scale:.6g}, "
            f"bins={self.bins}, symbols={self.num_symbols})"
        )

    # -- table format ------------------------------------------------------------------
    def _arrays(self):
        return {"weights": self.weights, "class_mass": self.class_mass}

    def save(self, path) -> Path:
        """Write the model as a table directory (``manifest.json`` + ``<name>.f64``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            key: value
            for key, value in self._manifest.items()
            if key not in ("format", "parameters", "arrays")
        }
        manifest["format"] = {
            "name": FORMAT_NAME,
            "major": FORMAT_VERSION[0],
            "minor": FORMAT_VERSION[1],
        }
        manifest["parameters"] = {
            **{
                k: v
                for k, v in self._manifest.get("parameters", {}).items()
                if k not in ("kind", "lattice", "scale", "scale_hex")
            },
            "kind": MODEL_KIND,
            "lattice": self.lattice,
            "scale": self.scale,
            "scale_hex": float.hex(self.scale),
        }
        manifest["arrays"] = {
            name: {
                "file": f"{name}.f64",
                "dtype": "<f8",
                "shape": list(array.shape),
                "order": "C",
                "sha256": _sha256(array.astype("<f8").tobytes()),
            }
            for name, array in self._arrays().items()
        }
        for name, array in self._arrays().items():
            _atomic_write(path / f"{name}.f64", array.astype("<f8").tobytes())
        _atomic_write(path / MANIFEST_FILE, _serialize_manifest(manifest))
        return path

    @classmethod
    def load(cls, path) -> LatticeCodeModel:
        """Load and validate a model directory (checksums, shapes, bounds before reading).

        Raises
        ------
        TableError
            (or a subclass) for anything missing, malformed or not matching its checksum.
        """
        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        manifest = _read_manifest(manifest_path)
        params = manifest["parameters"]
        if params.get("kind") != MODEL_KIND:
            raise TableError(f"{manifest_path}: not a {MODEL_KIND} (kind {params.get('kind')!r})")
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict) or set(arrays) != {"weights", "class_mass"}:
            raise TableError(f"{manifest_path}: needs exactly the arrays weights and class_mass")
        entry = arrays["weights"]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        ):
            raise TableError(f"{manifest_path}: weights shape {shape!r} is not two integers")
        try:
            bins = check_int(shape[0], "bins", 1, MAX_MODEL_BINS)
            symbols = check_int(shape[1], "symbols", 4, MAX_MODEL_SYMBOLS)
        except ParameterError as exc:
            raise TableError(f"{manifest_path}: {exc}") from None
        scale = params.get("scale")
        try:
            exact = float.fromhex(params.get("scale_hex"))
        except (TypeError, ValueError):
            raise TableError(f"{manifest_path}: parameters.scale_hex is not float.hex()") from None
        if exact != scale:
            raise TableError(f"{manifest_path}: scale and scale_hex disagree")
        weights = _read_array(path, entry, (bins, symbols))
        class_mass = _read_array(path, arrays["class_mass"], (bins, 2))
        try:
            return cls(params.get("lattice"), exact, weights, class_mass, manifest)
        except (TableError, ParameterError) as exc:
            raise TableError(f"{manifest_path}: {exc}") from None


def load_lattice_model(lattice="e8", rate_bits=2, path=None) -> LatticeCodeModel:
    """Load a shipped lattice code model, ``tables/lattice/<lattice>-rate<rate_bits>``.

    Parameters
    ----------
    lattice : str
        ``"e8"`` or ``"d4"``.
    rate_bits : int
        Nominal wire bits per coordinate, 1..4.
    path : path-like, optional
        A model directory to load instead.
    """
    if path is None:
        spec = lattice_spec(lattice)
        rate_bits = check_int(rate_bits, "rate_bits", 1, 4)
        path = shipped_tables_dir() / "lattice" / f"{spec.name}-rate{rate_bits}"
    model = LatticeCodeModel.load(path)
    if model.lattice != lattice:
        raise TableError(f"{path} holds a {model.lattice} model, not {lattice}")
    return model


# ------------------------------------------------------------------- model probabilities


@dataclass
class BlockGeometry:
    """Per-coordinate offsets of one coset: ``floor(c/2 - w)`` and the offset bin."""

    floor: np.ndarray  # int64 (blocks, n)
    offset: np.ndarray  # float64 in [0, 1)
    bin: np.ndarray  # int64 (blocks, n)


def block_geometry(model: LatticeCodeModel, dither: np.ndarray, coset) -> BlockGeometry:
    """Offsets of the candidates of coset ``coset`` (scalar or per block) given ``dither``.

    ``dither`` (blocks, n) holds values in ``[0, 2)``; ``c/2 - w`` is exact in float64.
    """
    shift = np.asarray(coset, dtype=np.float64).reshape(-1, 1) * 0.5
    shifted = shift - dither
    floor = np.floor(shifted)
    offset = shifted - floor
    return BlockGeometry(floor.astype(np.int64), offset, (offset * model.bins).astype(np.int64))


def _parity_masses(model, geometry):
    """Masses of even and odd ``y`` per coordinate (``y = k - floor``)."""
    flip = geometry.floor & 1
    even = model.class_mass[geometry.bin, flip]
    odd = model.class_mass[geometry.bin, 1 - flip]
    return even, odd


def _suffix_weights(even, odd):
    """``W[p][:, j]``: total weight of coordinates ``j..n-1`` with parity ``p``."""
    blocks, n = even.shape
    w_even = np.ones((blocks, n + 1))
    w_odd = np.zeros((blocks, n + 1))
    for j in range(n - 1, -1, -1):
        w_even[:, j] = even[:, j] * w_even[:, j + 1] + odd[:, j] * w_odd[:, j + 1]
        w_odd[:, j] = even[:, j] * w_odd[:, j + 1] + odd[:, j] * w_even[:, j + 1]
    return w_even, w_odd


def coset_probability(model, dither) -> np.ndarray:
    """``P(c = 1 | w)`` per block (all zeros for single-coset lattices)."""
    if model.spec.cosets == 1:
        return np.zeros(dither.shape[0])
    totals = []
    for coset in (0, 1):
        even, odd = _parity_masses(model, block_geometry(model, dither, coset))
        totals.append(_suffix_weights(even, odd)[0][:, 0])
    return totals[1] / (totals[0] + totals[1])


class ParityModel:
    """Sequential parity probabilities of one block set given the coset geometry."""

    def __init__(self, model, geometry):
        self.even, self.odd = _parity_masses(model, geometry)
        self.w_even, self.w_odd = _suffix_weights(self.even, self.odd)

    def probability_odd(self, column, required) -> np.ndarray:
        """``P(y_column odd | the suffix from column must have parity required)``."""
        follow = column + 1
        if_odd = self.odd[:, column] * np.where(
            required == 1, self.w_even[:, follow], self.w_odd[:, follow]
        )
        if_even = self.even[:, column] * np.where(
            required == 1, self.w_odd[:, follow], self.w_even[:, follow]
        )
        return if_odd / (if_odd + if_even)


def block_code_lengths(model, dither, y, coset) -> np.ndarray:
    """Ideal code length in bits of every block under the model (escapes excluded).

    The figure the solver minimizes; the coder adds the ANS stream's rounding.
    """
    n = model.block
    bits = np.zeros(y.shape[0])
    if model.spec.cosets == 2:
        p1 = coset_probability(model, dither)
        bits -= np.log2(np.where(coset == 1, p1, 1.0 - p1))
    geometry = block_geometry(model, dither, coset)
    parity_model = ParityModel(model, geometry)
    parities = (y.astype(np.int64)) & 1
    required = np.zeros(y.shape[0], dtype=np.int64)
    for column in range(n - 1):
        p_odd = parity_model.probability_odd(column, required)
        bits -= np.log2(np.where(parities[:, column] == 1, p_odd, 1.0 - p_odd))
        required ^= parities[:, column]
    k = y.astype(np.int64) + geometry.floor
    column = np.clip(k - model.k_min, 0, model.num_symbols - 1)
    k_parity = k & 1
    mass = model.class_mass[geometry.bin, k_parity]
    bits -= np.sum(np.log2(model.weights[geometry.bin, column] / mass), axis=1)
    return bits
