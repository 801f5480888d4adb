"""``quicdesign bench distributed`` on a tiny round: figures present and consistent."""

import pytest

from quicdesign.cli import main
from quicdesign.rotation import RotationLayout


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
    # a shard is the rotated sum plus header, client ids and checksum
    rotated = RotationLayout.for_dim(5000).rotated_dim
    assert figures["shard_bytes"] == 45 + 4 * 6 + 8 * rotated + 32
    assert figures["shard_bytes_moved"] == 3 * figures["shard_bytes"]
    assert figures["payload_bytes"] > 6 * rotated * 2 // 8


def test_bench_distributed_is_a_cli_command(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "distributed", "--help"])
    assert "--workers" in capsys.readouterr().out


def test_bench_distributed_refuses_oversized_rounds():
    from quicdesign.bench.distributed import bench_distributed
    from quicdesign.errors import ParameterError

    with pytest.raises(ParameterError, match="clients \\* dim"):
        bench_distributed(dim=2**26, clients=1024)
    with pytest.raises(ParameterError, match="workers"):
        bench_distributed(dim=100, clients=2, workers=0)
