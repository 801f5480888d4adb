"""``quicdesign bench stratified``: rows, the identical-vector gain, option errors."""

import pytest

from quicdesign.bench.stratified import bench_stratified
from quicdesign.errors import ParameterError


def test_bench_stratified_rows(capsys):
    rows = bench_stratified(bits=(2,), correlations=(1.0, 0.5), dim=1024, trials=2)
    assert [(r["bits"], r["clients"], r["correlation"]) for r in rows] == [
        (2, 32, 1.0),
        (2, 32, 0.5),
    ]
    identical, loose = rows
    assert identical["ratio"] < 0.3  # measured ~0.08 at d = 2^14
    assert loose["ratio"] > 0.7  # at correlation 0.5 the gain is (almost) gone
    assert identical["ratio"] == identical["stratified"] / identical["independent"]
    assert "ratio" in capsys.readouterr().out


def test_bench_stratified_refuses_bad_options():
    with pytest.raises(ParameterError, match="correlations"):
        bench_stratified(correlations=(1.5,))
    with pytest.raises(ParameterError, match="trials"):
        bench_stratified(trials=0)
