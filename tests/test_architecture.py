"""The rings of docs/architecture (shared/design.md), held by reading imports with ``ast``.

Core (the numpy-only runtime) imports nothing outward; compressors and the conformance
kit import only the core; the runtime CLI does not import the design layer (its verbs
register through entry points); the design layer does not import the lab.
"""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Third-party modules the core may import: numpy, and the optional extras' modules, which
# are imported lazily where used (entropy, progress, threads, fast kernels, export); the fast
# kernels also use llvmlite, numba's compiler backend.
CORE_THIRD_PARTY = {
    "numpy",
    "constriction",
    "tqdm",
    "threadpoolctl",
    "numba",
    "llvmlite",
    "safetensors",
}
OUTER = ("quicdesign.compressors", "quicdesign.fl", "quicdesign.bench")
REACH = ("quicdesign.integrations", "quicdesign.distributed", "solvers")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports included), absolute."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            # "from . import x" / "from pkg import sub" may name submodules
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def ring(name: str) -> str:
    if name.startswith("solvers"):
        return "design"
    if name == "quicdesign.cli":
        return "cli"
    if name.startswith(("quicdesign.compressors", "quicdesign.testing")):
        return "compressors"
    if name.startswith(("quicdesign.fl", "quicdesign.bench")):
        return "lab"
    if name.startswith(("quicdesign.integrations", "quicdesign.distributed")):
        return "reach"
    return "core"


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    """``"importer -> imported"`` for every import that breaks a ring rule."""
    stdlib = set(sys.stdlib_module_names)
    found = []
    for path in sorted(root.glob("quicdesign/**/*.py")) + sorted(root.glob("solvers/**/*.py")):
        name = module_name(path, root)
        kind = ring(name)
        for module in sorted(imported_modules(path, root)):
            top = module.split(".")[0]
            bad = False
            if kind == "core":
                bad = _under(module, OUTER + REACH) or (
                    top not in stdlib and top not in {"quicdesign"} | CORE_THIRD_PARTY
                )
            elif kind == "compressors":
                bad = _under(module, ("quicdesign.fl", "quicdesign.bench") + REACH)
            elif kind == "cli":
                bad = _under(module, ("solvers", "quicdesign.fl", "quicdesign.bench"))
            elif kind == "design":
                bad = _under(module, ("quicdesign.fl", "quicdesign.bench") + REACH[:2])
            if bad:
                found.append(f"{name} -> {module}")
    return found


def test_the_tree_keeps_its_rings():
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    "where, source, expected",
    [
        ("quicdesign/codec.py", "from .compressors import QuicFL\n", "quicdesign.compressors"),
        ("quicdesign/table.py", "def f():\n    import solvers.design\n", "solvers.design"),
        ("quicdesign/rotation.py", "import scipy.linalg\n", "scipy.linalg"),
        ("quicdesign/compressors/eden.py", "from ..fl import wire\n", "quicdesign.fl"),
        ("quicdesign/testing.py", "from quicdesign.bench import dme\n", "quicdesign.bench"),
        ("quicdesign/cli.py", "from solvers.cli import register_design\n", "solvers.cli"),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path, where, source, expected):
    target = tmp_path / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    assert any(v.endswith(f"-> {expected}") for v in violations(tmp_path))


def test_allowed_imports_are_not_reported(tmp_path):
    (tmp_path / "quicdesign" / "compressors").mkdir(parents=True)
    (tmp_path / "quicdesign" / "codec.py").write_text("import numpy\nfrom . import rotation\n")
    (tmp_path / "quicdesign" / "compressors" / "x.py").write_text("from ..codec import Q\n")
    assert violations(tmp_path) == []


def test_cli_verbs_are_entry_points():
    from quicdesign.cli import _OWN_COMMANDS, _OWN_EVALUATORS, ENTRY_POINT_GROUP, EVALUATOR_GROUP

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"][ENTRY_POINT_GROUP] == _OWN_COMMANDS
    assert project["project"]["entry-points"][EVALUATOR_GROUP] == _OWN_EVALUATORS


def test_runtime_verbs_do_not_load_the_design_layer():
    code = (
        "import sys; from quicdesign.cli import main; status = main(['tables', 'list']); "
        "print(status, sorted(m for m in ('solvers', 'scipy', 'cvxpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
