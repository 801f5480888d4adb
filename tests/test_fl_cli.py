"""``quicdesign fl``: listing, running a named experiment, and one-line errors."""

import csv
import subprocess
import sys

import pytest

from quicdesign.cli import main
from quicdesign.fl import EXPERIMENTS, run_experiment


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "quicdesign.cli", *args], capture_output=True, text=True
    )


def test_list_names_every_experiment(capsys):
    assert main(["fl", "list"]) == 0
    listed = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in listed
    assert {"mcm", "signsgd-fv", "intrinsic", "cossgd"} <= set(EXPERIMENTS)


def test_run_writes_csv_png_and_prints_the_summary(tmp_path, capsys):
    code = main(
        [
            "fl",
            "run",
            "intrinsic-bandwidth",
            "--rounds",
            "12",
            "--seeds",
            "0",
            "--workers",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "up_floats/participation" in printed and "time-varying stateless" in printed
    for name in (
        "intrinsic-bandwidth_summary.csv",
        "intrinsic-bandwidth_curves.csv",
        "intrinsic-bandwidth.png",
    ):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "intrinsic-bandwidth_curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"config", "seed", "round", "upload_bits", "download_bits", "test_accuracy"} <= set(
        rows[0]
    )
    assert {row["round"] for row in rows} == {"0", "12"}


def test_decoding_experiment_table(tmp_path, capsys):
    assert main(["fl", "run", "signsgd-decoding", "--out", str(tmp_path)]) == 0
    assert "fv_hoeffding" in capsys.readouterr().out
    assert (tmp_path / "signsgd-decoding.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["fl", "run", "no-such-experiment"], "unknown experiment"),
        (["fl", "run", "mcm", "--seeds", "x"], "seeds"),
        (["fl", "run", "mcm", "--rounds", "0"], "rounds must be in 1.."),
        (["fl", "run", "mcm", "--out", "/proc/not-writable/x"], "quicdesign: error"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, needle):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quicdesign: error:"), result.stderr
    assert needle in lines[0]


def test_experiments_accept_smaller_sizes_and_two_processes():
    result = run_experiment("signsgd-fv", seeds=[0], rounds=60, workers=2, progress=False)
    assert len(result.histories) == 12
    rules = {row["rule"] for row in result.summary}
    assert rules == {"mv", "fv-pooled", "fv-per-coordinate", "fv-oracle"}
    # d = 200 sign bits and the 21-byte envelope every payload carries
    assert all(row["bits/worker/round"] == 200 + 8 * 21 for row in result.summary)
