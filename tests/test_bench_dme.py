"""``quicdesign bench dme``: outputs, row contents, bits accounting and option errors."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from quicdesign.bench.dme import (
    FAMILIES,
    bits_parameters,
    parse_compressor_spec,
    run_cossgd_comparison,
    run_dme_benchmark,
    run_server_scaling,
)
from quicdesign.cli import main
from quicdesign.compressors import make_compressor
from quicdesign.errors import ParameterError

ROW_KEYS = {
    "compressor",
    "params",
    "bits",
    "family",
    "dim",
    "clients",
    "trials",
    "bits_per_coordinate",
    "payload_bytes",
    "vnmse",
    "vnmse_se",
    "design_vnmse",
    "nmse",
    "encode_ms",
    "server_ms",
    "unbiased",
    "sums_before_decoding",
}


@pytest.fixture(scope="module")
def small_rows():
    return run_dme_benchmark(
        compressors=("quicfl", "eden", "sign", "countsketch", "randk"),
        bits=(1, 2),
        dim=1000,
        clients=(1, 3),
        families=("normal", "gradients"),
        trials=2,
        seed=3,
    )


def test_small_cli_run_writes_csv_markdown_and_plots(tmp_path, capsys):
    status = main(
        [
            "bench", "dme", "--small", "--compressors", "quicfl", "eden", "hadamard-sq",
            "--bits", "1", "2", "--families", "lognormal", "student-t", "--clients", "1", "2",
            "--out", str(tmp_path), "--no-progress", "--server-scaling", "--cossgd-table",
        ]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "EDEN / QUIC-FL server time" in printed and "ms per client" in printed
    for name in (
        "dme.csv", "dme.md", "dme_nmse_vs_bits.png", "dme_server_time.png",
        "server_scaling.csv", "server_scaling.md", "server_scaling.png",
        "cossgd.csv", "cossgd.md",
    ):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "dme_nmse_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "dme.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # 3 compressors x 2 bits x 2 families x 2 client counts
    assert len(rows) == 24 and ROW_KEYS <= set(rows[0])
    assert {r["compressor"] for r in rows} == {"quicfl", "eden", "hadamard-sq"}
    markdown = (tmp_path / "dme.md").read_text()
    assert markdown.startswith("| compressor |") and markdown.count("\n") == 2 + 12


def test_rows_have_the_expected_keys_and_sane_values(small_rows):
    # sign is 1-bit only: one configuration whatever the bit list
    assert len(small_rows) == (4 * 2 + 1) * 2 * 2
    for row in small_rows:
        assert set(row) == ROW_KEYS
        assert row["family"] in FAMILIES and row["dim"] == 1000 and row["trials"] == 2
        assert row["vnmse"] > 0 and row["nmse"] > 0
        assert row["encode_ms"] > 0 and row["server_ms"] > 0
    eden = [r for r in small_rows if r["compressor"] == "eden"]
    assert all(r["design_vnmse"] is not None for r in eden)
    assert all(r["design_vnmse"] is None for r in small_rows if r["compressor"] == "sign")
    # the one-client NMSE is the vNMSE sample of client 0
    for row in small_rows:
        if row["clients"] == 1:
            assert row["nmse"] == pytest.approx(row["vnmse"])


def test_bits_per_coordinate_is_payload_bytes_accounting(small_rows):
    for row in small_rows:
        assert row["bits_per_coordinate"] == pytest.approx(8 * row["payload_bytes"] / row["dim"])
    # fixed-rate schemes: the recorded size is the size of an independent encode
    vector = np.random.default_rng(0).standard_normal(1000)
    for name, bits in (("eden", 2), ("sign", 1), ("countsketch", 2), ("randk", 1)):
        params = bits_parameters(name, bits, 1000)
        size = len(make_compressor(name, **params).encode(vector, round_seed=1, client_id=0))
        row = next(
            r for r in small_rows if r["compressor"] == name and r["params"] == ",".join(
                f"{k}={v}" for k, v in sorted(params.items())
            )
        )  # fmt: skip
        assert row["payload_bytes"] == size
    # countsketch and rand-k are sized to about b bits per coordinate
    for row in small_rows:
        if row["compressor"] in ("countsketch", "randk"):
            assert abs(row["bits_per_coordinate"] - row["bits"]) < 0.5


def test_server_scaling_and_cossgd_table_shapes():
    scaling = run_server_scaling(dim=512, bits=2, clients=(1, 2, 4), repeats=1)
    assert {r["compressor"] for r in scaling.rows} == {"quicfl", "eden"}
    assert scaling.ratio > 0 and scaling.fits["quicfl"]["slope_ms_per_client"] is not None
    rows = run_cossgd_comparison(bits=(1, 2), dims=(32, 256), trials=2)
    assert len(rows) == 2 * 2 * 2 * 6
    for row in rows:
        unavailable = row["quantizer"] == "symmetric-uniform" and row["bits"] == 1
        assert (row["nmse"] is None) == unavailable
        if not unavailable:
            assert row["bits_per_coordinate"] > row["bits"]  # header and side information


def test_compressor_specs_and_errors():
    assert parse_compressor_spec("kashin:variant=tf,eta=0.8") == (
        "kashin",
        {"variant": "tf", "eta": 0.8},
    )
    assert parse_compressor_spec("hadamard-sq")[0] == "hadamard"
    with pytest.raises(ParameterError, match="unknown compressor"):
        parse_compressor_spec("nosuch")
    with pytest.raises(ParameterError, match="variant"):
        run_dme_benchmark(compressors=["kashin:variant=bogus"], small=True, families=["normal"])
    with pytest.raises(ParameterError, match="bits"):
        run_dme_benchmark(bits=[9], small=True)


def test_import_stays_light():
    code = (
        "import sys, quicdesign.bench.dme; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--bits", "0"], "bits"),
        (["--bits", "x"], "integers like 1-4"),
        (["--dim", "0"], "dim"),
        (["--trials", "0"], "trials"),
        (["--clients", "-2"], "clients"),
        (["--families", "cauchy"], "invalid choice"),
        (["--compressors", "nosuch"], "unknown compressor"),
        (["--compressors", "cossgd:clip=2"], "clip"),
        (["--compressors", "eden:oops"], "key=value"),
        (["--no-sweep"], "nothing to run"),
        (["--blas-threads", "-1"], "blas-threads"),
        (["--seed", "-1"], "seed"),
        (["--out", "/proc/not-writable"], "cannot write"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args, needle):
    result = subprocess.run(
        [sys.executable, "-m", "quicdesign.cli", "bench", "dme", "--small", *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quicdesign: error:") and needle in lines[0], lines[0]


def test_list_options_take_the_same_syntax_as_the_other_commands(capsys):
    from quicdesign.cli import main

    argv = "bench dme --small --compressors sq --families normal --trials 1 --no-progress"
    code = main([*argv.split(), "--bits", "1-2", "4", "--clients", "1,2"])
    out = capsys.readouterr().out
    assert code == 0
    assert [line.split("|")[2].strip() for line in out.splitlines() if "| sq |" in line] == [
        "bits=1",
        "bits=2",
        "bits=4",
    ]
    assert "n=2" in out


def test_figures_carry_d_n_trials_and_keep_legends_off_the_data(small_rows):
    pytest.importorskip("matplotlib")
    from quicdesign.bench.dme import plot_nmse_vs_bits, plot_server_time

    sample = small_rows[0]
    clients = max(r["clients"] for r in small_rows)
    caption = plot_nmse_vs_bits(small_rows).get_suptitle()
    for part in (f"d = {sample['dim']}", f"n = {clients}", f"{sample['trials']} trials"):
        assert part in caption, caption
    timing = plot_server_time(small_rows)
    assert timing.axes[0].get_legend() is None and timing.legends  # outside the axes
    assert f"median of {sample['trials']} trials" in timing.axes[0].get_title()
