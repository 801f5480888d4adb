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

from ._kernels import compiled_kernels
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
# Blocks are *columns*: arrays have shape (n, blocks), so every per-coordinate step is a
# contiguous vector operation over all blocks.


def nearest_dn(x: np.ndarray) -> np.ndarray:
    """Nearest point of ``D_n`` to every column of ``x`` (float64, integer-valued).

    Round every coordinate; where the sum is odd, round the coordinate farthest from an
    integer the other way.
    """
    rounded = np.floor(x + 0.5)
    odd = np.flatnonzero(np.sum(rounded, axis=0) % 2 != 0)
    if odd.size:
        error = x[:, odd] - rounded[:, odd]
        worst = np.argmax(np.abs(error), axis=0)
        picked = error[worst, np.arange(odd.size)]
        rounded[worst, odd] += np.where(picked > 0, 1.0, -1.0)
    return rounded


def nearest_lattice_point(
    x: np.ndarray, spec: LatticeSpec, *, kernels="auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest lattice point to every column of ``x`` (shape ``(n, blocks)``).

    Returns ``(y, c)``: the point is ``y + c / 2`` with ``y`` integer-valued of even column
    sums and ``c`` (int64, one per block) the coset bit, always 0 for ``d4``. For E8 both
    ``D8`` roundings are scored before either is fixed up: fixing an odd sum moves the
    coordinate with the largest error ``|e|`` and adds ``1 - 2|e|`` to the squared distance.
    ``kernels="auto"`` uses the compiled kernel when available (the same points), None
    the numpy code.
    """
    compiled = compiled_kernels() if kernels == "auto" else None
    if compiled is not None:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if spec.cosets == 1:
            return compiled.nearest_dn(x), np.zeros(x.shape[1], dtype=np.int64)
        return compiled.nearest_e8(x)
    if spec.cosets == 1:
        return nearest_dn(x), np.zeros(x.shape[1], dtype=np.int64)
    candidates = []
    for rounded in (np.floor(x + 0.5), np.floor(x)):  # D8 and D8 + 1/2 (shifted back)
        error = x - rounded if not candidates else x - 0.5 - rounded
        magnitude = np.abs(error)
        distance = np.sum(error * error, axis=0)
        odd = np.sum(rounded, axis=0) % 2 != 0
        distance += np.where(odd, 1.0 - 2.0 * np.max(magnitude, axis=0), 0.0)
        candidates.append((rounded, error, odd, distance))
    take = candidates[1][3] < candidates[0][3]
    (r0, e0, odd0, _), (r1, e1, odd1, _) = candidates
    y = np.where(take, r1, r0)
    error = np.where(take, e1, e0)
    fix = np.flatnonzero(np.where(take, odd1, odd0))
    if fix.size:
        worst = np.argmax(np.abs(error[:, fix]), axis=0)
        picked = error[worst, fix]
        y[worst, fix] += np.where(picked > 0, 1.0, -1.0)
    return y, take.astype(np.int64)


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


class CosetGeometry:
    """Offsets, parity masses and suffix weights of the candidates of one coset.

    Arrays have shape ``(n, blocks)`` (``(n + 1, blocks)`` for the suffix weights):
    ``floor = floor(c/2 - w)`` (exact in float64 for ``w`` in ``[0, 2)``), ``offset`` in
    ``[0, 1)``, ``bin = floor(offset * bins)``, ``even``/``odd`` the model's mass of even
    and odd ``y = k - floor``, and ``w_even[j]``/``w_odd[j]`` the total weight of
    coordinates ``j..n-1`` with even/odd parity sum (computed by :meth:`with_suffix`).
    """

    def __init__(self, model, dither, coset):
        shift = np.asarray(coset, dtype=np.float64) * 0.5
        shifted = shift - dither
        floor = np.floor(shifted)
        self.offset = shifted - floor
        self.floor = floor.astype(np.int64)
        self.bin = (self.offset * model.bins).astype(np.int64)
        index = 2 * self.bin + (self.floor & 1)
        flat = model.class_mass.reshape(-1)
        self.even = flat[index]
        self.odd = flat[index ^ 1]

    def total_even(self) -> np.ndarray:
        """``W_0(0)``: the total weight of the coset (same arithmetic as the suffixes)."""
        w_even, w_odd = np.ones(self.even.shape[1]), np.zeros(self.even.shape[1])
        for j in range(self.even.shape[0] - 1, -1, -1):
            w_even, w_odd = (
                self.even[j] * w_even + self.odd[j] * w_odd,
                self.even[j] * w_odd + self.odd[j] * w_even,
            )
        return w_even

    def with_suffix(self) -> CosetGeometry:
        """Compute the suffix weights ``w_even``, ``w_odd`` (returns self)."""
        n, blocks = self.even.shape
        self.w_even = np.ones((n + 1, blocks))
        self.w_odd = np.zeros((n + 1, blocks))
        for j in range(n - 1, -1, -1):
            self.w_even[j] = self.even[j] * self.w_even[j + 1] + self.odd[j] * self.w_odd[j + 1]
            self.w_odd[j] = self.even[j] * self.w_odd[j + 1] + self.odd[j] * self.w_even[j + 1]
        return self

    def probability_odd(self, column, required) -> np.ndarray:
        """``P(y_column odd | the parity still required of columns column..n-1)``."""
        follow = column + 1
        odd_rest = np.where(required == 1, self.w_even[follow], self.w_odd[follow])
        even_rest = np.where(required == 1, self.w_odd[follow], self.w_even[follow])
        if_odd = self.odd[column] * odd_rest
        return if_odd / (if_odd + self.even[column] * even_rest)


class BlockModel:
    """The code model's view of a set of blocks given their dither (both cosets)."""

    def __init__(self, model, dither):
        self.model = model
        self.dither = dither
        self.cosets = [CosetGeometry(model, dither, c) for c in range(model.spec.cosets)]

    def coset_probability(self) -> np.ndarray:
        """``P(c = 1 | w)`` per block (E8): ``Z_1 / (Z_0 + Z_1)`` with ``Z_c = W_0(0)``."""
        first, second = self.cosets[0].total_even(), self.cosets[1].total_even()
        return second / (first + second)

    def geometry(self, coset) -> CosetGeometry:
        """The geometry of each block's own coset, with its suffix weights."""
        if len(self.cosets) == 1:
            return self.cosets[0].with_suffix()
        # the same elementwise values as selecting per block between the two cosets'
        # geometries, at the cost of one geometry instead of a select of five arrays
        return CosetGeometry(self.model, self.dither, coset).with_suffix()


def block_code_lengths(model, dither, y, coset) -> np.ndarray:
    """Ideal code length in bits of every block under the model (escapes excluded).

    ``dither`` and ``y`` have shape ``(n, blocks)``. The figure the solver minimizes; the
    ANS coder adds at most a few bits per stream.
    """
    n = model.block
    view = BlockModel(model, dither)
    bits = np.zeros(y.shape[1])
    if model.spec.cosets == 2:
        p1 = view.coset_probability()
        bits -= np.log2(np.where(coset == 1, p1, 1.0 - p1))
    geometry = view.geometry(coset)
    parities = y.astype(np.int64) & 1
    required = np.zeros(y.shape[1], dtype=np.int64)
    for column in range(n - 1):
        p_odd = geometry.probability_odd(column, required)
        bits -= np.log2(np.where(parities[column] == 1, p_odd, 1.0 - p_odd))
        required ^= parities[column]
    k = y.astype(np.int64) + geometry.floor
    position = np.clip(k - model.k_min, 0, model.num_symbols - 1)
    mass = model.class_mass[geometry.bin, k & 1]
    bits -= np.sum(np.log2(model.weights[geometry.bin, position] / mass), axis=0)
    return bits
