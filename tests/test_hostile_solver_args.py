"""Hostile arguments to the design layer, and a design cache that never unpickles.

Every size and count is checked against its documented bound before any work starts, so
the cases below are refused in milliseconds (a missing check would hang or allocate).
"""

import math
import os
import pickle

import numpy as np
import pytest

from quicdesign import ParameterError, Table
from solvers import DesignSpec, cached_design, design, rate_point, sweep
from solvers._cache import design_key
from solvers.design import MAX_HOPS, MAX_ITER, MAX_STARTS

DESIGN_CASES = [
    {"starts": 10**7},
    {"starts": MAX_STARTS + 1},
    {"starts": 0},
    {"starts": -5},
    {"starts": 2.5},
    {"starts": "4"},
    {"starts": True},
    {"hops": 10**6},
    {"hops": MAX_HOPS + 1},
    {"hops": -1},
    {"max_iter": 0},
    {"max_iter": MAX_ITER + 1},
    {"max_iter": float("inf")},
    {"seed": -1},
    {"seed": 2**64},
    {"seed": "zero"},
    {"n_jobs": 0},
    {"n_jobs": -2},
    {"n_jobs": 10**6},
    {"n_jobs": 1.5},
    {"certify": "yes"},
    {"certify": None},
    {"bits": 0},
    {"bits": 9},
    {"bits": 2.0},
    {"bits": True},
    {"shared_bits": -1},
    {"shared_bits": 9},
    {"shared_bits": 3e10},
    {"tail_prob": 0},
    {"tail_prob": 1},
    {"tail_prob": 2},
    {"tail_prob": float("nan")},
    {"tail_prob": float("inf")},
    {"tail_prob": "abc"},
    {"tail_prob": None},
    {"threshold": -1.0},
    {"threshold": float("nan")},
    {"threshold": "abc"},
    {"threshold": 1e300},
    {"threshold": float("inf")},
    {"distribution": "normal"},
    {"distribution": [1.0]},
    {"distribution": [1.0, float("nan")]},
]


@pytest.mark.parametrize("overrides", DESIGN_CASES, ids=repr)
def test_design_refuses_out_of_bound_arguments(overrides):
    arguments = {"bits": 1, "shared_bits": 1, "certify": False, **overrides}
    with pytest.raises(ParameterError):
        design(**arguments)


@pytest.mark.parametrize(
    "options",
    [{"starts": 10**7}, {"hops": 10**6}, {"n_jobs": 0}, {"warm_start": None}, {"bogus": 1}],
    ids=repr,
)
def test_sweep_refuses_bad_options_before_dispatching(options):
    with pytest.raises(ParameterError):
        sweep([(1, 1)], progress=False, **{"n_jobs": 1, **options})


RATE_CASES = [
    {"tail_prob": 2},
    {"tail_prob": 0},
    {"tail_prob": -0.5},
    {"tail_prob": 1},
    {"tail_prob": float("nan")},
    {"tail_prob": "x"},
    {"receiver": np.zeros((2, 3, 4))},
    {"receiver": [[0.0, float("nan")]]},
    {"receiver": [[1.0, 0.0]]},
]


@pytest.mark.parametrize("overrides", RATE_CASES, ids=repr)
def test_rate_point_refuses_bad_arguments(overrides):
    arguments = {"receiver": [[-3.0, 3.0]], "tail_prob": 1e-3, **overrides}
    with pytest.raises(ValueError) as caught:
        rate_point(**arguments)
    assert caught.type.__module__.startswith("quicdesign"), caught.type


@pytest.mark.parametrize(
    "overrides",
    [
        {"overhead_bits": float("nan")},
        {"overhead_bits": -1.0},
        {"overhead_bits": float("inf")},
        {"target_bits": float("nan")},
        {"target_bits": 100},
        {"lam": float("nan")},
        {"lam": -1.0},
        {"delta": float("nan")},
        {"delta": 0.0},
    ],
    ids=repr,
)
def test_entropy_design_refuses_bad_arguments(overrides):
    from solvers import design_entropy_coded

    arguments = {"shared_bits": 2, "certify": False, **overrides}
    if not {"target_bits", "lam", "delta"} & set(overrides):
        arguments["target_bits"] = 2
    with pytest.raises(ParameterError):
        design_entropy_coded(**arguments)


# -- the design cache --------------------------------------------------------------------
def _malicious_pickle(marker) -> bytes:
    # os.system-free: the payload calls pathlib.Path.touch on the marker when loaded.
    import pathlib

    class Payload:
        def __reduce__(self):
            return (pathlib.Path(str(marker)).touch, ())

    return pickle.dumps(Payload())


OPTIONS = {"starts": 1, "certify": False}


def _entry(cache_dir, spec):
    defaults = {"starts": 4, "max_iter": 3000, "certify": True, "seed": 0, "hops": 0}
    return cache_dir / design_key(spec.cache_key(), {**defaults, **OPTIONS})


def test_the_malicious_pickle_really_runs_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(_malicious_pickle(marker))
    assert marker.exists()  # so the tests below would notice if anything unpickled it


@pytest.mark.parametrize(
    "layout",
    ["manifest-is-pickle", "receiver-is-pickle", "entry-is-pickle-file", "joblib-layout"],
)
def test_planted_pickles_in_the_cache_never_run(tmp_path, monkeypatch, layout):
    marker = tmp_path / "ran"
    cache = tmp_path / "cache"
    spec = DesignSpec(1, 1)
    fresh = cached_design(spec, None, **OPTIONS)
    entry = _entry(cache, spec)
    evil = _malicious_pickle(marker)
    if layout == "entry-is-pickle-file":
        cache.mkdir()
        entry.write_bytes(evil)
    else:
        cached_design(spec, cache, **OPTIONS)
        name = {"manifest-is-pickle": "manifest.json", "receiver-is-pickle": "receiver.f64"}
        if layout == "joblib-layout":
            for folder in (cache, entry, cache / "joblib" / "solvers" / "sweep"):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "output.pkl").write_bytes(evil)
                (folder / "func_code.py").write_text(f"open({str(marker)!r}, 'w')\n")
        else:
            (entry / name[layout]).write_bytes(evil)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    result = cached_design(spec, cache, **OPTIONS)
    assert not marker.exists()
    assert result.table == fresh.table
    if layout != "joblib-layout":  # the bad entry was replaced by a valid table
        assert Table.load(entry) == fresh.table
    assert not list(cache.glob(".*"))  # no temporary or trash directories left


def test_corrupt_or_foreign_entries_are_recomputed(tmp_path):
    cache = tmp_path / "cache"
    spec = DesignSpec(2, 1)
    first = cached_design(spec, cache, **OPTIONS)
    entry = _entry(cache, spec)
    data = bytearray((entry / "receiver.f64").read_bytes())
    data[3] ^= 0x10
    (entry / "receiver.f64").write_bytes(bytes(data))
    again = cached_design(spec, cache, **OPTIONS)
    assert again.table == first.table
    assert Table.load(entry) == first.table
    # a valid entry of another design copied under this key is not trusted either
    import shutil

    other_spec = DesignSpec(2, 2)
    cached_design(other_spec, cache, **OPTIONS)
    shutil.rmtree(entry)
    shutil.copytree(_entry(cache, other_spec), entry)
    assert cached_design(spec, cache, **OPTIONS).table == first.table


def test_cache_hit_returns_the_same_result_without_designing(tmp_path, monkeypatch):
    import sys

    sweep_module = sys.modules["solvers.sweep"]

    cache = tmp_path / "cache"
    spec = DesignSpec(2, 2)
    first = cached_design(spec, cache, **OPTIONS)
    monkeypatch.setattr(
        sweep_module, "_design_from_key", lambda *a: pytest.fail("designed on a hit")
    )
    second = cached_design(spec, cache, **OPTIONS)
    assert second.table == first.table and second.table.manifest == first.table.manifest
    assert {k: second[k] for k in ("vnmse", "status", "nit", "starts")} == {
        k: first[k] for k in ("vnmse", "status", "nit", "starts")
    }
    assert "cache" not in second.table.manifest
    # the key covers the options and the version
    assert _entry(cache, spec).is_dir()
    assert design_key(spec.cache_key(), {"starts": 2}) != design_key(
        spec.cache_key(), {"starts": 3}
    )


def test_workers_sharing_a_cache_folder(tmp_path):
    cache = tmp_path / "cache"
    specs = [(1, 1), (2, 1), (1, 1), (2, 1)]
    results = sweep(specs, n_jobs=2, cache_dir=cache, progress=False, **OPTIONS)
    assert results[0].table == results[2].table and results[1].table == results[3].table
    entries = sorted(os.listdir(cache))
    assert len(entries) == 2 and not any(name.startswith(".") for name in entries)
    for name in entries:
        Table.load(cache / name)


def test_cache_refuses_non_json_results_by_not_caching(tmp_path):
    from solvers import _cache

    result = cached_design(DesignSpec(1, 1), None, **OPTIONS)
    result["vnmse"] = math.nan
    assert _cache.store_entry(tmp_path, "k" * 64, result) is False
    assert not any(tmp_path.iterdir())


def test_no_unpickling_or_eval_anywhere_in_the_packages():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    banned_modules = {"pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}
    banned_calls = {"eval", "exec", "Memory", "load", "loads"}
    offences = []
    for path in sorted([*root.glob("quicdesign/**/*.py"), *root.glob("solvers/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
                if node.module == "joblib" and any(a.name == "Memory" for a in node.names):
                    offences.append(f"{path}:{node.lineno} joblib.Memory")
            elif isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "attr", None) or getattr(func, "id", None)
                owner = getattr(getattr(func, "value", None), "id", None)
                if name in {"eval", "exec", "Memory"} or (
                    name in banned_calls and owner in {"np", "numpy", "pickle", "joblib"}
                ):
                    offences.append(f"{path}:{node.lineno} {owner}.{name}")
                names = set()
            else:
                continue
            offences += [f"{path}:{node.lineno} imports {n}" for n in names & banned_modules]
    assert not offences, offences


@pytest.mark.parametrize(
    "sample, needle",
    [
        (np.ones(1000), "single point"),  # tail interval of one point: divided by zero
        (np.r_[np.zeros(600), np.ones(400)] * 0 + 3.0, "single point"),
        (np.array([1e308, -1e308, 1e308]), "overflow"),  # squares overflow to inf
    ],
    ids=["constant", "constant-3", "huge"],
)
def test_degenerate_empirical_samples_are_refused_before_designing(sample, needle):
    from solvers.distributions import as_distribution

    with pytest.raises(ParameterError, match=needle):
        as_distribution(sample).tail_interval(1 / 512)


def _npy_bytes(header: bytes, data: bytes = b"") -> bytes:
    header = header.ljust(118 - 10, b" ") + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def _f8(shape: str) -> bytes:
    return b"{'descr': '<f8', 'fortran_order': False, 'shape': " + shape.encode() + b", }"


@pytest.mark.parametrize(
    "raw, needle",
    [
        # numpy's header parser raises tokenize.TokenError, not ValueError, for this
        (_npy_bytes(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,"), "header"),
        (_npy_bytes(_f8("(10**11,)")), "header"),
        # a small file claiming 800 GB is refused from the header, before any read
        (_npy_bytes(_f8("(100000000000,)")), "exceeds"),
        (_npy_bytes(_f8("(4,)"), b"\0" * 16), "truncated"),
        (_npy_bytes(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), "object"),
    ],
    ids=["unclosed", "expression", "huge-shape", "truncated", "object"],
)
def test_npy_reader_refuses_malformed_files_with_value_error(raw, needle):
    import io

    from quicdesign._export import read_npy

    with pytest.raises(ValueError, match=needle):
        read_npy(io.BytesIO(raw), 1 << 30)
    good = io.BytesIO()
    np.save(good, np.arange(6.0).reshape(2, 3))
    good.seek(0)
    np.testing.assert_array_equal(read_npy(good, 1 << 30), np.arange(6.0).reshape(2, 3))
