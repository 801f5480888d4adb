"""``bench runtime`` prints its figures against limits measured in the same run (structure
only: speed is measured by the benchmark itself, never asserted by a unit test)."""

import pytest

from quicdesign import ParameterError
from quicdesign.bench.runtime import bench_runtime, stage_floors


def test_runtime_bench_reports_floors_ratios_and_pinned_blas(capsys):
    rows = bench_runtime(dim=4096, bits=(2,), clients=3, repeats=1, progress=False)
    printed = capsys.readouterr().out
    assert "median of 1 timed runs (CPU time), 1 BLAS thread" in printed
    assert "limits: copy" in printed and "add_many numpy" in printed
    assert "encode numpy" in printed and "floor = traffic + one client's h" in printed
    assert "agg = a loop of add() then result()" in printed and "naive = an inverse" in printed
    (row,) = rows
    # one encode time everywhere: the default path's (compiled when numba is installed)
    compiled, numpy_path = row["encode_compiled_ms"], row["encode_numpy_ms"]
    assert row["encode_ms"] == (numpy_path if compiled is None else compiled)
    assert row["copy_gb_s"] > 0 and row["sort_ms"] > 0 and row["shared_values_ms"] > 0
    # the floor adds the measured generation of h to the traffic floor
    for stage in ("encode", "aggregate"):
        traffic = row[f"{stage}_traffic_floor_ms"]
        assert 0 < traffic < row[f"{stage}_floor_ms"]
        assert row[f"{stage}_floor_ms"] == pytest.approx(traffic + row["shared_values_ms"])
    assert row["add_many_numpy_ms_per_client"] > 0 and row["encode_numpy_ms"] > 0
    # the entropy-coded server against the fixed-rate one at the same d, in the same run
    assert "entropy-coded (QDQE v5, wide rANS) vs fixed-rate server" in printed
    ratio = row["entropy_ms_per_client"] / row["entropy_fixed_ms_per_client"]
    assert row["entropy_ratio_to_fixed"] == pytest.approx(ratio)
    assert row["entropy_rans_numpy_ns"] > 0 and row["entropy_v5_bytes_per_coordinate"] > 0
    assert row["entropy_v4_bytes_per_coordinate"] > 0
    pytest.importorskip("numba")
    assert row["add_many_compiled_ms_per_client"] > 0 and row["encode_compiled_ms"] > 0
    assert row["entropy_rans_compiled_ns"] > 0 and row["entropy_rans_v4_compiled_ns"] > 0
    # the decoder's slot lookups alone, added to the fixed-rate server as a limit
    lookups = row["entropy_slot_lookups_ms"]
    assert lookups > 0 and "fixed+lookups" in printed
    assert row["entropy_lookup_ratio_to_fixed"] == pytest.approx(
        1 + lookups / row["entropy_fixed_ms_per_client"]
    )


@pytest.mark.parametrize("threads", [0, -1, True, 2.5])
def test_runtime_bench_refuses_bad_thread_counts(threads):
    with pytest.raises(ParameterError, match="blas_threads"):
        bench_runtime(dim=64, bits=(2,), clients=1, repeats=1, blas_threads=threads)


def test_stage_floors_count_the_bytes_each_stage_must_move():
    # d = 1000 pads to 1024 rotated coordinates; 1 GB/s makes bytes read as nanoseconds
    floors = stage_floors(1000, 300.0, 4, 1e9, shared_seconds=2e-6)
    encode_bytes = 4 * 1000 + 1024 / 8 + 300  # float32 input, 1-bit signs, payload
    aggregate_bytes = 300 + 16 * 1024 / 4  # payload, the float64 sum once per 4 clients
    assert floors["encode_traffic"] == pytest.approx(encode_bytes * 1e-9)
    assert floors["encode"] == pytest.approx(encode_bytes * 1e-9 + 2e-6)
    assert floors["aggregate_traffic"] == pytest.approx(aggregate_bytes * 1e-9)
    assert floors["aggregate"] == pytest.approx(aggregate_bytes * 1e-9 + 2e-6)


def test_runtime_bench_times_both_paths_whatever_the_kernel_switch(monkeypatch):
    # the bench sets the switch itself for each path: with QUICDESIGN_KERNELS=numpy in the
    # environment every compiled figure is still measured (numba installed)
    pytest.importorskip("numba")
    from quicdesign._kernels import KERNELS_ENV

    monkeypatch.setenv(KERNELS_ENV, "numpy")
    (row,) = bench_runtime(dim=1024, bits=(1,), clients=2, repeats=1, progress=False)
    assert row["encode_compiled_ms"] > 0 and row["add_many_compiled_ms_per_client"] > 0
    assert row["entropy_rans_compiled_ns"] > 0 and row["entropy_rans_v4_compiled_ns"] > 0
