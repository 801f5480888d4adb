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
    expected = 100.0 * ENVELOPE_BITS / (8 * len(framed) + 2 * 8 * 400)
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
    for config, row in rows.items():
        per_round = row["up_bits/worker/round"] + row["down_bits/worker/round"]
        # one upload and one download per worker and round, each with one envelope: the
        # share the counters measured equals the one from counting messages
        assert row["framing_%"] == pytest.approx(100.0 * 2 * ENVELOPE_BITS / per_round)
        assert row["framing_%"] < SMALL_FRAMING_PERCENT, (config, row["framing_%"])
        # QSGD s = 1 at d = 2000: 2 bits per coordinate and a norm, 20x the envelope
        assert row["up_bits/worker/round"] > 20 * ENVELOPE_BITS
    history = result.histories[0]
    assert history.counter.upload_framing.sum() == ENVELOPE_BITS * rounds * workers
    assert any("below 5 % in every one" in note for note in result.notes)
    floor = {config: row["floor_log10"] for config, row in rows.items()}
    # seeds 0-2 at 300 rounds (mean +- sd): diana 0.003 +- 0.015, mcm 0.203 +- 0.009,
    # artemis 2.463 +- 0.071, mc 1.969 +- 0.035 (log10 excess loss); bounds ~ 4 sd
    assert -0.07 < floor["diana"] < 0.07, floor
    assert 0.12 < floor["mcm w_dwn=9"] - floor["diana"] < 0.3, floor
    assert 2.15 < floor["artemis w_dwn=9"] < 2.8, floor
    assert 1.8 < floor["mc w_dwn=9"] < 2.15, floor
