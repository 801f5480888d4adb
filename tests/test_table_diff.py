"""Reproducible designs and ``quicdesign tables diff``."""

import math

import quicdesign
from quicdesign import Table
from quicdesign.cli import main


def test_a_design_is_reproduced_bit_for_bit(tmp_path, capsys):
    for run in ("first", "second"):
        status = main(
            ["design", "--bits", "2", "--shared-bits", "2", "--starts", "2", "--jobs", "1"]
            + ["--out", str(tmp_path / run), "--no-progress"]
        )
        assert status == 0
    capsys.readouterr()
    first, second = (tmp_path / run / "b2-l2-p1in512" for run in ("first", "second"))
    assert (first / "receiver.f64").read_bytes() == (second / "receiver.f64").read_bytes()
    assert main(["tables", "diff", str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert "max |dR|: 0.000e+00" in out and "interchangeable" in out


def test_diff_reports_receiver_vnmse_and_fingerprint_changes(tmp_path, capsys):
    shipped = quicdesign.load_table(2)
    nudged = shipped.receiver.copy()
    nudged[3, 0] -= 1e-3  # the first column is never the support's edge for h = 3
    other = Table(
        nudged,
        bits=2,
        shared_bits=shipped.shared_bits,
        tail_prob=shipped.tail_prob,
        lower=shipped.lower,
        upper=shipped.upper,
    )
    path = other.save(tmp_path / "nudged.npz", format="npz")
    assert (
        main(["tables", "diff", str(quicdesign.shipped_tables_dir() / shipped.name), str(path)])
        == 1
    )
    out = capsys.readouterr().out
    assert "max |dR|: 1.000e-03 at h=3, x=0" in out
    assert shipped.fingerprint.hex() in out and other.fingerprint.hex() in out
    assert "refused" in out
    vnmse_line = next(line for line in out.splitlines() if line.startswith("vNMSE"))
    a, b = (float(vnmse_line.split(label)[1].split()[0]) for label in (" A ", " B "))
    assert math.isclose(a, shipped.vnmse, rel_tol=1e-8)
    assert b > a  # any move away from the optimum costs accuracy
