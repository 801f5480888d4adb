"""The one set of validators, the deprecated QUIC-FL names and the reference constants."""

import math
import warnings

import numpy as np
import pytest

import quicdesign
from quicdesign import ParameterError, reference
from quicdesign._validate import (
    check_int,
    check_positive_float,
    check_probability,
    check_tail_prob,
)


def test_check_int_accepts_and_refuses():
    assert check_int(np.int64(3), "n", 0, 5) == 3
    for bad in (True, 2.0, "3", -1, 6):
        with pytest.raises(ParameterError, match="n must be an integer"):
            check_int(bad, "n", 0, 5)


def test_check_positive_float():
    assert check_positive_float(np.float32(0.5), "step") == 0.5
    assert check_positive_float(0, "decay", allow_zero=True) == 0.0
    for bad in (0, -1.0, math.inf, math.nan, "x", None, True):
        with pytest.raises(ParameterError, match="step must be"):
            check_positive_float(bad, "step")


def test_check_probability_ends():
    assert check_probability(1, "p") == 1.0
    assert check_probability(0, "p", allow_zero=True) == 0.0
    for bad in (0, 1.5, -0.1, math.nan):
        with pytest.raises(ParameterError, match="p must be"):
            check_probability(bad, "p")
    with pytest.raises(ParameterError, match="below 1"):
        check_probability(1.0, "p", allow_one=False)


def test_check_tail_prob_is_open_interval():
    assert check_tail_prob(1 / 512) == pytest.approx(1 / 512)
    for bad in (0, 1, 2, "half"):
        with pytest.raises(ParameterError, match="tail_prob"):
            check_tail_prob(bad)


def test_table_and_design_use_the_shared_tail_check():
    solvers = pytest.importorskip("solvers")
    with pytest.raises(ParameterError, match="tail_prob must be"):
        solvers.DesignSpec(bits=2, shared_bits=3, tail_prob=1.0)
    with pytest.raises(ParameterError, match="tail_prob must be"):
        quicdesign.load_table(2, tail_prob=0)


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("quicdesign", "Encoder", "QuicFLEncoder"),
        ("quicdesign", "Aggregator", "QuicFLAggregator"),
        ("quicdesign.codec", "Aggregator", "QuicFLAggregator"),
        ("quicdesign.entropy", "EntropyEncoder", "QuicFLEntropyEncoder"),
    ],
)
def test_old_quicfl_names_still_work_with_a_warning(module, old, new):
    import importlib

    namespace = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(namespace, old) is getattr(namespace, new)
    with pytest.raises(AttributeError):
        namespace.NoSuchName  # noqa: B018


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quicdesign.QuicFLAggregator.__name__ == "QuicFLAggregator"


def test_every_reference_value_names_its_source():
    groups = [
        reference.QUIC_FL_VNMSE,
        reference.STOCHASTIC_ROUNDING_VNMSE,
        reference.EDEN_VNMSE,
        reference.LLOYD_MAX_NORMAL,
        reference.OFFICIAL_B2_L5_ROWS,
        {"T": reference.THRESHOLD_P_1_512},
    ]
    for group in groups:
        for item in group.values():
            assert item.source.paper and item.source.table and item.source.row
            assert "arXiv" in item.source.paper or "github.com" in item.source.paper
    # the threshold is what its definition says
    from statistics import NormalDist

    t = reference.THRESHOLD_P_1_512.value
    assert t == pytest.approx(NormalDist().inv_cdf(1 - 1 / 1024), rel=1e-12)
    # EDEN's vNMSE is D_LM / (1 - D_LM) of the printed Lloyd-Max MSE (4 printed digits)
    for bits, item in reference.EDEN_VNMSE.items():
        d_lm = reference.LLOYD_MAX_NORMAL[bits].value[1]
        assert item.value == pytest.approx(d_lm / (1 - d_lm), rel=2e-3)
