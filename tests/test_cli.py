"""The command line: one clear line and a non-zero exit on bad input."""

import subprocess
import sys

import pytest

from quicdesign.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "quicdesign.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["design", "--bits", "0"], "bits"),
        (["design", "--bits", "2", "--shared-bits", "20"], "shared_bits"),
        (["design", "--bits", "2", "--tail-prob", "1.5"], "tail_prob"),
        (["design", "--bits", "2", "--tail-prob", "0"], "tail_prob"),
        (["design", "--bits", "x"], "integers"),
        (["design", "--bits", "1", "--out", "/proc/not-writable"], "cannot write"),
        (["tables", "show", "3", "--shared-bits", "7"], "no table"),
    ],
)
def test_bad_parameters_give_one_line_and_nonzero_exit(args, needle):
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quicdesign: error:") and needle in lines[0]


def test_corrupt_table_file_is_reported(tmp_path):
    import quicdesign

    table = quicdesign.load_table(1)
    folder = table.save(tmp_path / "t")
    (folder / "receiver.f64").write_bytes(b"\x01" * (folder / "receiver.f64").stat().st_size)
    result = run("tables", "verify", "--path", str(folder))
    assert result.returncode == 2
    assert "sha256 mismatch" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_design_writes_a_loadable_collection(tmp_path, capsys):
    assert (
        main(
            [
                "design",
                "--bits",
                "1,2",
                "--shared-bits",
                "2",
                "--jobs",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--bound-seconds",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "vNMSE" in out and "2 tables designed" in out
    assert "certified" in out and out.count("%") >= 2
    assert main(["tables", "list", "--path", str(tmp_path)]) == 0
    assert main(["tables", "verify", "--path", str(tmp_path)]) == 0
    verified = capsys.readouterr().out
    assert verified.count("within") == 2 and "REFUSED" not in verified
    assert main(["tables", "show", "2", "--shared-bits", "2", "--path", str(tmp_path)]) == 0


def test_cached_design_is_reused(tmp_path, monkeypatch):
    import sys

    from solvers.design import DesignSpec
    from solvers.sweep import cached_design, sweep

    spec = DesignSpec(2, 3)
    first = cached_design(spec, tmp_path, certify=False, starts=1)
    # a hit must not design again (timing-free: designing is made to fail)
    monkeypatch.setattr(sys.modules["solvers.sweep"], "_design_from_key", None)
    second = cached_design(spec, tmp_path, certify=False, starts=1)
    assert second.table == first.table
    assert any(tmp_path.glob("*/manifest.json"))
    monkeypatch.undo()
    results = sweep([(1, 1), (2, 1), (1, 2)], n_jobs=2, progress=False, certify=False, starts=1)
    assert [(r.table.bits, r.table.shared_bits) for r in results] == [(1, 1), (2, 1), (1, 2)]


def test_verb_with_a_missing_dependency_says_what_is_missing(tmp_path, monkeypatch, capsys):
    import quicdesign.cli as cli

    (tmp_path / "fake_verb_qd.py").write_text("import not_installed_package_qd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        cli, "_OWN_COMMANDS", {"fake": "fake_verb_qd:register", "ghost": "ghost_verb_qd:register"}
    )
    assert cli.main(["fake", "--anything"]) == 2
    assert "not_installed_package_qd" in capsys.readouterr().err
    # a verb whose own module is absent does not exist at all
    with pytest.raises(SystemExit) as stop:
        cli.main(["ghost"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_tables_verify_refuses_a_tampered_bound(tmp_path):
    import json

    import quicdesign

    table = quicdesign.load_table(2)
    folder = table.save(tmp_path / "t")
    manifest = json.loads((folder / "manifest.json").read_text())
    section = {**manifest["global_bound"], "value": manifest["global_bound"]["value"] * 1.001}
    edges, multipliers = table.bound_arrays()
    table.with_global_bound(section, edges, multipliers).save(folder)  # re-signed, but false
    result = run("tables", "verify", "--path", str(folder))
    assert result.returncode == 1
    assert "REFUSED" in result.stdout and "does not re-evaluate" in result.stdout


def test_entropy_design_prints_and_ships_its_scalar_floor(tmp_path, capsys):
    args = ["design", "--entropy", "2", "--no-certify", "--bound-seconds", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "floor" in out and "%" in out
    assert main(["tables", "verify", "--path", str(tmp_path)]) == 0
    assert "within" in capsys.readouterr().out
