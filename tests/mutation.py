"""Mutation testing: apply deliberate bugs one at a time and check the tests catch them.

Run from the repository root (not in CI: it takes several minutes)::

    nice python -m tests.mutation              # every mutant
    python -m tests.mutation --list            # the mutants and where they apply
    python -m tests.mutation --only verify-ignores-bias certify-always-ok

Each mutant is one textual edit (``old`` must occur exactly once in its file, so a stale
entry fails loudly instead of testing nothing). It is applied to a temporary copy of the
tree (tracked and untracked, non-ignored files; the worktree itself is never touched),
then the listed test files run there with ``pytest -x``. A mutant is *killed* when the
tests fail, *survived* when they pass. The unmutated copy must pass the same tests first
(otherwise the result means nothing). Exit status 0 when at least ``--goal`` mutants are
killed and every quality guard among them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: replace ``old`` by ``new`` in ``path``; ``tests`` should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    guard: bool = False  # a quality guard (certificate, verifier, kit, success flags, ...)


GUARDS = "tests/test_quality_guards.py"
KIT = "tests/test_conformance_kit.py"

MUTANTS = [
    # -- quality guards ---------------------------------------------------------------
    Mutant(
        "certify-always-ok",
        "solvers/certify.py",
        "    ok = status == cp.OPTIMAL and judged and residual <= 1e-6\n",
        "    ok = True\n",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "certify-ignores-kkt",
        "solvers/certify.py",
        "judged = abs(gap) <= slack and kkt is not None and kkt.ok",
        "judged = abs(gap) <= slack",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "certify-constrained-below-closed-form",
        "solvers/certify.py",
        "judged = gap >= -slack",
        "judged = True",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "kkt-ignores-dual-feasibility",
        "solvers/certify.py",
        "        and dual_residual <= tolerance * max(1.0, float(np.max(np.abs(c))))\n",
        "",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "kkt-ignores-primal-feasibility",
        "solvers/certify.py",
        "        and primal_residual <= tolerance * max(1.0, float(np.max(np.abs(b))))\n",
        "",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "verify-ignores-bias",
        "solvers/verify.py",
        '"bias": bias <= TOLERANCE * scale,',
        '"bias": True,',
        (GUARDS, "tests/test_table_format.py"),
        guard=True,
    ),
    Mutant(
        "verify-ignores-recorded-vnmse",
        "solvers/verify.py",
        '"vnmse_record": matches,',
        '"vnmse_record": True,',
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "design-never-fails",
        "solvers/design.py",
        "        success=status != 2,\n",
        "        success=True,\n",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "entropy-design-never-fails",
        "solvers/rate.py",
        '    ok = verification["ok"] and (certificate is None or certificate["ok"])\n',
        "    ok = True\n",
        (GUARDS,),
        guard=True,
    ),
    Mutant(
        "table-accepts-uncovered-support",
        "quicdesign/table.py",
        "if start > self.lower + slack or end < self.upper - slack:",
        "if False:",
        ("tests/test_table_format.py",),
        guard=True,
    ),
    Mutant(
        "table-skips-array-checksum",
        "quicdesign/table.py",
        '    if _sha256(data) != entry.get("sha256"):',
        "    if False:",
        ("tests/test_table_format.py",),
        guard=True,
    ),
    Mutant(
        "kit-unbiasedness-500-sigma",
        "quicdesign/testing.py",
        "UNBIASED_Z = 5.0",
        "UNBIASED_Z = 500.0",
        (KIT,),
        guard=True,
    ),
    Mutant(
        "kit-ignores-state-after-refusal",
        "quicdesign/testing.py",
        "if aggregator.count != before_count or aggregator.result().tobytes() != before:",
        "if False:",
        (KIT,),
        guard=True,
    ),
    Mutant(
        "kit-ignores-nondeterminism",
        "quicdesign/testing.py",
        "    if first != second:\n",
        "    if False:\n",
        (KIT,),
        guard=True,
    ),
    Mutant(
        "payload-accepts-duplicate-clients",
        "quicdesign/_accumulate.py",
        "        if client_id in self._clients:\n",
        "        if False:\n",
        ("tests/test_codec.py", "tests/test_compressors.py"),
        guard=True,
    ),
    Mutant(
        "merge-accepts-overlapping-shards",
        "quicdesign/_accumulate.py",
        "        if overlap:\n",
        "        if False:\n",
        ("tests/test_codec.py", "tests/test_compressors.py"),
        guard=True,
    ),
    Mutant(
        "reader-skips-length-check",
        "quicdesign/_wire.py",
        "        if size > self.remaining:\n",
        "        if False:\n",
        ("tests/test_wire_primitives.py", "tests/test_codec.py"),
        guard=True,
    ),
    # -- the science of the companion schemes -------------------------------------------
    Mutant(
        "cossgd-uniform-levels",
        "quicdesign/compressors/cossgd.py",
        "    return norm * np.cos(np.pi * angles)\n",
        "    return norm * (1.0 - 2.0 * angles)\n",
        ("tests/test_golden.py", "tests/test_compressors.py"),
    ),
    Mutant(
        "mcm-local-model-half-omega",
        "quicdesign/fl/mcm.py",
        "workers.local_models[active] = workers.down_memories[active] + omega\n",
        "workers.local_models[active] = workers.down_memories[active] + 0.5 * omega\n",
        ("tests/test_golden.py", "tests/test_fl_mcm.py"),
    ),
    Mutant(
        "artemis-server-steps-with-exact-gradient",
        "quicdesign/fl/mcm.py",
        "            server.model = server.model - step * omega\n",
        "            server.model = server.model - step * estimate\n",
        ("tests/test_fl_mcm.py",),
    ),
    Mutant(
        "mcm-memory-ignores-rate",
        "quicdesign/fl/mcm.py",
        "    return memory + rate * message\n",
        "    return memory + message\n",
        ("tests/test_fl_mcm.py",),
    ),
    Mutant(
        "signsgd-fv-inverted-llr",
        "quicdesign/fl/signsgd.py",
        "np.log((agreement + eps) / (1.0 - agreement + eps))",
        "np.log((1.0 - agreement + eps) / (agreement + eps))",
        ("tests/test_fl_signsgd.py",),
    ),
    Mutant(
        "intrinsic-download-without-model-cap",
        "quicdesign/fl/intrinsic.py",
        "            if ids.size * sub_dim <= full_dim:\n",
        "            if True:\n",
        ("tests/test_golden.py",),
    ),
    # -- runtime -----------------------------------------------------------------------
    Mutant(
        "locator-float32-margin-zero",
        "quicdesign/sender.py",
        "margin_buckets = 1e-3 + 4e-7 * (",
        "margin_buckets = 0.0 * (",
        ("tests/test_sender.py",),
    ),
    Mutant(
        "sender-flipped-coin",
        "quicdesign/sender.py",
        "messages[randomizing] += (draws < fraction).astype(messages.dtype)",
        "messages[randomizing] += (draws > fraction).astype(messages.dtype)",
        ("tests/test_sender.py", "tests/test_codec.py", "tests/test_monte_carlo.py"),
    ),
    Mutant(
        "rotation-scale",
        "quicdesign/rotation.py",
        "block = (np.where(parity, -1.0, 1.0) / math.sqrt(size)).astype(dtype_char)",
        "block = (np.where(parity, -1.0, 1.0) / size).astype(dtype_char)",
        ("tests/test_rotation.py",),
    ),
    Mutant(
        "packing-shift",
        "quicdesign/_wire.py",
        "        packed |= columns[:, i] << (i * bits)\n",
        "        packed |= columns[:, i] << ((per_byte - 1 - i) * bits)\n",
        ("tests/test_wire_primitives.py",),
    ),
    Mutant(
        "aggregator-ignores-weight",
        "quicdesign/_accumulate.py",
        "        self._total_weight += weight\n",
        "        self._total_weight += 1.0\n",
        ("tests/test_codec.py", "tests/test_compressors.py"),
    ),
    Mutant(
        "quicfl-server-drops-weight",
        "quicdesign/codec.py",
        "scale = norms.astype(np.float64) * (weight / math.sqrt(layout.chunk_size))",
        "scale = norms.astype(np.float64) * (1.0 / math.sqrt(layout.chunk_size))",
        ("tests/test_codec.py",),
    ),
    Mutant(
        "randomness-ignores-client",
        "quicdesign/randomness.py",
        '    data = struct.pack("<QQ", round_seed, client_id) + purpose.encode("utf-8")\n',
        '    data = struct.pack("<QQ", round_seed, 0) + purpose.encode("utf-8")\n',
        ("tests/test_randomness.py",),
    ),
    Mutant(
        "randk-without-d-over-k",
        "quicdesign/compressors/randk.py",
        "        decoded *= dim / k\n",
        "        decoded *= 1.0\n",
        ("tests/test_compressors.py",),
    ),
    Mutant(
        "sq-deterministic-rounding",
        "quicdesign/compressors/sq.py",
        "    codes += rng.random(t.shape) < t\n",
        "    codes += 0.5 < t\n",
        ("tests/test_compressors.py",),
    ),
]


def _copy_tree(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = Path(os.fsdecode(raw))
        source = ROOT / relative
        if not source.is_file():  # deleted but still in the index
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _check_applies(mutant: Mutant) -> str:
    text = (ROOT / mutant.path).read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name}: the edited text occurs {count} times in {mutant.path} "
            "(expected once); update tests/mutation.py"
        )
    return text


def _run_tests(tree: Path, tests, timeout: float) -> tuple[bool, float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("QUICDESIGN_SMALL", "1")
    env.setdefault("MPLBACKEND", "Agg")
    began = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - began, "timeout"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return result.returncode == 0, time.perf_counter() - began, lines[-1] if lines else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--goal", type=int, default=28, help="killed mutants required")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    args = parser.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"unknown mutants {unknown}")
        mutants = [m for m in MUTANTS if m.name in args.only]
    for mutant in mutants:
        _check_applies(mutant)
    if args.list:
        for mutant in mutants:
            kind = "guard" if mutant.guard else "     "
            print(f"{mutant.name:<42} {kind} {mutant.path}  ->  {' '.join(mutant.tests)}")
        return 0

    with tempfile.TemporaryDirectory(prefix="quicdesign-mutation-") as temp:
        tree = Path(temp)
        _copy_tree(tree)
        needed = sorted({test for mutant in mutants for test in mutant.tests})
        print(f"baseline: {len(needed)} test files on the unmutated copy ...", flush=True)
        passed, seconds, summary = _run_tests(tree, needed, args.timeout)
        if not passed:
            print(f"baseline FAILED ({summary}); fix the tests first", file=sys.stderr)
            return 2
        print(f"baseline passed in {seconds:.0f} s ({summary})", flush=True)

        survived, killed = [], []
        for index, mutant in enumerate(mutants, 1):
            path = tree / mutant.path
            original = path.read_text()
            path.write_text(original.replace(mutant.old, mutant.new, 1))
            try:
                passed, seconds, summary = _run_tests(tree, mutant.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = "survived" if passed else "killed"
            (survived if passed else killed).append(mutant)
            print(
                f"[{index:>2}/{len(mutants)}] {verdict:<8} {mutant.name:<42} "
                f"{seconds:5.0f} s  {summary}",
                flush=True,
            )

    guards_survived = [m.name for m in survived if m.guard]
    print(f"\n{len(killed)}/{len(mutants)} mutants killed")
    if survived:
        print("survived: " + ", ".join(m.name for m in survived))
    if guards_survived:
        print("quality guards that survived: " + ", ".join(guards_survived))
    ok = len(killed) >= min(args.goal, len(mutants)) and not guards_survived
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
