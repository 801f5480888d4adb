"""``quicdesign bench distributed`` on a tiny round: figures present and consistent."""

import pytest

from quicdesign.cli import main


@pytest.mark.slow
def test_bench_distributed_prints_consistent_figures(capsys):
    pytest.importorskip("distributed")
    from quicdesign.bench.distributed import bench_distributed

    figures = bench_distributed(dim=5000, clients=6, bits=2, workers=2, repeats=1, progress=False)
    out = capsys.readouterr().out
    for label in ("serial aggregation", "Dask workers", "shards moved", "peak RSS per worker"):
        assert label in out
    assert figures["max_error"] < 1e-12
    assert len(figures["peak_rss_mb"]) == 2
    peaks, idles = figures["peak_rss_mb"], figures["idle_rss_mb"]
    assert all(p >= i > 0 for p, i in zip(peaks, idles, strict=True))
    # d = 5000 rotates to 8 chunks of 1024: a shard is its sum plus header and checksum
    assert figures["shard_bytes"] == 45 + 4 * 6 + 8 * 8192 + 32
    assert figures["shard_bytes_moved"] == 3 * figures["shard_bytes"]
    assert figures["payload_bytes"] > 6 * 8192 * 2 // 8


def test_bench_distributed_is_a_cli_command(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "distributed", "--help"])
    assert "--workers" in capsys.readouterr().out
