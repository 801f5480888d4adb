"""Tables as single files common tensor libraries load: safetensors and npz.

Both hold the arrays (``receiver``, and ``code_model`` for entropy-coded tables) as
float64 tensors and every parameter as string metadata, floats spelled with
``float.hex()`` so nothing is rounded (``docs/table-format.md``, "Export formats").
Loading recomputes the fingerprint and refuses a file whose metadata disagrees. safetensors
needs the optional ``safetensors`` package (``pip install quicdesign[export]``); npz
needs numpy only and is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from .errors import ParameterError, TableChecksumError, TableError, TableNotFoundError

EXPORT_FORMAT = "quicdesign-table-export/1"
EXPORT_SUFFIXES = {".safetensors": "safetensors", ".npz": "npz"}
# The global bound's proof (1-D), carried when the table has one.
_BOUND_NAMES = ("bound_edges", "bound_multipliers")
_ARRAY_NAMES = ("receiver", "code_model", *_BOUND_NAMES)
_FLOAT_FIELDS = ("tail_prob", "lower", "upper")
# A 256 x 256 receiver and code model, plus a generous manifest.
_MAX_EXPORT_BYTES = 2 * 256 * 256 * 8 + (4 << 20)
# Manifest sections the file layout, not the provenance, determines.
_LAYOUT_KEYS = ("format", "arrays", "manifest_sha256", "manifest_bytes_sha256")


def export_format(path) -> str | None:
    """``"safetensors"`` or ``"npz"`` for an export file name, else None."""
    return EXPORT_SUFFIXES.get(Path(path).suffix.lower())


def _metadata(table) -> dict[str, str]:
    manifest = {k: v for k, v in table.manifest.items() if k not in _LAYOUT_KEYS}
    return {
        "format": EXPORT_FORMAT,
        "bits": str(table.bits),
        "shared_bits": str(table.shared_bits),
        **{name: float.hex(getattr(table, name)) for name in _FLOAT_FIELDS},
        "fingerprint": table.fingerprint.hex(),
        "manifest": json.dumps(manifest, sort_keys=True, allow_nan=False),
    }


def _tensors(table) -> dict[str, np.ndarray]:
    arrays = {"receiver": table.receiver}
    if table.code_model is not None:
        arrays["code_model"] = table.code_model
    if table._bound_arrays is not None:
        arrays.update(zip(_BOUND_NAMES, table._bound_arrays, strict=True))
    return {name: np.ascontiguousarray(array, dtype="<f8") for name, array in arrays.items()}


def save_export(table, path, file_format: str) -> Path:
    """Write ``table`` as one safetensors or npz file (replaced atomically)."""
    path = Path(path)
    if file_format not in EXPORT_SUFFIXES.values():
        raise ParameterError(
            f"format must be 'directory', 'safetensors' or 'npz', got {file_format!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        if file_format == "safetensors":
            save_file = _safetensors().numpy.save_file
            save_file(_tensors(table), temp, metadata=_metadata(table))
        else:
            metadata = np.frombuffer(json.dumps(_metadata(table)).encode(), dtype=np.uint8)
            with open(temp, "wb") as stream:
                np.savez(stream, metadata=metadata, **_tensors(table))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ParameterError(
            "safetensors files need the 'safetensors' package (pip install quicdesign[export])"
        ) from None
    return safetensors


def _check_size(path: Path) -> None:
    try:
        if not path.is_file():
            raise TableNotFoundError(f"no table file at {path}")
        size = path.stat().st_size
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror}") from None
    if size > _MAX_EXPORT_BYTES:
        raise TableError(f"{path}: {size} bytes is implausibly large for a table")


def _read_safetensors(path: Path):
    safetensors = _safetensors()
    try:
        with safetensors.safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            unknown = names - set(_ARRAY_NAMES)
            arrays = {name: handle.get_tensor(name) for name in names & set(_ARRAY_NAMES)}
    except (OSError, ValueError, safetensors.SafetensorError) as exc:
        raise TableError(f"{path}: not a readable safetensors file ({exc})") from None
    if unknown:
        raise TableError(f"{path}: unknown tensors {sorted(unknown)}")
    return metadata, arrays


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def read_npy(stream, max_bytes: int) -> np.ndarray:
    """Read one ``.npy`` array: no pickle, size checked from the header before reading.

    Raises ``ValueError`` for anything malformed (numpy's header parser can also raise
    ``SyntaxError`` or ``tokenize.TokenError``), object dtypes, a header whose shape
    needs more than ``max_bytes``, and truncated data.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _HEADER_READERS:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran_order, dtype = _HEADER_READERS[version](stream, max_header_size=10_000)
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as exc:
        raise ValueError(f"not a readable .npy header ({exc})") from None
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need pickle)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise ValueError(f"array of {nbytes} bytes exceeds {max_bytes}")
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"truncated .npy data: {len(data)} of {nbytes} bytes")
    array = np.frombuffer(data, dtype=dtype).copy()
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_npz(path: Path):
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            names = {name.removesuffix(".npy") for name in members}
            unknown = names - {*_ARRAY_NAMES, "metadata"}
            if unknown or "metadata" not in names or len(names) != len(members):
                raise TableError(f"{path}: expected metadata and {_ARRAY_NAMES} arrays")
            # sizes as recorded by the archive, checked before anything is inflated
            if sum(info.file_size for info in members.values()) > _MAX_EXPORT_BYTES:
                raise TableError(f"{path}: arrays too large for a table")
            arrays = {}
            for name in names:
                with archive.open(f"{name}.npy") as stream:
                    arrays[name] = read_npy(stream, _MAX_EXPORT_BYTES)
        raw = arrays.pop("metadata")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise TableError(f"{path}: metadata must be a uint8 vector of JSON")
        metadata = json.loads(raw.tobytes())
    except TableError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise TableError(f"{path}: not a readable npz table ({exc})") from None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TableError(f"{path}: metadata must map strings to strings")
    return metadata, arrays


def load_export(table_class, path):
    """Load a table written by :func:`save_export`; refuse any inconsistency."""
    path = Path(path)
    file_format = export_format(path)
    _check_size(path)
    reader = _read_safetensors if file_format == "safetensors" else _read_npz
    metadata, arrays = reader(path)
    if metadata.get("format") != EXPORT_FORMAT:
        raise TableError(
            f"{path}: metadata format {metadata.get('format')!r} is not {EXPORT_FORMAT}"
        )
    if "receiver" not in arrays:
        raise TableError(f"{path}: no receiver tensor")
    for name, array in arrays.items():
        ndim = 1 if name in _BOUND_NAMES else 2
        if array.dtype != np.float64 or array.ndim != ndim:
            raise TableError(f"{path}: {name} must be a {ndim}-D float64 tensor")
    bound = [arrays.get(name) for name in _BOUND_NAMES]
    if (bound[0] is None) != (bound[1] is None):
        raise TableError(f"{path}: the global bound needs both {' and '.join(_BOUND_NAMES)}")
    try:
        values = {name: float.fromhex(metadata[name]) for name in _FLOAT_FIELDS}
        bits, shared_bits = int(metadata["bits"]), int(metadata["shared_bits"])
        manifest = json.loads(metadata.get("manifest", "{}"))
        recorded = metadata["fingerprint"]
    except (KeyError, ValueError, TypeError) as exc:
        raise TableError(f"{path}: malformed metadata ({exc!r})") from None
    if not isinstance(manifest, dict):
        raise TableError(f"{path}: metadata manifest must be a JSON object")
    table = table_class(
        arrays["receiver"],
        bits=bits,
        shared_bits=shared_bits,
        manifest={k: v for k, v in manifest.items() if k not in _LAYOUT_KEYS},
        code_model=arrays.get("code_model"),
        bound_arrays=None if bound[0] is None else tuple(bound),
        **values,
    )
    if table.fingerprint.hex() != recorded:
        raise TableChecksumError(
            f"{path}: fingerprint {recorded} does not match the tensors and parameters "
            f"({table.fingerprint.hex()})"
        )
    return table
