"""Input models (issue 17): tables say rotated/direct, the direct runtime path, and the
two measured targets: designed direct tables pay off without rotation, never with it."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import quicdesign
import solvers
from quicdesign import DirectAggregator, DirectEncoder, ParameterError, PayloadError, Table

from ._fuzz import MUTATIONS, assert_rejected_or_harmless, mutate
from ._wire_layout import QUICFL_HEADER_SIZE, num_exact, to_legacy

T3 = stats.t(3, scale=1 / math.sqrt(3))  # unit variance


@pytest.fixture(scope="module")
def direct_t3():
    """b = 2, l = 5 designed for what the direct runtime sees of t(3) data."""
    return solvers.design(2, 5, distribution=stats.t(3), input_model="direct", certify=False)


def _direct_version(table, target):
    """The shipped normal table as a direct table, rescaled to ``target``'s tail prob."""
    ratio = target.upper / table.upper
    return Table(
        table.receiver * ratio,
        bits=table.bits,
        shared_bits=table.shared_bits,
        tail_prob=target.tail_prob,
        lower=target.lower,
        upper=target.upper,
        manifest={"parameters": {"input_model": {"normalization": "direct"}}},
    )


def _vnmse(table, law, *, direct, vectors, dim, force=False):
    """Mean over vectors of |xhat - x|^2 / |x|^2 (fixed seeds), one client per round."""
    encoder_type, aggregator_type = (
        (DirectEncoder, DirectAggregator)
        if direct
        else (quicdesign.QuicFLEncoder, quicdesign.QuicFLAggregator)
    )
    ratios = []
    for i in range(vectors):
        x = law.rvs(size=dim, random_state=10_000 + i)
        aggregator = aggregator_type(table, i, dim, force=force)
        aggregator.add(encoder_type(table, i, force=force).encode(x, client_id=1, rng=i))
        ratios.append(np.sum((aggregator.result() - x) ** 2) / np.sum(x**2))
    return float(np.mean(ratios)), float(np.std(ratios) / math.sqrt(vectors))


def test_tables_record_their_input_model(direct_t3):
    shipped = quicdesign.load_table(3)
    assert shipped.input_model["normalization"] == "rotated"
    assert shipped.input_model["law"] == {"kind": "standard_normal"}
    model = direct_t3.table.input_model
    assert model["normalization"] == "direct" and model["scale"] == "chunk-rms"
    assert model["input_law"]["name"] == "t"
    assert model["law"]["kind"] == "empirical"  # t(3) chunks after unit-RMS scaling


def test_input_model_survives_save_and_load(direct_t3, tmp_path):
    model = direct_t3.table.input_model
    assert Table.load(direct_t3.table.save(tmp_path / "t")).input_model == model
    assert Table.load(direct_t3.table.save(tmp_path / "t.npz", format="npz")).input_model == model


def test_mismatched_tables_are_refused_unless_forced(direct_t3):
    shipped = quicdesign.load_table(2)
    with pytest.raises(ParameterError, match="direct inputs"):
        quicdesign.QuicFLEncoder(direct_t3.table, 1)
    with pytest.raises(ParameterError, match="direct inputs"):
        quicdesign.QuicFLAggregator(direct_t3.table, 1, 10)
    with pytest.raises(ParameterError, match="rotated inputs"):
        DirectEncoder(shipped, 1)
    with pytest.raises(ParameterError, match="rotated inputs"):
        DirectAggregator(shipped, 1, 10)
    legacy_t = solvers.design(1, 1, distribution=stats.t(4), certify=False, starts=1).table
    with pytest.raises(ParameterError, match="close to N"):
        quicdesign.QuicFLEncoder(legacy_t, 1)
    quicdesign.QuicFLEncoder(legacy_t, 1, force=True)
    DirectEncoder(shipped, 1, force=True)


def test_direct_path_is_unbiased(direct_t3):
    """Mean of many clients' decodes of one vector -> the vector, within the variance."""
    table, dim, clients = direct_t3.table, 300, 400
    x = T3.rvs(size=dim, random_state=1)
    aggregator = DirectAggregator(table, 9, dim)
    encoder = DirectEncoder(table, 9)
    single = []
    for client in range(clients):
        payload = encoder.encode(x, client_id=client, rng=client)
        aggregator.add(payload)
        one = DirectAggregator(table, 9, dim)
        one.add(payload)
        single.append(one.result() - x)
    single = np.array(single)
    error = aggregator.result() - x
    # per coordinate: the mean of `clients` independent errors, std from the sample
    z_scores = error / (single.std(axis=0, ddof=1) / math.sqrt(clients) + 1e-300)
    sent_exactly = single.std(axis=0) == 0
    assert np.all(error[sent_exactly] == pytest.approx(0, abs=1e-6 * np.abs(x).max()))
    assert np.abs(z_scores[~sent_exactly]).max() < 5  # 300 coordinates: 5 sigma
    assert abs(np.mean(z_scores[~sent_exactly] ** 2) - 1) < 0.25


@settings(max_examples=60, deadline=None)
@given(edits=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_hostile_direct_payloads_are_refused_without_a_trace(direct_t3, edits):
    table = direct_t3.table
    aggregator = DirectAggregator(table, 4, 2000)
    x = T3.rvs(size=2000, random_state=2)
    aggregator.add(DirectEncoder(table, 4).encode(x, client_id=1, rng=0))
    payload = DirectEncoder(table, 4).encode(x, client_id=2, rng=1)
    assert_rejected_or_harmless(aggregator, mutate(payload, edits))


def test_direct_payloads_are_not_rotated_payloads(direct_t3):
    x = T3.rvs(size=64, random_state=3)
    payload = DirectEncoder(direct_t3.table, 4).encode(x, client_id=1, rng=0)
    assert payload[:5] == b"QDQD\x04"
    exact = num_exact(payload)
    assert len(payload) == quicdesign.direct.direct_payload_size(2, 64, exact)
    assert len(payload) == QUICFL_HEADER_SIZE + 4 + 16 + 8 * exact  # one chunk, 64 2-bit codes
    with pytest.raises(PayloadError, match="magic"):
        quicdesign.QuicFLAggregator(direct_t3.table, 4, 64, force=True).add(payload)
    # the direct payload of a release before the envelope (version 1) is still read
    current = quicdesign.DirectAggregator(direct_t3.table, 4, 64)
    current.add(payload)
    legacy = quicdesign.DirectAggregator(direct_t3.table, 4, 64)
    legacy.add(to_legacy(payload))
    assert legacy.result().tobytes() == current.result().tobytes()


@pytest.mark.slow
def test_designed_direct_table_meets_its_design_and_beats_the_normal_one(direct_t3):
    """Issue 17 target 1: on unit-variance t(3) data without rotation, measured vNMSE
    within 2 % of the design value and >= 35 % below the normal table (same tail
    probability, same bits). One chunk per vector, so the expected per-vector vNMSE is
    exactly the design objective; 2400 vectors put its standard error near 0.6 %."""
    designed, normal = direct_t3.table, _direct_version(quicdesign.load_table(2), direct_t3.table)
    measured, error = _vnmse(designed, T3, direct=True, vectors=2400, dim=1024)
    baseline, _ = _vnmse(normal, T3, direct=True, vectors=2400, dim=1024)
    assert error < 0.01 * measured
    assert abs(measured / direct_t3.vnmse - 1) < 0.02
    assert measured <= 0.65 * baseline


@pytest.mark.slow
def test_with_rotation_no_designed_table_beats_the_shipped_one(direct_t3):
    """Issue 17 target 2: with rotation the shipped table is never beaten by more than
    1 % by a designed table, whatever the input law (same vectors, same seeds)."""
    shipped = quicdesign.load_table(2)
    candidates = [direct_t3.table] + [
        solvers.design(2, 5, distribution=law, certify=False, starts=2).table
        for law in (stats.t(3), stats.t(5), stats.laplace())
    ]
    for law in (stats.norm(), T3, stats.laplace(scale=1 / math.sqrt(2))):
        reference, _ = _vnmse(shipped, law, direct=False, vectors=40, dim=4096)
        for table in candidates:
            value, _ = _vnmse(table, law, direct=False, vectors=40, dim=4096, force=True)
            assert value >= 0.99 * reference, (law.dist.name, table.input_model)


def test_cli_designs_direct_tables_for_a_law_or_samples(tmp_path, capsys):
    from quicdesign.cli import main

    np.save(tmp_path / "grad.npy", np.random.default_rng(0).laplace(size=20_000))
    common = ["design", "--bits", "1", "--shared-bits", "2", "--no-certify", "--starts", "1"]
    common += ["--jobs", "1", "--input-model", "direct", "--out", str(tmp_path / "out")]
    assert main([*common, "--distribution", "t:5"]) == 0
    assert main([*common, "--distribution", f"samples:{tmp_path / 'grad.npy'}"]) == 0
    out = capsys.readouterr().out
    assert "b1-l2-p1in512-direct-t5: design vNMSE" in out
    t5 = Table.load(tmp_path / "out" / "b1-l2-p1in512-direct-t5")
    assert t5.input_model["normalization"] == "direct"
    assert t5.input_model["input_law"]["args"] == [5.0]
    grad = Table.load(tmp_path / "out" / "b1-l2-p1in512-direct-samples-grad")
    assert grad.input_model["input_law"]["kind"] == "empirical"
    # a law without --input-model direct, or without a variance, is refused
    assert main(["design", "--bits", "1", "--distribution", "laplace"]) == 2
    with pytest.raises(SystemExit, match="2"):
        main(["design", "--bits", "1", "--distribution", "t:2"])
    np.save(tmp_path / "ints.npy", np.arange(10))
    with pytest.raises(SystemExit, match="2"):
        main([*common, "--distribution", f"samples:{tmp_path / 'ints.npy'}"])
    assert "finite floats" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "law, bits, family",
    [(stats.t(4), 1, "t"), (stats.laplace(), 2, "laplace")],
    ids=["t4-b1", "laplace-b2"],
)
def test_fit_input_law_proposes_the_law_and_measures_both_paths(law, bits, family):
    vectors = list(law.rvs(size=(8, 4096), random_state=0))
    fit = solvers.fit_input_law(vectors, bits=bits)
    assert fit.name == family
    if family == "t":
        assert 3 < fit.law.args[0] < 5.5
    assert fit.table.input_model["normalization"] == "direct"
    shipped = quicdesign.load_table(bits)
    # rotation makes the data normal: the shipped table performs as designed
    assert fit.rotated_vnmse == pytest.approx(shipped.vnmse, rel=0.06)
    assert fit.gain == pytest.approx(1 - fit.direct_vnmse / fit.rotated_vnmse)
    assert fit.gain < 0  # at these budgets rotation wins, as the README says
    assert "keep rotation" in fit.summary()


@pytest.mark.parametrize("chunk_size", [64, 1024])
def test_exact_rotated_law_design_gains_under_one_percent(chunk_size):
    """With rotation the table sees the exact law of a rotated chunk; designing for it
    (same threshold, so the same bits) gains < 1 % over the shipped normal table."""
    from solvers.distributions import RotatedChunkLaw

    shipped = quicdesign.load_table(2)
    law = RotatedChunkLaw(chunk_size)
    assert law.second_moment() == pytest.approx(1.0, rel=1e-9)
    result = solvers.design(
        2, 5, threshold=shipped.upper, input_model=f"rotated:{chunk_size}", certify=False
    )
    on_law = solvers.evaluate(shipped.receiver, law, *shipped.support, gradient=False).vnmse
    assert result.vnmse <= on_law + 1e-12  # the optimizer found no worse table
    assert result.vnmse >= 0.99 * on_law
    assert result.table.input_model["law"] == {"kind": "rotated_chunk", "chunk_size": chunk_size}
    quicdesign.QuicFLEncoder(result.table, 1)  # a rotated-law table is a rotated table
    with pytest.raises(ParameterError, match="rotated:N"):
        solvers.design(2, 5, input_model="rotated:x")
