"""Every CLI verb in a runtime-only install (numpy, no extra): it runs, or it says in one
line which extra to install, before doing any work; never a traceback.

The optional modules are hidden from the import system of a subprocess (every finder
answers "not found" for them, as in a venv where they were never installed), so both
``import x`` and ``importlib.util.find_spec("x")`` see them missing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTROPY = ROOT / "tables" / "entropy"
OPTIONAL = (
    "scipy cvxpy highspy joblib tqdm threadpoolctl matplotlib sklearn constriction torch "
    "flwr dask distributed ray numba safetensors"
).split()

HIDE_AND_RUN = """
import sys

HIDDEN = set(sys.argv[1].split(","))


class Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
from quicdesign.cli import main

sys.exit(main(sys.argv[2:]))
"""


def _quicdesign(*argv, hidden=OPTIONAL, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, ",".join(hidden), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_the_harness_really_hides_modules(tmp_path):
    code = HIDE_AND_RUN.split("from quicdesign.cli")[0] + (
        "import importlib.util\n"
        "assert importlib.util.find_spec('scipy') is None\n"
        "try:\n    import scipy\nexcept ModuleNotFoundError as exc:\n    print(exc.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "scipy"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "scipy", result.stderr


# (argv, exit status, text expected in the output); {tmp} is a fresh folder
RUNS = [
    (["--version"], 0, "quicdesign "),
    (["--help"], 0, "design"),
    (["tables", "list"], 0, "b2-l5-p1in512"),
    (["tables", "list", "--path", ENTROPY], 0, "rate2-l6"),
    (["tables", "list", "--path", ENTROPY / "rate2-l6"], 0, "1.9980"),
    (["tables", "show", "2"], 0, "Table(bits=2"),
    (["tables", "show", "2", "--path", ENTROPY], 0, "rate=2 bits/coordinate"),
    (["tables", "export", "--format", "npz", "--out", "{tmp}"], 0, "tables exported"),
    (["tables", "export", "--format", "safetensors", "--out", "{tmp}"], 2, "[export]"),
    (
        ["tables", "diff", ROOT / "tables" / "b2-l5-p1in512", ROOT / "tables" / "b2-l8-p1in512"],
        1,
        "different tables",
    ),
    (["tables", "verify"], 2, "quicdesign[design]"),
    (["design", "--bits", "1"], 2, "quicdesign[design]"),
    (["bench", "transform", "--dim", "1024", "--repeats", "1"], 0, "Mcoord/s"),
    (
        ["bench", "runtime", "--dim", "1024", "--bits", "1", "--clients", "2", "--repeats", "1"],
        0,
        "threadpoolctl missing, could not pin them",
    ),
    (["bench", "stratified", "--dim", "256", "--trials", "1"], 0, "bench stratified: 12/12"),
    (
        ["bench", "dme", "--small", "--bits", "1", "--compressors", "quicfl", "quicfl-ec"],
        0,
        "skipping quicfl-ec: needs constriction (pip install 'quicdesign[entropy]')",
    ),
    (
        ["bench", "dme", "--small", "--bits", "1", "--compressors", "eden"],
        0,
        "skipping family gradients: needs sklearn (pip install 'quicdesign[bench]')",
    ),
    (["bench", "dme", "--small", "--out", "{tmp}"], 2, "quicdesign[bench]"),
    (["bench", "distributed", "--dim", "1024", "--clients", "2"], 2, "quicdesign[dask]"),
    (["fl", "list"], 0, "cossgd"),
    (["fl", "run", "mcm", "--rounds", "2", "--out", "{tmp}"], 2, "quicdesign[bench]"),
]


@pytest.mark.parametrize(
    "argv, status, expected", RUNS, ids=[" ".join(map(str, r[0]))[:60] for r in RUNS]
)
def test_every_verb_in_a_runtime_only_install(argv, status, expected, tmp_path):
    argv = [str(tmp_path / "out") if word == "{tmp}" else word for word in argv]
    result = _quicdesign(*argv, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-2000:]
    assert expected in output, output[-2000:]
    assert "Traceback" not in output
    if status == 2:
        # one line, and no work started before it (no progress lines, no tables)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("quicdesign: error:")
        assert result.stdout == ""
