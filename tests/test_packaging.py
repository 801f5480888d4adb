"""Packaging hygiene: lint and format as tests, one version string, changelog, py.typed."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import quicdesign
from quicdesign import _version

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_version():
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"$', text, re.MULTILINE).group(1)


@pytest.mark.parametrize(
    "command", [["check", "."], ["format", "--check", "."]], ids=["ruff-check", "ruff-format"]
)
def test_ruff_is_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_version_comes_from_pyproject():
    assert quicdesign.__version__ == _pyproject_version()
    assert not re.search(r"__version__\s*=\s*['\"]", (ROOT / "quicdesign/__init__.py").read_text())


def test_version_falls_back_to_metadata_then_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(_version, "_PYPROJECT", tmp_path / "missing.toml")
    monkeypatch.setattr(metadata, "version", lambda name: "9.8.7")
    assert _version.package_version() == "9.8.7"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert _version.package_version() == "0+unknown"


def test_changelog_has_a_section_for_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{quicdesign.__version__}]" in changelog


def test_py_typed_marker_ships_in_the_wheel():
    assert (ROOT / "quicdesign" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    # hatchling puts every file of a listed package into the wheel, py.typed included
    assert re.search(r'packages = \[[^\]]*"quicdesign"', pyproject)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "quicdesign/py.typed"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 1  # 1: not ignored, so the build sees it
