"""Framing share of the FL experiments: measured from real payloads, below 5 % at scale."""

import numpy as np
import pytest

from quicdesign._envelope import ENVELOPE_SIZE
from quicdesign.fl import BitCounter, RawFloats
from quicdesign.fl.experiments import (
    EXPERIMENTS,
    SMALL_FRAMING_PERCENT,
    framing_percent,
    run_experiment,
)

ENVELOPE_BITS = 8 * ENVELOPE_SIZE


class _Counted:
    def __init__(self, counter):
        self.counter = counter


def test_framing_percent_counts_only_envelopes_found_in_the_payloads():
    counter = BitCounter(2)
    framed = RawFloats("float32").encode(np.ones(100), round_seed=1, client_id=0)
    assert len(framed) == ENVELOPE_SIZE + 400
    counter.add_upload([0], [framed])
    # a body without an envelope (e.g. a foreign payload) adds bits but no framing
    counter.add_download([0, 1], b"\x00" * 400)
    counter.add_downloads([1], [framed])
    expected = 100.0 * 2 * ENVELOPE_BITS / (2 * 8 * len(framed) + 2 * 8 * 400)
    assert framing_percent([_Counted(counter)]) == pytest.approx(expected, rel=1e-12)
    assert framing_percent([_Counted(BitCounter(1))]) == 0.0


def test_every_experiment_is_at_scale_or_points_to_a_run_that_is():
    for name, experiment in EXPERIMENTS.items():
        if experiment.at_scale:
            assert experiment.at_scale.split()[0] in EXPERIMENTS, name


@pytest.mark.slow
def test_mcm_large_keeps_dianas_floor_with_framing_below_five_percent():
    result = run_experiment("mcm-large", quick=True, workers=2, progress=False)
    rows = {row["config"]: row for row in result.summary}
    assert set(rows) == {"diana", "mcm w_dwn=9", "artemis w_dwn=9", "mc w_dwn=9"}
    rounds, workers = 300, 20
    for history in result.histories:
        row = rows[history.config["config"]]
        counter = history.counter
        # one upload and one download per worker and round, each with one envelope (plus
        # one initial message in one direction: the workers' memory up, or Diana's model)
        uploads, remainder = divmod(int(counter.upload_framing.sum()), ENVELOPE_BITS)
        downloads, remainder_down = divmod(int(counter.download_framing.sum()), ENVELOPE_BITS)
        assert remainder == remainder_down == 0
        assert uploads in (rounds * workers, (rounds + 1) * workers)
        assert downloads in (rounds * workers, (rounds + 1) * workers)
        assert uploads + downloads == (2 * rounds + 1) * workers
        total = rounds * workers * (row["up_bits/worker/round"] + row["down_bits/worker/round"])
        expected = 100.0 * ENVELOPE_BITS * (uploads + downloads) / total
        assert row["framing_%"] == pytest.approx(expected, rel=1e-9)
        assert row["framing_%"] < SMALL_FRAMING_PERCENT, (row, row["framing_%"])
        # QSGD s = 1 at d = 2000: 2 bits per coordinate and a norm, 20x the envelope
        assert row["up_bits/worker/round"] > 20 * ENVELOPE_BITS
    assert any("below 5 % in every one" in note for note in result.notes)
    floor = {config: row["floor_log10"] for config, row in rows.items()}
    # seeds 0-2 at 300 rounds (mean +- sd): diana 0.003 +- 0.015, mcm 0.203 +- 0.009,
    # artemis 2.463 +- 0.071, mc 1.969 +- 0.035 (log10 excess loss); bounds ~ 4 sd
    assert -0.07 < floor["diana"] < 0.07, floor
    assert 0.12 < floor["mcm w_dwn=9"] - floor["diana"] < 0.3, floor
    assert 2.15 < floor["artemis w_dwn=9"] < 2.8, floor
    assert 1.8 < floor["mc w_dwn=9"] < 2.15, floor


@pytest.mark.slow
def test_signsgd_large_fv_beats_mv_with_framing_below_five_percent():
    result = run_experiment("signsgd-large", quick=True, workers=2, progress=False)
    rows = {f"{row['split']} {row['rule']}": row for row in result.summary}
    rounds, workers = 600, 15
    for config, row in rows.items():
        assert 1.0 < row["framing_%"] < SMALL_FRAMING_PERCENT, (config, row["framing_%"])
        # 8192 signs are 1 KiB: the envelope is a fiftieth of an upload
        assert row["bits/worker/round"] > 8192
    for history in result.histories:
        assert history.counter.upload_framing.sum() == ENVELOPE_BITS * rounds * workers
    # seeds 0-2 at 600 rounds (mean +- sd of the tail loss): MV 23.4 +- 0.52, FV 10.32 +-
    # 0.19 under 14x1+1x226; 15x16 8.61 +- 0.11 for both rules; bounds ~ 4 sd
    assert 21.3 < rows["14x1+1x226 mv"]["tail_loss"] < 25.5, rows
    assert 9.5 < rows["14x1+1x226 fv-pooled"]["tail_loss"] < 11.1, rows
    assert rows["15x16 mv"]["tail_loss"] == rows["15x16 fv-pooled"]["tail_loss"]
    assert 8.1 < rows["15x16 mv"]["tail_loss"] < 9.1, rows


@pytest.mark.slow
def test_cossgd_large_side_data_and_envelopes_below_five_percent():
    from quicdesign.fl.cossgd_study import paired_gap

    result = run_experiment("cossgd-large", quick=True, workers=2, progress=False)
    rows = {row["config"]: row for row in result.summary}
    rounds, clients, tensors = 100, 10, 4
    for config, row in rows.items():
        assert row["framing_%"] < SMALL_FRAMING_PERCENT, (config, row["framing_%"])
        if row["family"] == "cosine":
            # everything beyond b bits of codes per parameter: 4 envelopes and 4 x 64 bits
            # of norm and range (and code padding), measured from the payloads
            overhead = (row["up_bits/coord"] - row["bits"]) / row["up_bits/coord"]
            assert 0.0 < overhead < SMALL_FRAMING_PERCENT / 100, (config, overhead)
    for history in result.histories:
        # one envelope per tensor per client and round
        assert history.counter.upload_framing.sum() == ENVELOPE_BITS * tensors * rounds * clients
    # seeds 0-2 at 100 rounds (plateau accuracy): fp32 0.964-0.976, cosine 4b 0.964-0.979,
    # paired 4b - fp32 -0.001 / 0.000 / +0.003; cosine 2b 0.910-0.953, sq 2b 0.892-0.916
    accuracy = {config: row["test_accuracy"] for config, row in rows.items()}
    assert 0.95 < accuracy["fp32"] < 0.99, accuracy
    gap, _ = paired_gap(result.histories, rounds, "cosine 4b weights", "fp32")
    assert -0.01 < gap < 0.01, gap
    assert 0.88 < accuracy["cosine 2b weights"] < 0.98, accuracy
    assert 0.87 < accuracy["sq 2b weights"] < 0.94, accuracy
