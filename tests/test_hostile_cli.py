"""Hostile command lines: one error line on stderr, exit status 2, no traceback, no work.

Each case must be refused while parsing or validating, before any designing, allocating
or looping (a SIGALRM deadline turns a hang into a failure). ``--out`` never destroys a
table: an existing one is only replaced with ``--force``.
"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from quicdesign import load_table
from quicdesign.cli import main

BAD_COMMAND_LINES = [
    # design: sizes, counts and numbers
    "design --jobs 0",
    "design --jobs -2",
    "design --jobs x",
    "design --jobs 99999",
    "design --overhead-bits nan --entropy 2",
    "design --overhead-bits inf --entropy 2",
    "design --overhead-bits -1 --entropy 2",
    "design --overhead-bits abc --entropy 2",
    "design --starts 100000000",
    "design --starts 0",
    "design --starts -1",
    "design --starts 1e3",
    "design --bits 1-1000000000",
    "design --bits 5-1",
    "design --bits 0",
    "design --bits 9",
    "design --bits 1--2",
    "design --bits ,",
    "design --bits 1,,2",
    "design --bits 99999999999999999999999999",
    "design --bits " + "1" * 10_000,
    "design --bits 2 --shared-bits 3e10",
    "design --bits 2 --shared-bits 9",
    "design --bits 2 --shared-bits 0-1000000000",
    "design --bits 2 --tail-prob nan",
    "design --bits 2 --tail-prob 0",
    "design --bits 2 --tail-prob 1",
    "design --bits 2 --tail-prob 1/0",
    "design --bits 2 --tail-prob abc",
    "design --bits 2 --tail-prob -1/512",
    "design --entropy 0",
    "design --entropy 8",
    "design --entropy 1-1000000000",
    "design --bits 1 --out /proc/not-writable",
    "design --bits 1 --cache-dir /proc/not-writable",
    "design --bits 1 --input-model direct --distribution samples:/dev/null",
    # tables
    "tables show -1",
    "tables show 99",
    "tables show abc",
    "tables show 2 --shared-bits 3e10",
    "tables show 2 --tail-prob 2",
    "tables show 3 --shared-bits 7",
    "tables list --path /nonexistent/quicdesign",
    "tables list --path /dev/null",
    "tables show 1 --path /dev/zero",
    "tables verify --path /nonexistent/quicdesign",
    # bench
    "bench runtime --clients 0",
    "bench runtime --repeats 0",
    "bench runtime --dim -1",
    "bench runtime --dim 0",
    "bench runtime --dim 1099511627776",
    "bench runtime --bits 0",
    "bench runtime --bits 1-1000000000",
    "bench runtime --clients 1024 --dim 67108864",
    "bench dme --small --trials 99999999999",
    "bench dme --small --trials 0",
    "bench dme --small --dim 16777216 --clients 1024",
    "bench dme --small --dim -1",
    "bench dme --small --bits 1-1000000000",
    "bench dme --small --bits 5-1",
    "bench dme --small --bits 9",
    "bench dme --small --clients 0",
    "bench dme --small --seed -1",
    "bench dme --small --blas-threads -5",
    "bench dme --small --server-scaling --repeats 0",
    "bench dme --small --compressors nope",
    "bench dme --small --compressors quicfl:bits=abc",
    "bench transform --dim -1",
    "bench transform --repeats 0",
    # fl
    "fl run mcm --seeds 0-1000000000000",
    "fl run mcm --seeds 5-1",
    "fl run mcm --seeds -1",
    "fl run mcm --seeds x",
    "fl run mcm --seeds 0-5000",
    "fl run mcm --rounds 0",
    "fl run mcm --rounds 1000000000",
    "fl run mcm --workers 0",
    "fl run no-such-experiment",
]


def run_in_process(argv, capsys, seconds=20):
    def expire(signum, frame):
        raise AssertionError(f"{argv} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("line", BAD_COMMAND_LINES, ids=lambda line: line[:60])
def test_bad_command_lines_give_one_line_and_exit_2(line, capsys):
    code, _, err = run_in_process(line.split(), capsys)
    lines = err.strip().splitlines()
    assert code == 2, (line, err)
    assert len(lines) == 1 and lines[0].startswith("quicdesign: error:"), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "raw",
    [
        b"\x93NUMPY\x01\x00\x40\x00{'descr': '<f8', 'fortran_order': False, 'shape': (9,\n",
        "constant",
        "huge",
    ],
    ids=["unclosed-header", "constant", "huge"],
)
def test_bad_sample_files_give_one_line(tmp_path, raw, capsys):
    path = tmp_path / "samples.npy"
    if raw == "constant":
        np.save(path, np.ones(100))
    elif raw == "huge":
        np.save(path, np.array([1e308, -1e308, 1e308]))
    else:
        path.write_bytes(raw)
    argv = ["design", "--bits", "1", "--input-model", "direct", "--no-certify"]
    argv += ["--starts", "1", "--jobs", "1", "--distribution", f"samples:{path}"]
    code, _, err = run_in_process(argv, capsys, seconds=60)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("quicdesign: error:"), err


def test_nul_in_a_path_is_one_clean_line(capsys):
    code, _, err = run_in_process(["tables", "list", "--path", "a\0b"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_real_process_prints_no_traceback():
    for line in ("design --bits 1-1000000000", "fl run mcm --seeds 0-1000000000000"):
        result = subprocess.run(
            [sys.executable, "-m", "quicdesign.cli", *line.split()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- --out never destroys a table -------------------------------------------------------
def design(out, *extra):
    argv = ["design", "--starts", "1", "--no-certify", "--jobs", "1", "--no-progress"]
    return main([*argv, "--out", str(out), *extra])


def snapshot(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_out_refuses_to_replace_a_table_without_force(tmp_path, capsys):
    assert design(tmp_path, "--bits", "1,2", "--shared-bits", "1") == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    code, _, err = run_in_process(
        ["design", "--bits", "2", "--shared-bits", "1", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "--force" in err and "b2-l1-p1in512" in err
    assert snapshot(tmp_path) == before
    assert design(tmp_path, "--bits", "2", "--shared-bits", "1", "--force", "--starts", "2") == 0
    after = snapshot(tmp_path)
    assert after["b1-l1-p1in512/manifest.json"] == before["b1-l1-p1in512/manifest.json"]
    assert after["b2-l1-p1in512/manifest.json"] != before["b2-l1-p1in512/manifest.json"]


def test_out_adds_tables_and_keeps_every_table_listed(tmp_path, capsys):
    assert design(tmp_path, "--bits", "1", "--shared-bits", "1,2") == 0
    assert design(tmp_path, "--bits", "3", "--shared-bits", "1") == 0
    index = json.loads((tmp_path / "index.json").read_text())
    listed = {entry["directory"] for entry in index["tables"]}
    assert listed == {"b1-l1-p1in512", "b1-l2-p1in512", "b3-l1-p1in512"}
    assert load_table(1, path=tmp_path).shared_bits == 1
    assert load_table(1, shared_bits=2, path=tmp_path).shared_bits == 2
    assert load_table(3, path=tmp_path).bits == 3


def test_entropy_out_refuses_to_replace_before_designing(tmp_path, capsys):
    (tmp_path / "rate2-l6").mkdir()
    code, out, err = run_in_process(
        ["design", "--entropy", "2", "--out", str(tmp_path), "--no-certify"], capsys
    )
    assert code == 2 and "--force" in err and "rate" not in out
