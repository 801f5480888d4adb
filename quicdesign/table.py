"""Quantizer tables and their on-disk format.

A table is a directory holding ``manifest.json`` and one raw little-endian array file
per array (see ``docs/table-format.md``). The manifest records the format name and
major/minor version, the parameters, the design provenance and, for every array, its
dtype, shape and sha256; the manifest carries a sha256 of its own canonical JSON. Loading
never unpickles or evaluates anything and refuses unknown major versions, checksum
mismatches, path tricks and oversized files before reading them.

A *collection* is a directory of table directories plus ``index.json`` listing them, with
the sha256 of each manifest file and the default table per bit width.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from ._validate import check_int, check_tail_prob
from .errors import (
    ParameterError,
    TableChecksumError,
    TableError,
    TableNotFoundError,
    TableVersionError,
)
from .sender import SenderRule

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Table",
    "load_table",
    "load_entropy_table",
    "list_tables",
    "write_index",
    "shipped_tables_dir",
]

FORMAT_NAME = "quicdesign-table"
FORMAT_VERSION = (1, 0)
INDEX_NAME = "quicdesign-table-index"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
_MAX_MANIFEST_BYTES = 1 << 20
_ARRAY_DTYPES = {"<f8": np.float64}
_MAX_BITS, _MAX_SHARED_BITS = 16, 12


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    ):
        self.bits = check_int(bits, "bits", 1, _MAX_BITS)
        self.shared_bits = check_int(shared_bits, "shared_bits", 0, _MAX_SHARED_BITS)
        self.tail_prob = check_tail_prob(tail_prob)
        self.lower, self.upper = float(lower), float(upper)
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
    def name(self) -> str:
        """A readable label (never parsed: parameters live in the manifest)."""
        inverse = 1 / self.tail_prob
        tail = (
            f"1in{round(inverse)}"
            if abs(inverse - round(inverse)) < 1e-9
            else f"{self.tail_prob:.6g}"
        )
        return f"b{self.bits}-l{self.shared_bits}-p{tail}"

    def __repr__(self):
        vnmse = "" if self.vnmse is None else f", vnmse={self.vnmse:.6g}"
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

    def with_manifest(self, **sections) -> Table:
        """Return a copy whose manifest has the given top-level sections replaced."""
        manifest = {**self._manifest, **sections}
        return Table(
            self.receiver,
            bits=self.bits,
            shared_bits=self.shared_bits,
            tail_prob=self.tail_prob,
            lower=self.lower,
            upper=self.upper,
            manifest=manifest,
            code_model=self.code_model,
        )

    def _array_files(self) -> dict[str, tuple[str, np.ndarray]]:
        arrays = {"receiver": ("receiver.f64", self.receiver)}
        if self.code_model is not None:
            arrays["code_model"] = ("code_model.f64", self.code_model)
        return arrays

    # -- format ---------------------------------------------------------------------
    def _build_manifest(self) -> dict:
        manifest = {
            key: value
            for key, value in self._manifest.items()
            if key not in ("format", "parameters", "arrays", "manifest_sha256")
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
                if k not in ("bits", "shared_bits", "tail_prob", "lower", "upper", "threshold")
            },
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
        manifest["manifest_sha256"] = _sha256(_canonical_json(manifest))
        return manifest

    def save(self, path) -> Path:
        """Write the table directory ``path`` (created if needed; files are replaced).

        Returns
        -------
        pathlib.Path
            The table directory.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = self._build_manifest()
        files = {
            name: array.astype("<f8").tobytes() for name, array in self._array_files().values()
        }
        files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        for name, data in files.items():
            _atomic_write(path / name, data)
        return path

    @classmethod
    def load(cls, path) -> Table:
        """Load and validate a table directory.

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
        manifest_path = path / MANIFEST_FILE
        manifest = _read_manifest(manifest_path)
        params = manifest["parameters"]
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict) or "receiver" not in arrays:
            raise TableError(f"{manifest_path}: manifest lists no receiver array")
        try:
            expected_shape = (1 << int(params["shared_bits"]), 1 << int(params["bits"]))
            receiver = _read_array(path, arrays["receiver"], expected_shape)
            unknown = set(arrays) - {"receiver", "code_model"}
            if unknown:
                raise TableError(f"{manifest_path}: unknown arrays {sorted(unknown)}")
            code_model = (
                _read_array(path, arrays["code_model"], expected_shape)
                if "code_model" in arrays
                else None
            )
            table = cls(
                receiver,
                bits=params["bits"],
                shared_bits=params["shared_bits"],
                tail_prob=params["tail_prob"],
                lower=params["lower"],
                upper=params["upper"],
                manifest=manifest,
                code_model=code_model,
            )
        except (KeyError, TypeError, OverflowError) as exc:
            raise TableError(f"{manifest_path}: malformed parameters ({exc!r})") from None
        except ParameterError as exc:
            raise TableError(f"{manifest_path}: {exc}") from None
        if manifest.get("fingerprint") not in (None, table.fingerprint.hex()):
            raise TableChecksumError(f"{manifest_path}: fingerprint does not match the arrays")
        return table


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


def _read_manifest(manifest_path: Path) -> dict:
    try:
        size = manifest_path.stat().st_size
    except FileNotFoundError:
        raise TableNotFoundError(
            f"no table at {manifest_path.parent} (missing {MANIFEST_FILE})"
        ) from None
    except OSError as exc:
        raise TableError(f"cannot read {manifest_path}: {exc.strerror}") from None
    if size > _MAX_MANIFEST_BYTES:
        raise TableError(f"{manifest_path}: manifest of {size} bytes is implausibly large")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TableError(f"{manifest_path}: not valid JSON ({exc})") from None
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
    recorded = manifest.get("manifest_sha256")
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    try:
        actual = _sha256(_canonical_json(body))
    except ValueError:
        raise TableError(f"{manifest_path}: manifest contains non-finite numbers") from None
    if recorded != actual:
        raise TableChecksumError(f"{manifest_path}: manifest sha256 mismatch (edited or corrupt)")
    if not isinstance(manifest.get("parameters"), dict):
        raise TableError(f"{manifest_path}: manifest has no parameters object")
    return manifest


def _read_array(folder: Path, entry, expected_shape) -> np.ndarray:
    if not isinstance(entry, dict):
        raise TableError(f"{folder}: array entry must be an object")
    name = entry.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise TableError(f"{folder}: array file name {name!r} is not a plain file name")
    dtype = _ARRAY_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise TableError(f"{folder}/{name}: unsupported dtype {entry.get('dtype')!r}")
    if entry.get("shape") != list(expected_shape):
        raise TableError(
            f"{folder}/{name}: shape {entry.get('shape')} does not match the parameters "
            f"{list(expected_shape)}"
        )
    expected_bytes = math.prod(expected_shape) * np.dtype(dtype).itemsize
    file_path = folder / name
    try:
        size = file_path.stat().st_size
        if size != expected_bytes:
            raise TableError(f"{file_path}: {size} bytes, expected {expected_bytes}")
        data = file_path.read_bytes()
    except FileNotFoundError:
        raise TableError(f"{file_path}: array file is missing") from None
    except OSError as exc:
        raise TableError(f"cannot read {file_path}: {exc.strerror}") from None
    if _sha256(data) != entry.get("sha256"):
        raise TableChecksumError(f"{file_path}: sha256 mismatch (corrupt or tampered array)")
    return np.frombuffer(data, dtype=np.dtype(entry["dtype"])).reshape(expected_shape).copy()


# -- collections ------------------------------------------------------------------------
def shipped_tables_dir() -> Path:
    """The directory of the tables shipped with this package."""
    installed = Path(__file__).resolve().parent / "_shipped_tables"
    if (installed / INDEX_FILE).is_file():
        return installed
    return Path(__file__).resolve().parent.parent / "tables"


def write_index(folder, defaults: dict[int, str] | None = None) -> Path:
    """Write ``index.json`` for every table directory inside ``folder``.

    Parameters
    ----------
    folder : path-like
        A directory of table directories.
    defaults : dict, optional
        ``{bits: table directory name}``; by default the entry with the most shared bits
        for each bit width that is not marked otherwise.
    """
    folder = Path(folder)
    entries = []
    for child in sorted(p for p in folder.iterdir() if (p / MANIFEST_FILE).is_file()):
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
                "manifest_sha256": _sha256((child / MANIFEST_FILE).read_bytes()),
            }
        )
    if defaults is None:
        defaults = {}
        for entry in sorted(entries, key=lambda e: (e["bits"], e["shared_bits"])):
            defaults.setdefault(entry["bits"], entry["directory"])
    index = {
        "format": {"name": INDEX_NAME, "major": FORMAT_VERSION[0], "minor": FORMAT_VERSION[1]},
        "defaults": {str(bits): name for bits, name in sorted(defaults.items())},
        "tables": entries,
    }
    target = folder / INDEX_FILE
    _atomic_write(target, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
    return target


def _read_index(folder: Path) -> dict:
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise TableNotFoundError(f"{folder} is neither a table nor a table collection") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read {path}: {exc}") from None
    fmt = index.get("format") if isinstance(index, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != INDEX_NAME:
        raise TableVersionError(f"{path}: not a {INDEX_NAME}")
    if fmt.get("major") != FORMAT_VERSION[0]:
        raise TableVersionError(f"{path}: index major version {fmt.get('major')!r} not supported")
    if not isinstance(index.get("tables"), list) or not isinstance(index.get("defaults"), dict):
        raise TableError(f"{path}: index lacks 'tables' or 'defaults'")
    return index


def list_tables(path=None) -> list[dict]:
    """Entries of a table collection (the shipped one by default), as dicts."""
    folder = shipped_tables_dir() if path is None else Path(path)
    return [dict(entry) for entry in _read_index(folder)["tables"]]


def load_table(bits, shared_bits=None, tail_prob=None, path=None) -> Table:
    """Load a shipped or stored table.

    Parameters
    ----------
    bits : int
        Message bits ``b``.
    shared_bits : int, optional
        Shared-randomness bits ``l``; by default the collection's default for ``bits``.
    tail_prob : float, optional
        Tail probability; by default that of the default table.
    path : path-like, optional
        A table directory or a collection directory; the shipped tables by default.

    Returns
    -------
    Table

    Raises
    ------
    TableNotFoundError
        If no table matches.
    """
    bits = check_int(bits, "bits", 1, _MAX_BITS)
    if shared_bits is not None:
        shared_bits = check_int(shared_bits, "shared_bits", 0, _MAX_SHARED_BITS)
    if tail_prob is not None:
        tail_prob = check_tail_prob(tail_prob)
    folder = shipped_tables_dir() if path is None else Path(path)
    if (folder / MANIFEST_FILE).is_file():
        table = Table.load(folder)
        _require_match(table, bits, shared_bits, tail_prob, folder)
        return table
    index = _read_index(folder)
    entries = index["tables"]
    if shared_bits is None and tail_prob is None:
        default = index["defaults"].get(str(bits))
        entries = [e for e in entries if e.get("directory") == default]
    candidates = [
        e
        for e in entries
        if e.get("bits") == bits
        and (shared_bits is None or e.get("shared_bits") == shared_bits)
        and (tail_prob is None or math.isclose(e.get("tail_prob", -1), tail_prob, rel_tol=1e-9))
    ]
    if not candidates:
        available = ", ".join(
            f"b={e.get('bits')} l={e.get('shared_bits')} p={e.get('tail_prob'):.6g}"
            for e in index["tables"]
        )
        raise TableNotFoundError(
            f"no table with bits={bits}, shared_bits={shared_bits}, tail_prob={tail_prob} "
            f"in {folder}; available: {available or 'none'}"
        )
    entry = max(candidates, key=lambda e: e.get("shared_bits", 0))
    table = _load_entry(folder, entry)
    _require_match(table, bits, shared_bits, tail_prob, folder / entry["directory"])
    return table


def _load_entry(folder: Path, entry: dict) -> Table:
    """Load the table an index entry points to, checking the manifest's sha256 first."""
    directory = entry.get("directory")
    if not isinstance(directory, str) or Path(directory).name != directory:
        raise TableError(f"{folder / INDEX_FILE}: bad directory entry {directory!r}")
    try:
        manifest_bytes = (folder / directory / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise TableNotFoundError(
            f"{folder / INDEX_FILE} lists {directory!r} but it cannot be read: {exc.strerror}"
        ) from None
    if _sha256(manifest_bytes) != entry.get("manifest_sha256"):
        raise TableChecksumError(
            f"{folder / directory / MANIFEST_FILE}: does not match the sha256 in the index"
        )
    return Table.load(folder / directory)


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
    index = _read_index(folder)
    directory = index["defaults"].get(str(rate_bits))
    entries = [e for e in index["tables"] if e.get("directory") == directory]
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
