"""The package version, defined once: ``version`` in ``pyproject.toml``.

An installed wheel carries it in its metadata; a source checkout (tests, ``PYTHONPATH``)
reads it from ``pyproject.toml`` next to the package, because the metadata of whatever
copy happens to be installed in the environment may describe other code.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"\s*$', re.MULTILINE)


def _source_tree_version() -> str | None:
    try:
        text = _PYPROJECT.read_text(encoding="utf-8")
    except OSError:
        return None
    if 'name = "quicdesign"' not in text:
        return None
    match = _VERSION_LINE.search(text)
    return match.group(1) if match else None


def package_version() -> str:
    """The version of this copy of quicdesign (``"0+unknown"`` if it cannot be found)."""
    version = _source_tree_version()
    if version is not None:
        return version
    try:
        return metadata.version("quicdesign")
    except metadata.PackageNotFoundError:
        return "0+unknown"
