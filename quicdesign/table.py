"""Quantizer tables and their on-disk format.

A table is a directory holding ``manifest.json`` and one raw little-endian array file
per array (see ``docs/table-format.md``). The manifest records the format name and
major/minor version, the parameters, the design provenance and, for every array, its
dtype, shape and sha256. Since format 1.1 the manifest carries a sha256 of its own raw
bytes (with the hash values themselves zeroed), which any language reproduces without a
JSON canonicalizer; 1.0 manifests (a sha256 of Python's canonical JSON) are still read.
Loading never unpickles or evaluates anything and refuses unknown major versions, checksum
mismatches, path tricks and oversized files before reading them.

A *collection* is a directory of table directories plus ``index.json`` listing them, with
the sha256 of each manifest file and the default table per bit width.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np

from ._export import export_format, load_export, save_export
from ._validate import check_int, check_tail_prob
from .bound import MAX_BOUND_CELLS
from .errors import (
    ParameterError,
    TableChecksumError,
    TableError,
    TableNotFoundError,
    TableVersionError,
)
from .input_model import input_model_of
from .sender import SenderRule

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Table",
    "load_table",
    "load_entropy_table",
    "table_name",
    "list_tables",
    "write_index",
    "shipped_tables_dir",
    "manifest_bytes_digest",
]

FORMAT_NAME = "quicdesign-table"
FORMAT_VERSION = (1, 1)
INDEX_NAME = "quicdesign-table-index"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
#: Largest ``manifest.json`` and ``index.json`` read (bytes); larger files are refused.
MAX_MANIFEST_BYTES = 1 << 20
MAX_INDEX_BYTES = 1 << 20
#: Largest receiver or code model: ``2**shared_bits * 2**bits`` cells (8 MiB of float64).
MAX_TABLE_CELLS = 1 << 20
#: Most tables one ``index.json`` may list, and deepest JSON nesting accepted.
MAX_INDEX_ENTRIES = 4096
MAX_JSON_DEPTH = 32
_ARRAY_DTYPES = {"<f8": np.float64}
_MAX_BITS, _MAX_SHARED_BITS = 16, 12


#: Manifest keys holding sha256 hex digests of the manifest itself; their 64 hex digits
#: are replaced by ASCII "0" before hashing the raw bytes (format 1.1).
_SELF_HASH_KEYS = ("manifest_bytes_sha256", "manifest_sha256")
_ZERO_DIGEST = "0" * 64
#: Float parameters also recorded as ``float.hex()`` strings so any language gets the
#: exact double without trusting its JSON number parser.
_EXACT_PARAMETERS = ("tail_prob", "lower", "upper")


def _canonical_json(obj) -> bytes:
    """Format 1.0 self-hash input: Python's canonical JSON (not portable; kept for 1.0)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def manifest_bytes_digest(raw: bytes) -> str:
    """sha256 of a manifest file's raw bytes with its self-hash values zeroed (format 1.1).

    Every ``"<key>": "<64 hex digits>"`` for the keys ``manifest_bytes_sha256`` and
    ``manifest_sha256`` has its 64 digits replaced by ASCII ``0``; each key may occur at
    most once. See ``docs/table-format.md``.

    Raises
    ------
    TableChecksumError
        If a key occurs more than once or its value is not 64 lowercase hex digits.
    """
    data = bytearray(raw)
    for key in _SELF_HASH_KEYS:
        marker = f'"{key}": "'.encode()
        start = data.find(marker)
        if start < 0:
            continue
        if data.find(marker, start + 1) >= 0:
            raise TableChecksumError(f"manifest holds {key!r} more than once")
        begin = start + len(marker)
        digest = bytes(data[begin : begin + 64])
        if (
            len(digest) != 64
            or data[begin + 64 : begin + 65] != b'"'
            or any(c not in b"0123456789abcdef" for c in digest)
        ):
            raise TableChecksumError(f"manifest {key!r} is not 64 lowercase hex digits")
        data[begin : begin + 64] = _ZERO_DIGEST.encode()
    return _sha256(bytes(data))


def _serialize_manifest(manifest: dict) -> bytes:
    """The manifest file bytes with both self-hashes filled in (format 1.1)."""
    manifest = {**manifest, **dict.fromkeys(_SELF_HASH_KEYS, _ZERO_DIGEST)}

    def dump(obj):
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"

    # Only the zeroed hex digits change below, so the raw-bytes digest stays valid.
    manifest["manifest_bytes_sha256"] = manifest_bytes_digest(dump(manifest))
    # The 1.0 self-hash (canonical JSON) keeps 1.0 readers working on 1.1 files.
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    manifest["manifest_sha256"] = _sha256(_canonical_json(body))
    return dump(manifest)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_real(name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TableError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise TableError(f"{name} is too large to be a float") from None


def _check_cells(bits, shared_bits) -> None:
    if (1 << bits) * (1 << shared_bits) > MAX_TABLE_CELLS:
        raise TableError(
            f"a table with bits={bits} and shared_bits={shared_bits} has more than "
            f"{MAX_TABLE_CELLS} cells (the documented maximum)"
        )


def table_name(bits: int, shared_bits: int, tail_prob: float) -> str:
    """The directory label of a table, e.g. ``b2-l5-p1in512`` (never parsed)."""
    inverse = 1 / tail_prob
    tail = f"1in{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{tail_prob:.6g}"
    return f"b{bits}-l{shared_bits}-p{tail}"


class Table:
    """A fixed-rate unbiased quantizer: receiver table, tail rule and provenance.

    Parameters
    ----------
    receiver : array_like, shape (2**shared_bits, 2**bits)
        ``receiver[h, x]`` is the value decoded from message ``x`` under shared value ``h``;
        rows must be non-decreasing in ``x``.
    bits, shared_bits : int
        Message bits ``b`` and shared-randomness bits ``l``.
    tail_prob : float
        Design probability of a coordinate falling outside ``[lower, upper]``.
    lower, upper : float
        Values outside this interval are sent exactly. Symmetric designs use
        ``lower == -upper == -threshold``.
    manifest : dict, optional
        Provenance (design, quality, verification) recorded with the table.
    code_model : array_like, shape (2**shared_bits, 2**bits), optional
        For entropy-coded designs: ``code_model[h, x]`` is the probability of message
        ``x`` given ``h`` used by the entropy coder (rows sum to 1).
    bound_arrays : tuple of array_like, optional
        ``(edges, multipliers)`` of the global lower-bound proof described by the
        manifest's ``global_bound`` section (see :mod:`quicdesign.bound`).

    Raises
    ------
    TableError
        If the receiver is malformed or its sender rule does not cover ``[lower, upper]``.
    """

    def __init__(
        self,
        receiver,
        *,
        bits,
        shared_bits,
        tail_prob,
        lower,
        upper,
        manifest=None,
        code_model=None,
        bound_arrays=None,
    ):
        self.bits = check_int(bits, "bits", 1, _MAX_BITS)
        self.shared_bits = check_int(shared_bits, "shared_bits", 0, _MAX_SHARED_BITS)
        self.tail_prob = check_tail_prob(tail_prob)
        _check_cells(self.bits, self.shared_bits)
        self.lower, self.upper = _check_real("lower", lower), _check_real("upper", upper)
        if not (
            math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper
        ):
            raise TableError(f"need finite lower < upper, got [{lower}, {upper}]")
        receiver = np.array(receiver, dtype=np.float64)
        expected = (1 << self.shared_bits, 1 << self.bits)
        if receiver.shape != expected:
            raise TableError(f"receiver must have shape {expected}, got {receiver.shape}")
        self._sender = SenderRule(receiver)
        self.receiver = self._sender.receiver
        start, end = self._sender.support
        slack = 1e-9 * (self.upper - self.lower)
        if start > self.lower + slack or end < self.upper - slack:
            raise TableError(
                f"sender support [{start:.12g}, {end:.12g}] does not cover "
                f"[{self.lower:.12g}, {self.upper:.12g}]: the table would be biased"
            )
        self.code_model = None if code_model is None else _check_code_model(code_model, expected)
        self._manifest = dict(manifest or {})
        if bound_arrays is None:
            # A bound claim without its proof arrays (e.g. a manifest copied from another
            # table) proves nothing: it is dropped rather than carried along unchecked.
            self._manifest.pop("global_bound", None)
            self._bound_arrays = None
        else:
            self._bound_arrays = _check_bound_arrays(bound_arrays)
            if not isinstance(self._manifest.get("global_bound"), dict):
                raise TableError("bound arrays need a global_bound manifest section")

    # -- parameters -----------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """``T``: coordinates with ``|z| > T`` are sent exactly (``upper`` of the support)."""
        return self.upper

    @property
    def support(self) -> tuple[float, float]:
        """``(lower, upper)``: the interval quantized by the table."""
        return self.lower, self.upper

    @property
    def num_shared(self) -> int:
        """``H = 2**shared_bits``."""
        return self.receiver.shape[0]

    @property
    def num_messages(self) -> int:
        """``K = 2**bits``."""
        return self.receiver.shape[1]

    @property
    def sender(self) -> SenderRule:
        """The closed-form optimal sender rule, determined by the receiver."""
        return self._sender

    @property
    def vnmse(self) -> float | None:
        """Design vNMSE on the standard normal (tail error counted as 0), if recorded."""
        value = self._manifest.get("quality", {}).get("vnmse")
        return None if value is None else float(value)

    @property
    def manifest(self) -> dict:
        """The full manifest as it would be saved (a fresh dict)."""
        return self._build_manifest()

    @property
    def fingerprint(self) -> bytes:
        """8 bytes identifying the parameters and receiver, carried in every payload."""
        head = struct.pack(
            "<8sBBddd",
            b"qdtable1",
            self.bits,
            self.shared_bits,
            self.tail_prob,
            self.lower,
            self.upper,
        )
        body = self.receiver.astype("<f8").tobytes()
        if self.code_model is not None:
            body += b"code_model" + self.code_model.astype("<f8").tobytes()
        return hashlib.sha256(head + body).digest()[:8]

    @property
    def input_model(self) -> dict:
        """``{"normalization", "scale", "law"}``: the input this table was designed for
        (:mod:`quicdesign.input_model`)."""
        return input_model_of(self._manifest)

    @property
    def bits_per_coordinate(self) -> float:
        """Expected wire bits per coordinate, tails included (as recorded by the design).

        For a fixed-rate table without a record this is ``bits + 64 * tail_prob``.
        """
        recorded = self._manifest.get("quality", {}).get("bits_per_coordinate")
        if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
            return float(recorded)
        return self.bits + 64 * self.tail_prob

    @property
    def nominal_rate(self) -> float | None:
        """For an entropy-coded table, the bits per coordinate it was designed for."""
        if self.code_model is None:
            return None
        point = self._manifest.get("design", {}).get("operating_point", {})
        target = point.get("target_bits") if isinstance(point, dict) else None
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            return float(target)
        return self.bits_per_coordinate

    @property
    def name(self) -> str:
        """A readable label (never parsed: parameters live in the manifest).

        Entropy-coded tables are named by their nominal rate, e.g. ``rate2-l6``.
        """
        rate = self.nominal_rate
        if rate is not None:
            label = f"{rate:g}" if rate == round(rate, 2) else f"{rate:.2f}"
            return f"rate{label}-l{self.shared_bits}"
        return table_name(self.bits, self.shared_bits, self.tail_prob)

    def __repr__(self):
        vnmse = "" if self.vnmse is None else f", vnmse={self.vnmse:.6g}"
        if self.code_model is not None:
            return (
                f"Table(entropy-coded, rate={self.nominal_rate:g} bits/coordinate "
                f"(expected {self.bits_per_coordinate:.4g}), messages=2**{self.bits}, "
                f"shared_bits={self.shared_bits}, tail_prob={self.tail_prob:.6g}{vnmse})"
            )
        return (
            f"Table(bits={self.bits}, shared_bits={self.shared_bits}, "
            f"tail_prob={self.tail_prob:.6g}, threshold={self.threshold:.6g}{vnmse})"
        )

    def __eq__(self, other):
        if not isinstance(other, Table):
            return NotImplemented
        return self.fingerprint == other.fingerprint

    def __hash__(self):
        return hash(self.fingerprint)

    def __reduce__(self):
        # Ship the receiver and parameters only: the sender rule's derived tables are
        # rebuilt (and everything re-validated) by the constructor on the other side.
        # The lower-bound proof stays behind (the constructor drops its claim): workers
        # encode and aggregate, they do not certify.
        return _rebuild_table, (
            self.receiver,
            self.bits,
            self.shared_bits,
            self.tail_prob,
            self.lower,
            self.upper,
            self._manifest,
            self.code_model,
        )

    def with_manifest(self, **sections) -> Table:
        """Return a copy whose manifest has the given top-level sections replaced."""
        return self._copy_keeping_bound({**self._manifest, **sections})

    def without_manifest(self, *names: str) -> Table:
        """Return a copy whose manifest lacks the given top-level sections."""
        kept = {name: value for name, value in self._manifest.items() if name not in names}
        return self._copy_keeping_bound(kept)

    def with_global_bound(self, section: dict, edges, multipliers) -> Table:
        """Return a copy carrying a lower-bound proof (manifest section and arrays)."""
        manifest = {**self._manifest, "global_bound": dict(section)}
        return self._copy(manifest, (edges, multipliers))

    def _copy_keeping_bound(self, manifest: dict) -> Table:
        """A copy with ``manifest``; the bound proof stays while its section does."""
        bound = None if manifest.get("global_bound") is None else self._bound_arrays
        return self._copy(manifest, bound)

    def _copy(self, manifest: dict, bound_arrays) -> Table:
        """The same quantizer with another manifest and bound proof (re-validated)."""
        return Table(
            self.receiver,
            bits=self.bits,
            shared_bits=self.shared_bits,
            tail_prob=self.tail_prob,
            lower=self.lower,
            upper=self.upper,
            manifest=manifest,
            code_model=self.code_model,
            bound_arrays=bound_arrays,
        )

    def bound_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, multipliers)`` of the shipped lower-bound proof.

        Raises
        ------
        TableError
            If the table carries no proof.
        """
        if self._bound_arrays is None:
            raise TableError(f"{self.name} carries no global_bound proof")
        return self._bound_arrays

    def _array_files(self) -> dict[str, tuple[str, np.ndarray]]:
        arrays = {"receiver": ("receiver.f64", self.receiver)}
        if self.code_model is not None:
            arrays["code_model"] = ("code_model.f64", self.code_model)
        if self._bound_arrays is not None:
            arrays["bound_edges"] = ("bound_edges.f64", self._bound_arrays[0])
            arrays["bound_multipliers"] = ("bound_multipliers.f64", self._bound_arrays[1])
        return arrays

    # -- format ---------------------------------------------------------------------
    def _build_manifest(self) -> dict:
        manifest = {
            key: value
            for key, value in self._manifest.items()
            if key not in ("format", "parameters", "arrays", *_SELF_HASH_KEYS)
        }
        manifest["format"] = {
            "name": FORMAT_NAME,
            "major": FORMAT_VERSION[0],
            "minor": FORMAT_VERSION[1],
        }
        manifest["parameters"] = {
            "bits": self.bits,
            "shared_bits": self.shared_bits,
            "tail_prob": self.tail_prob,
            "lower": self.lower,
            "upper": self.upper,
            "threshold": self.threshold,
            **{
                k: v
                for k, v in self._manifest.get("parameters", {}).items()
                if k
                not in ("bits", "shared_bits", "tail_prob", "lower", "upper", "threshold", "exact")
            },
            "exact": {name: float.hex(getattr(self, name)) for name in _EXACT_PARAMETERS},
        }
        manifest["arrays"] = {
            key: {
                "file": file_name,
                "dtype": "<f8",
                "shape": list(array.shape),
                "order": "C",
                "sha256": _sha256(array.astype("<f8").tobytes()),
            }
            for key, (file_name, array) in self._array_files().items()
        }
        manifest["fingerprint"] = self.fingerprint.hex()
        return json.loads(_serialize_manifest(manifest))

    def save(self, path, format="directory") -> Path:
        """Write the table (files are replaced).

        Parameters
        ----------
        path : path-like
            The table directory (created if needed), or the file for an export format.
        format : {"directory", "safetensors", "npz"}
            ``"directory"``: the table format (``docs/table-format.md``). ``"safetensors"``
            (needs the ``export`` extra) or ``"npz"``: one file with the arrays as float64
            tensors and every parameter, floats exact, in its metadata.

        Returns
        -------
        pathlib.Path
            The table directory or file.
        """
        if format != "directory":
            return save_export(self, path, format)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = self._build_manifest()
        files = {
            name: array.astype("<f8").tobytes() for name, array in self._array_files().values()
        }
        files[MANIFEST_FILE] = _serialize_manifest(manifest)
        for name, data in files.items():
            _atomic_write(path / name, data)
        return path

    @classmethod
    def load(cls, path) -> Table:
        """Load and validate a table directory, or a ``.safetensors`` / ``.npz`` export.

        Raises
        ------
        TableNotFoundError
            If there is no manifest.
        TableVersionError
            If the format name or major version is unknown.
        TableChecksumError
            If the manifest or an array does not match its sha256.
        TableError
            For any other malformed content.
        """
        path = Path(path)
        if export_format(path) is not None and not path.is_dir():
            return load_export(cls, path)
        manifest_path = path / MANIFEST_FILE
        manifest = _read_manifest(manifest_path)
        params = manifest["parameters"]
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict) or "receiver" not in arrays:
            raise TableError(f"{manifest_path}: manifest lists no receiver array")
        unknown = set(arrays) - {"receiver", "code_model", *_BOUND_ARRAYS}
        if unknown:
            raise TableError(f"{manifest_path}: unknown arrays {sorted(unknown)}")
        try:
            # Range-check the shape before any array is read or allocated.
            bits = check_int(params.get("bits"), "bits", 1, _MAX_BITS)
            shared_bits = check_int(params.get("shared_bits"), "shared_bits", 0, _MAX_SHARED_BITS)
            _check_cells(bits, shared_bits)
            expected_shape = (1 << shared_bits, 1 << bits)
            receiver = _read_array(path, arrays["receiver"], expected_shape)
            code_model = (
                _read_array(path, arrays["code_model"], expected_shape)
                if "code_model" in arrays
                else None
            )
            bound_arrays = _read_bound_arrays(path, manifest, arrays)
            table = cls(
                receiver,
                bits=bits,
                shared_bits=shared_bits,
                tail_prob=params.get("tail_prob"),
                lower=params.get("lower"),
                upper=params.get("upper"),
                manifest=manifest,
                code_model=code_model,
                bound_arrays=bound_arrays,
            )
        except TableError as exc:
            if str(manifest_path) in str(exc) or str(path) in str(exc):
                raise
            raise type(exc)(f"{manifest_path}: {exc}") from None
        except ParameterError as exc:
            raise TableError(f"{manifest_path}: {exc}") from None
        if manifest.get("fingerprint") not in (None, table.fingerprint.hex()):
            raise TableChecksumError(f"{manifest_path}: fingerprint does not match the arrays")
        return table


_BOUND_ARRAYS = ("bound_edges", "bound_multipliers")


def _read_bound_arrays(path: Path, manifest: dict, arrays: dict):
    """The proof arrays, sized by the ``global_bound`` section (bounded before reading)."""
    section = manifest.get("global_bound")
    listed = [name in arrays for name in _BOUND_ARRAYS]
    if section is None and not any(listed):
        return None
    if not isinstance(section, dict) or not all(listed):
        raise TableError(f"{path}: global_bound needs its section and both arrays")
    cells = section.get("cells")
    if isinstance(cells, bool) or not isinstance(cells, int) or not 1 <= cells <= MAX_BOUND_CELLS:
        raise TableError(
            f"{path}: global_bound cells must be an integer in [1, {MAX_BOUND_CELLS}], "
            f"got {cells!r}"
        )
    edges = _read_array(path, arrays["bound_edges"], (cells + 1,))
    multipliers = _read_array(path, arrays["bound_multipliers"], (cells,))
    return edges, multipliers


def _check_bound_arrays(bound_arrays) -> tuple[np.ndarray, np.ndarray]:
    try:
        edges, multipliers = (np.array(a, dtype=np.float64) for a in bound_arrays)
    except (TypeError, ValueError):
        raise TableError("bound_arrays must be a pair of numeric arrays") from None
    if edges.ndim != 1 or multipliers.ndim != 1 or edges.size != multipliers.size + 1:
        raise TableError(
            f"bound_arrays need n + 1 edges and n multipliers, got {edges.shape}, "
            f"{multipliers.shape}"
        )
    if multipliers.size > MAX_BOUND_CELLS:
        raise TableError(f"bound_arrays: more than {MAX_BOUND_CELLS} cells")
    edges.setflags(write=False)
    multipliers.setflags(write=False)
    return edges, multipliers


def _rebuild_table(
    receiver, bits, shared_bits, tail_prob, lower, upper, manifest, code_model, bound_arrays=None
):
    """Unpickle hook of :class:`Table` (keyword-only constructor)."""
    return Table(
        receiver,
        bits=bits,
        shared_bits=shared_bits,
        tail_prob=tail_prob,
        lower=lower,
        upper=upper,
        manifest=manifest,
        code_model=code_model,
        bound_arrays=bound_arrays,
    )


def _check_code_model(code_model, expected_shape) -> np.ndarray:
    model = np.array(code_model, dtype=np.float64)
    if model.shape != expected_shape:
        raise TableError(f"code_model must have shape {expected_shape}, got {model.shape}")
    if not np.all(np.isfinite(model)) or model.min() < 0:
        raise TableError("code_model must hold finite non-negative probabilities")
    if not np.allclose(model.sum(axis=1), 1.0, atol=1e-9):
        raise TableError("code_model rows must sum to 1")
    model.setflags(write=False)
    return model


def _atomic_write(target: Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _refuse_nan(constant):
    raise ValueError(f"non-finite number {constant}")


def _json_depth_ok(value) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return True


def _parse_json(data: bytes, where) -> object:
    """Parse JSON bytes, turning every parser failure into one ``TableError``."""
    try:
        value = json.loads(data, parse_constant=_refuse_nan)
    except RecursionError:
        raise TableError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError covers malformed JSON, NaN/Infinity and integers past Python's digit limit.
        raise TableError(f"{where}: not valid JSON ({exc})") from None
    if not _json_depth_ok(value):
        raise TableError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _read_regular_file(path: Path, max_bytes: int, *, missing=TableError) -> bytes:
    """Read a regular file of at most ``max_bytes``; never follow a symlink or open a FIFO.

    The type and size are checked with ``lstat`` before opening, and again on the open
    descriptor (``O_NOFOLLOW | O_NONBLOCK``) so a swap in between cannot slip through.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise missing(f"{path}: file is missing") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL in the name
        raise TableError(f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    _check_regular(path, info, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        handle = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(handle, "rb") as stream:
        _check_regular(path, os.fstat(stream.fileno()), max_bytes)
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TableError(f"{path}: larger than the {max_bytes}-byte maximum")
    return data


def _check_regular(path: Path, info: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise TableError(f"{path}: symbolic links are refused")
    if not stat.S_ISREG(info.st_mode):
        raise TableError(f"{path}: not a regular file (FIFOs and devices are refused)")
    if info.st_size > max_bytes:
        raise TableError(
            f"{path}: {info.st_size} bytes exceeds the {max_bytes}-byte maximum for this file"
        )


def _read_manifest(manifest_path: Path) -> dict:
    data = _read_regular_file(
        manifest_path,
        MAX_MANIFEST_BYTES,
        missing=lambda message: TableNotFoundError(
            f"no table at {manifest_path.parent} (missing {MANIFEST_FILE})"
        ),
    )
    manifest = _parse_json(data, manifest_path)
    if not isinstance(manifest, dict):
        raise TableError(f"{manifest_path}: manifest must be a JSON object")
    fmt = manifest.get("format")
    if not isinstance(fmt, dict) or fmt.get("name") != FORMAT_NAME:
        raise TableVersionError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if fmt.get("major") != FORMAT_VERSION[0]:
        raise TableVersionError(
            f"{manifest_path}: format major version {fmt.get('major')!r} is not supported "
            f"(this release reads {FORMAT_VERSION[0]}.x)"
        )
    _check_self_hashes(manifest_path, data, manifest)
    if not isinstance(manifest.get("parameters"), dict):
        raise TableError(f"{manifest_path}: manifest has no parameters object")
    _check_exact_parameters(manifest_path, manifest["parameters"])
    return manifest


def _check_self_hashes(manifest_path: Path, raw: bytes, manifest: dict) -> None:
    """Format >= 1.1: the raw-bytes digest is required; the canonical-JSON digest (the only
    one in 1.0) is checked whenever present."""
    minor = manifest["format"].get("minor")
    if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
        raise TableVersionError(f"{manifest_path}: format minor version {minor!r} is invalid")
    if minor >= 1 or "manifest_bytes_sha256" in manifest:
        try:
            actual = manifest_bytes_digest(raw)
        except TableChecksumError as exc:
            raise TableChecksumError(f"{manifest_path}: {exc}") from None
        if manifest.get("manifest_bytes_sha256") != actual:
            raise TableChecksumError(
                f"{manifest_path}: manifest bytes sha256 mismatch (edited or corrupt)"
            )
    elif "manifest_sha256" not in manifest:
        raise TableChecksumError(f"{manifest_path}: format 1.0 manifest lacks manifest_sha256")
    if "manifest_sha256" in manifest:
        body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
        try:
            actual = _sha256(_canonical_json(body))
        except ValueError:
            raise TableError(f"{manifest_path}: manifest contains non-finite numbers") from None
        if manifest["manifest_sha256"] != actual:
            raise TableChecksumError(
                f"{manifest_path}: manifest sha256 mismatch (edited or corrupt)"
            )


def _check_exact_parameters(manifest_path: Path, params: dict) -> None:
    """The ``float.hex()`` spellings, when present, must equal the JSON numbers."""
    exact = params.get("exact")
    if exact is None:
        return
    if not isinstance(exact, dict):
        raise TableError(f"{manifest_path}: parameters.exact must be an object")
    for name in _EXACT_PARAMETERS:
        text = exact.get(name)
        try:
            value = float.fromhex(text)
        except (TypeError, ValueError):
            raise TableError(
                f"{manifest_path}: parameters.exact.{name} {text!r} is not a float.hex() string"
            ) from None
        if value != params.get(name):
            raise TableError(
                f"{manifest_path}: parameters.exact.{name} {text} does not equal "
                f"parameters.{name} {params.get(name)!r}"
            )


def _is_plain_name(name) -> bool:
    """A non-hidden file name without separators or NUL (so it stays inside its folder)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(char in name for char in "/\\\0")
        and Path(name).name == name
    )


def _read_array(folder: Path, entry, expected_shape) -> np.ndarray:
    if not isinstance(entry, dict):
        raise TableError(f"{folder}: array entry must be an object")
    name = entry.get("file")
    if not _is_plain_name(name):
        raise TableError(f"{folder}: array file name {name!r} is not a plain file name")
    dtype_name = entry.get("dtype")
    dtype = _ARRAY_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise TableError(f"{folder}/{name}: unsupported dtype {dtype_name!r}")
    if entry.get("shape") != list(expected_shape):
        raise TableError(
            f"{folder}/{name}: shape {entry.get('shape')} does not match the parameters "
            f"{list(expected_shape)}"
        )
    expected_bytes = math.prod(expected_shape) * np.dtype(dtype).itemsize
    file_path = folder / name
    data = _read_regular_file(file_path, expected_bytes)
    if len(data) != expected_bytes:
        raise TableError(f"{file_path}: {len(data)} bytes, expected {expected_bytes}")
    if _sha256(data) != entry.get("sha256"):
        raise TableChecksumError(f"{file_path}: sha256 mismatch (corrupt or tampered array)")
    return np.frombuffer(data, dtype=np.dtype(dtype_name)).reshape(expected_shape).copy()


# -- collections ------------------------------------------------------------------------
def shipped_tables_dir() -> Path:
    """The directory of the tables shipped with this package."""
    installed = Path(__file__).resolve().parent / "_shipped_tables"
    if (installed / INDEX_FILE).is_file():
        return installed
    return Path(__file__).resolve().parent.parent / "tables"


def _default_order(entry: dict) -> tuple:
    """The one default rule: fewest shared bits first, ties broken by directory name."""
    return entry["shared_bits"], entry["directory"]


def _previous_defaults(folder: Path) -> dict[str, str]:
    try:
        return dict(_read_index(folder)["defaults"])
    except TableError:  # no index yet, or a broken one that is about to be replaced
        return {}


def write_index(folder, defaults: dict[int, str] | None = None) -> Path:
    """Write ``index.json`` listing every table directory inside ``folder``.

    Every table present in ``folder`` is listed, so adding tables to a collection never
    hides the ones already there.

    Parameters
    ----------
    folder : path-like
        A directory of table directories.
    defaults : dict, optional
        ``{bits: table directory name}`` to record as defaults. Defaults already recorded
        in ``folder/index.json`` are kept while their table is present, unless replaced
        here. When ``defaults`` is None, every bit width still without a default gets its
        table with the fewest shared bits (ties: directory name) -- the rule
        :func:`load_table` also applies to a collection that names no default.

    Returns
    -------
    pathlib.Path
        The index file.
    """
    folder = Path(folder)
    entries = []
    for child in sorted(folder.iterdir()):
        if child.is_symlink() or not child.is_dir() or not _is_plain_name(child.name):
            continue
        if not (child / MANIFEST_FILE).is_file():
            continue
        table = Table.load(child)
        entries.append(
            {
                "directory": child.name,
                "bits": table.bits,
                "shared_bits": table.shared_bits,
                "tail_prob": table.tail_prob,
                "threshold": table.threshold,
                "vnmse": table.vnmse,
                "expected_bits": table._manifest.get("coding", {}).get("expected_bits"),
                "manifest_sha256": _sha256(
                    _read_regular_file(child / MANIFEST_FILE, MAX_MANIFEST_BYTES)
                ),
            }
        )
    present = {entry["directory"] for entry in entries}
    chosen = {key: name for key, name in _previous_defaults(folder).items() if name in present}
    if defaults is not None:
        chosen.update({str(key): name for key, name in defaults.items()})
    else:
        for entry in sorted(entries, key=lambda e: (e["bits"], *_default_order(e))):
            chosen.setdefault(str(entry["bits"]), entry["directory"])
    missing = sorted(set(chosen.values()) - present)
    if missing:
        raise TableError(f"defaults name tables that are not in {folder}: {missing}")
    index = {
        "format": {"name": INDEX_NAME, "major": FORMAT_VERSION[0], "minor": FORMAT_VERSION[1]},
        "defaults": dict(sorted(chosen.items(), key=lambda item: (len(item[0]), item[0]))),
        "tables": entries,
    }
    target = folder / INDEX_FILE
    _atomic_write(target, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
    return target


_ENTRY_FIELDS = {
    "directory": str,
    "bits": int,
    "shared_bits": int,
    "tail_prob": float,
    "threshold": float,
    "manifest_sha256": str,
}


def _check_entry(entry, path: Path) -> dict:
    if not isinstance(entry, dict):
        raise TableError(f"{path}: every table entry must be an object")
    for key, kind in _ENTRY_FIELDS.items():
        value = entry.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TableError(f"{path}: entry field {key!r} must be {kind.__name__}, got {value!r}")
    if not _is_plain_name(entry["directory"]):
        raise TableError(
            f"{path}: directory {entry['directory']!r} is not a plain name inside the collection"
        )
    if not (
        1 <= entry["bits"] <= _MAX_BITS and 0 <= entry["shared_bits"] <= _MAX_SHARED_BITS
    ) or not (0 < entry["tail_prob"] < 1):
        raise TableError(f"{path}: entry {entry['directory']!r} has out-of-range parameters")
    for key in ("vnmse", "expected_bits"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TableError(f"{path}: entry field {key!r} must be a number or null")
    return entry


def _read_index(folder: Path) -> dict:
    path = folder / INDEX_FILE
    data = _read_regular_file(
        path,
        MAX_INDEX_BYTES,
        missing=lambda message: TableNotFoundError(
            f"{folder} is neither a table nor a table collection"
        ),
    )
    index = _parse_json(data, path)
    fmt = index.get("format") if isinstance(index, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != INDEX_NAME:
        raise TableVersionError(f"{path}: not a {INDEX_NAME}")
    if fmt.get("major") != FORMAT_VERSION[0]:
        raise TableVersionError(f"{path}: index major version {fmt.get('major')!r} not supported")
    tables, defaults = index.get("tables"), index.get("defaults")
    if not isinstance(tables, list) or not isinstance(defaults, dict):
        raise TableError(f"{path}: index lacks 'tables' or 'defaults'")
    if len(tables) > MAX_INDEX_ENTRIES:
        raise TableError(f"{path}: lists {len(tables)} tables, more than {MAX_INDEX_ENTRIES}")
    for entry in tables:
        _check_entry(entry, path)
    listed = {entry["directory"] for entry in tables}
    for key, name in defaults.items():
        if not isinstance(name, str) or name not in listed:
            raise TableError(f"{path}: default {key!r} names {name!r}, which is not listed")
    return index


def list_tables(path=None) -> list[dict]:
    """Entries of a table collection (the shipped one by default), as dicts.

    ``path`` may also be a single table directory: its one entry is returned. Entries of
    entropy-coded tables carry ``expected_bits`` and, when known, ``nominal_rate``.
    """
    folder = shipped_tables_dir() if path is None else Path(path)
    if _is_table_dir(folder):
        table = Table.load(folder)
        return [
            {
                "directory": folder.name,
                "bits": table.bits,
                "shared_bits": table.shared_bits,
                "tail_prob": table.tail_prob,
                "threshold": table.threshold,
                "vnmse": table.vnmse,
                "expected_bits": table._manifest.get("coding", {}).get("expected_bits"),
                "nominal_rate": table.nominal_rate,
            }
        ]
    index = _read_index(folder)
    entries = [dict(entry) for entry in index["tables"]]
    # An entropy collection's defaults are keyed by nominal rate (load_entropy_table).
    rate_of = {directory: key for key, directory in index["defaults"].items()}
    for entry in entries:
        if entry.get("expected_bits") is not None and entry["directory"] in rate_of:
            entry["nominal_rate"] = float(rate_of[entry["directory"]])
    return entries


def _is_table_dir(folder: Path) -> bool:
    try:
        return os.path.lexists(folder / MANIFEST_FILE)
    except ValueError:  # NUL in the path
        raise TableError(f"bad path {str(folder)!r}") from None


def load_table(bits, shared_bits=None, tail_prob=None, path=None) -> Table:
    """Load a shipped or stored table.

    Parameters left out are chosen by one rule: the collection's default table for
    ``bits`` if it matches the parameters given, otherwise the matching table with the
    fewest shared bits (ties: directory name). So ``load_table(2)`` and
    ``load_table(2, tail_prob=1/512)`` return the same (default) table.

    Parameters
    ----------
    bits : int
        Message bits ``b``.
    shared_bits : int, optional
        Shared-randomness bits ``l``.
    tail_prob : float, optional
        Tail probability.
    path : path-like, optional
        A table directory or a collection directory; the shipped tables by default.

    Returns
    -------
    Table

    Raises
    ------
    TableNotFoundError
        If no table matches.
    TableError
        If the collection or the table is malformed.
    """
    bits = check_int(bits, "bits", 1, _MAX_BITS)
    if shared_bits is not None:
        shared_bits = check_int(shared_bits, "shared_bits", 0, _MAX_SHARED_BITS)
    if tail_prob is not None:
        tail_prob = check_tail_prob(tail_prob)
    folder = shipped_tables_dir() if path is None else Path(path)
    if _is_table_dir(folder):
        table = Table.load(folder)
        _require_match(table, bits, shared_bits, tail_prob, folder)
        return table
    index = _read_index(folder)
    candidates = [
        e
        for e in index["tables"]
        if e["bits"] == bits
        and (shared_bits is None or e["shared_bits"] == shared_bits)
        and (tail_prob is None or math.isclose(e["tail_prob"], tail_prob, rel_tol=1e-9))
    ]
    if not candidates:
        available = ", ".join(
            f"b={e['bits']} l={e['shared_bits']} p={e['tail_prob']:.6g}" for e in index["tables"]
        )
        raise TableNotFoundError(
            f"no table with bits={bits}, shared_bits={shared_bits}, tail_prob={tail_prob} "
            f"in {folder}; available: {available or 'none'}"
        )
    default = index["defaults"].get(str(bits))
    preferred = [e for e in candidates if e["directory"] == default]
    entry = preferred[0] if preferred else min(candidates, key=_default_order)
    table = _load_entry(folder, entry)
    _require_match(table, bits, shared_bits, tail_prob, folder / entry["directory"])
    return table


def _load_entry(folder: Path, entry: dict) -> Table:
    """Load the table an index entry points to, checking the manifest's sha256 first."""
    directory = entry["directory"]
    table_dir = folder / directory
    try:
        info = os.lstat(table_dir)
    except OSError as exc:
        raise TableNotFoundError(
            f"{folder / INDEX_FILE} lists {directory!r} but it cannot be read: {exc.strerror}"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise TableError(f"{table_dir}: a listed table must be a real directory (no symlinks)")
    manifest_bytes = _read_regular_file(table_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    if _sha256(manifest_bytes) != entry["manifest_sha256"]:
        raise TableChecksumError(
            f"{table_dir / MANIFEST_FILE}: does not match the sha256 in the index"
        )
    return Table.load(table_dir)


def load_entropy_table(rate_bits: int, path=None) -> Table:
    """Load a shipped (or stored) entropy-coded table by its nominal bits per coordinate.

    Parameters
    ----------
    rate_bits : int
        Nominal wire bits per coordinate (the collection's ``defaults`` key).
    path : path-like, optional
        A collection of entropy-coded tables; ``<shipped tables>/entropy`` by default.

    Returns
    -------
    Table
        A table with a ``code_model``.
    """
    folder = shipped_tables_dir() / "entropy" if path is None else Path(path)
    rate_bits = check_int(rate_bits, "rate_bits", 1, _MAX_BITS)
    index = _read_index(folder)
    directory = index["defaults"].get(str(rate_bits))
    entries = [e for e in index["tables"] if e["directory"] == directory]
    if directory is None or not entries:
        raise TableNotFoundError(
            f"no entropy-coded table for {rate_bits} bits in {folder}; "
            f"available: {sorted(index['defaults'])}"
        )
    table = _load_entry(folder, entries[0])
    if table.code_model is None:
        raise TableError(f"{folder / directory} has no code model")
    return table


def _require_match(table, bits, shared_bits, tail_prob, where):
    if (
        table.bits != bits
        or (shared_bits is not None and table.shared_bits != shared_bits)
        or (tail_prob is not None and not math.isclose(table.tail_prob, tail_prob, rel_tol=1e-9))
    ):
        raise TableNotFoundError(f"{where} holds {table!r}, not the requested parameters")
