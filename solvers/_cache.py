"""An on-disk design cache in the table format itself (no pickle, ever).

Each entry is a table directory named by the sha256 of the design problem (spec, design
options, quicdesign version). The rest of the :class:`DesignResult` lives in a ``cache``
section of the manifest, which is JSON. An entry is read with every check of
``Table.load``; one that fails them (corrupt, planted, half-written by another version) is
treated as a miss and replaced. Entries are written to a temporary directory and renamed
into place, so processes sharing a folder (loky, Dask or Ray workers) never see a partial
entry; when two write the same entry, the first rename wins and both results are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import quicdesign
from quicdesign.errors import TableError
from quicdesign.table import Table

__all__ = ["design_key", "load_entry", "store_entry"]

#: Bumped when the layout of the ``cache`` section changes.
_CACHE_FORMAT = 1
_RESULT_FIELDS = (
    "vnmse",
    "success",
    "status",
    "message",
    "nit",
    "nfev",
    "wall_time",
    "starts",
    "certificate",
    "verification",
)


def design_key(spec_key: dict, options: dict) -> str:
    """Hex sha256 naming the cache entry of one design problem."""
    problem = {
        "cache_format": _CACHE_FORMAT,
        "quicdesign": quicdesign.__version__,
        "spec": spec_key,
        "options": options,
    }
    text = json.dumps(problem, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def load_entry(cache_dir, key: str):
    """Return ``(table, result_fields)`` of a valid entry, or None on a miss.

    Anything that is not a well-formed table written for ``key`` counts as a miss: the
    files are only ever parsed as JSON and raw float64 arrays.
    """
    folder = Path(cache_dir) / key
    if not os.path.lexists(folder):
        return None
    try:
        table = Table.load(folder)
    except TableError:
        return None
    section = table.manifest.get("cache")
    if (
        not isinstance(section, dict)
        or section.get("key") != key
        or not isinstance(section.get("result"), dict)
        or set(section["result"]) != set(_RESULT_FIELDS)
    ):
        return None
    return table.without_manifest("cache"), dict(section["result"])


def store_entry(cache_dir, key: str, result) -> bool:
    """Write ``result`` (a DesignResult) as the entry ``key``; False if it cannot be cached.

    The entry is built in a temporary sibling directory and renamed into place. An
    existing invalid entry is moved aside first; a valid one written meanwhile by another
    process is kept.
    """
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fields = {name: result[name] for name in _RESULT_FIELDS}
    try:
        table = result.table.with_manifest(cache={"key": key, "result": fields})
        json.dumps(fields, allow_nan=False)
    except (TypeError, ValueError):
        return False  # not representable as strict JSON: simply not cached
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{key[:16]}.tmp-"))
    try:
        table.save(staging)
        target = folder / key
        if os.path.lexists(target) and load_entry(folder, key) is None:
            _discard(target, folder)
        try:
            os.rename(staging, target)
        except OSError:
            pass  # another process renamed a valid entry into place first
        return True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _discard(target: Path, folder: Path) -> None:
    """Move an invalid entry (file, symlink or directory) aside and delete it."""
    trash = Path(tempfile.mkdtemp(dir=folder, prefix=".trash-"))
    try:
        os.rename(target, trash / "entry")
    except FileNotFoundError:
        pass  # someone else discarded it already
    finally:
        shutil.rmtree(trash, ignore_errors=True)
