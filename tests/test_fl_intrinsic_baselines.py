"""Intrinsic gradient compression against gradient compressors at equal upload (quick)."""

import math

import pytest

from quicdesign._envelope import ENVELOPE_SIZE
from quicdesign.fl.experiments import run_experiment

ROUNDS = 200
pytestmark = pytest.mark.slow


#: Every message starts with the 21-byte envelope (docs/wire-format.md).
ENVELOPE_BITS = 8 * ENVELOPE_SIZE


def floats_message(floats):
    """Bits of one float32 message: nothing to send is no message, else envelope + floats."""
    return 0 if floats == 0 else ENVELOPE_BITS + 32 * floats


def stateless_download(held, subspace_dim, full_dim, rounds):
    """Mean download bits per step of a stateless client: one message per step holding
    every non-zero z (``held(t)`` of them at step ``t``), or the model when that is smaller."""
    bits = sum(floats_message(min(held(t) * subspace_dim, full_dim)) for t in range(rounds))
    return bits / rounds


@pytest.fixture(scope="module")
def rows():
    result = run_experiment("intrinsic-baselines", seeds=(0,), rounds=ROUNDS, workers=2)
    return {row["config"]: row for row in result.summary}


def test_equal_upload_bits_and_both_download_accountings(rows):
    assert len(rows) == 36
    budget = floats_message(25)  # intrinsic d = 25: 968 bits
    fp32 = floats_message(1669)
    for config, row in rows.items():
        up, down = row["up_bits/client/round"], row["down_bits/client/round"]
        if config.startswith("intrinsic"):
            assert up == budget
            if "stateful" in config:
                # one message per step from step 1 on: the z changed in the previous step
                assert down == pytest.approx(budget * (ROUNDS - 1) / ROUNDS)
        elif config.startswith(("rand-k", "count-sketch")):
            assert up == budget and down == fp32  # k = d floats; the fp32 update down
        elif config.startswith("local top-k") or config.startswith("fedavg E=5 local top-k"):
            # the largest k within the budget: uint16 index + float32 value per entry
            assert up == ENVELOPE_BITS + 16 * 48 <= budget < ENVELOPE_BITS + 17 * 48
            assert down == fp32
        elif config.startswith("quic-fl"):
            assert 2400 < up < 2800, row  # QUIC-FL b = 1: chunk norms, tails, envelope
        else:
            assert up == down == fp32
    # the paper's stateless accounting: every non-zero z each step, same trajectory
    for variant in ("static", "k-subspace", "time-varying"):
        stateful = rows[f"intrinsic {variant} d=25 lr=1 (stateful)"]
        stateless = rows[f"intrinsic {variant} d=25 lr=1 (stateless)"]
        assert stateless["test_accuracy"] == stateful["test_accuracy"]
    expected = {
        "static": lambda t: min(t, 1),
        "k-subspace": lambda t: min(t, 8),  # K d once all 8 are used
        "time-varying": lambda t: -(-t // 10),  # every period begun before step t
    }
    for variant, held in expected.items():
        down = rows[f"intrinsic {variant} d=25 lr=1 (stateless)"]["down_bits/client/round"]
        assert down == pytest.approx(stateless_download(held, 25, 1669, ROUNDS), rel=1e-12)


def test_accuracy_at_equal_upload_and_against_total_bits(rows):
    accuracy = {config: row["test_accuracy"] for config, row in rows.items()}
    # seeds 0-2 at 200 rounds: static 0.371-0.407, k-subspace lr 10 0.685-0.740,
    # time-varying lr 10 0.696-0.747, rand-k 0.716-0.751, count-sketch 0.722-0.777,
    # local top-k 0.733-0.800, QUIC-FL b=1 0.746-0.802, fp32 0.738-0.792; rand-k k=25
    # 0.722-0.767, count-sketch 1x25 0.718-0.781
    bounds = {
        "intrinsic static d=25 lr=1 (stateful)": (0.33, 0.47),
        "intrinsic k-subspace d=25 lr=10 (stateful)": (0.62, 0.79),
        "intrinsic time-varying d=25 lr=10 (stateful)": (0.64, 0.80),
        "rand-k k=25 lr=0.1": (0.66, 0.82),
        "count-sketch 1x25 lr=0.1": (0.66, 0.83),
        "local top-k k=16 lr=0.5": (0.68, 0.85),
        "quic-fl b=1 (2.7x budget) lr=0.5": (0.69, 0.85),
        "fedsgd fp32 (55x budget) lr=0.5": (0.69, 0.84),
    }
    for config, (low, high) in bounds.items():
        assert low < accuracy[config] < high, (config, accuracy)
    # per step and at equal upload, local top-k with error feedback beats every variant
    best_intrinsic = max(v for k, v in accuracy.items() if k.startswith("intrinsic"))
    assert accuracy["local top-k k=16 lr=0.5"] > best_intrinsic, accuracy
    # against total bits (up + down, stateful clients) intrinsic wins by a wide margin:
    # seeds 0-2, every round recorded: 0.057-0.106 Mbit to 65 % accuracy vs >= 0.337
    # (QUIC-FL) for the gradient compressors (FedAvg: its own test)
    to_target = {config: row["Mbit_to_acc_0.65"] for config, row in rows.items()}
    intrinsic = min(v for k, v in to_target.items() if "stateful" in k and not math.isnan(v))
    baseline = min(
        v for k, v in to_target.items() if "intrinsic" not in k and not k.startswith("fedavg")
    )
    assert 0.02 < intrinsic < 0.2 and intrinsic < baseline / 3, to_target


def test_larger_model_counts_equal_upload_exactly():
    rounds = 20
    result = run_experiment("intrinsic-large", seeds=(0,), rounds=rounds, workers=2)
    rows = {row["config"]: row for row in result.summary}
    assert len(rows) == 24
    budget, fp32 = floats_message(100), floats_message(9610)  # 3368 and 307688 bits
    for config, row in rows.items():
        up, down = row["up_bits/client/round"], row["down_bits/client/round"]
        if config.startswith("intrinsic"):
            assert up == budget  # envelope + d = 100 float32
        elif config.startswith(("rand-k", "count-sketch")):
            assert up == budget and down == fp32  # envelope + 100 floats; fp32 update
        elif config.startswith(("local top-k", "fedavg E=5 local top-k")):
            # envelope + 66 (uint16 index + float32 value): the largest k within budget
            assert up == ENVELOPE_BITS + 66 * 48 <= budget < ENVELOPE_BITS + 67 * 48
            assert down == fp32
        else:
            assert up == down == fp32
    for variant in ("static", "k-subspace", "time-varying"):
        for rate in (1, 3, 10):
            stateful = rows[f"intrinsic {variant} d=100 lr={rate} (stateful)"]
            stateless = rows[f"intrinsic {variant} d=100 lr={rate} (stateless)"]
            assert stateless["test_accuracy"] == stateful["test_accuracy"]
            assert stateful["down_bits/client/round"] == pytest.approx(
                budget * (rounds - 1) / rounds
            )
    # at d = 100 every configuration's envelopes are below 5 % of its bits (the
    # intrinsic uplink: 168 of 3368 bits, 4.99 %)
    for config, row in rows.items():
        assert row["framing_%"] < 5.0, (config, row["framing_%"])
    stateful = rows["intrinsic static d=100 lr=1 (stateful)"]
    messages = rounds + rounds - 1  # uploads, and downloads from step 1 on
    total = rounds * (stateful["up_bits/client/round"] + stateful["down_bits/client/round"])
    assert stateful["framing_%"] == pytest.approx(100 * ENVELOPE_BITS * messages / total)
    # K-subspace stateless: one message holding min(t, 8) of the 8 vectors per step
    down = rows["intrinsic k-subspace d=100 lr=1 (stateless)"]["down_bits/client/round"]
    assert down == pytest.approx(stateless_download(lambda t: min(t, 8), 100, 9610, rounds))
    # time-varying (period 10): the periods begun so far, still one message per step
    down = rows["intrinsic time-varying d=100 lr=1 (stateless)"]["down_bits/client/round"]
    assert down == pytest.approx(stateless_download(lambda t: -(-t // 10), 100, 9610, rounds))


def test_fedavg_baselines_at_equal_upload_and_against_total_bits(rows):
    accuracy = {config: row["test_accuracy"] for config, row in rows.items()}
    to_target = {config: row["Mbit_to_acc_0.65"] for config, row in rows.items()}
    # seeds 0-2 at 200 rounds: FedAvg E=5 fp32 lr 0.5 0.792-0.830, lr 0.1 0.740-0.796;
    # FedAvg E=5 local top-k k=16 lr 0.5 0.748-0.777, lr 0.1 0.733-0.804 (mean +- sd
    # 0.811 +- 0.019, 0.762 +- 0.030, 0.759 +- 0.016, 0.759 +- 0.039); bounds ~ mean +- 3 sd
    bounds = {
        "fedavg E=5 fp32 (55x budget) lr=0.5": (0.75, 0.87),
        "fedavg E=5 fp32 (55x budget) lr=0.1": (0.67, 0.85),
        "fedavg E=5 local top-k k=16 lr=0.5": (0.71, 0.81),
        "fedavg E=5 local top-k k=16 lr=0.1": (0.64, 0.88),
    }
    for config, (low, high) in bounds.items():
        assert low < accuracy[config] < high, (config, accuracy)
    # five local steps per round: FedAvg (lr 0.5) beats FedSGD at the same uplink
    assert (
        accuracy["fedavg E=5 fp32 (55x budget) lr=0.5"]
        > accuracy["fedsgd fp32 (55x budget) lr=0.5"]
    )
    # FedAvg fp32 reaches 65 % at round 2 (0.107 Mbit per round up + down) for seeds 0-2:
    # 0.214 Mbit, the cheapest baseline (gradient compressors >= 0.337), above intrinsic's
    # stateful count (K-subspace 0.057-0.106) but inside its stateless range (0.197-0.386)
    fedavg = to_target["fedavg E=5 fp32 (55x budget) lr=0.5"]
    assert 0.1 < fedavg < 0.33, to_target
    baselines = [v for k, v in to_target.items() if "intrinsic" not in k and "fedavg" not in k]
    assert fedavg < min(baselines), to_target
    stateful = min(v for k, v in to_target.items() if "stateful" in k and not math.isnan(v))
    stateless = min(v for k, v in to_target.items() if "stateless" in k and not math.isnan(v))
    assert stateful < fedavg < 2 * stateless, to_target


def test_equal_upload_verdicts_name_fedavg_and_both_accountings():
    from quicdesign.fl.experiments import _equal_upload_verdicts

    def row(config, accuracy, mbit, up=968):
        return {
            "config": config,
            "test_accuracy": accuracy,
            "Mbit_to_acc_0.65": mbit,
            "up_bits/client/round": up,
        }

    rows = [
        row("intrinsic static d=25 lr=1 (stateful)", 0.70, 0.05),
        row("intrinsic static d=25 lr=1 (stateless)", 0.70, 0.40),
        row("fedavg E=5 local top-k k=16 lr=0.5", 0.75, 0.5, up=936),
        row("fedavg E=5 fp32 (55x budget) lr=0.5", 0.80, 0.2, up=53576),
        row("rand-k k=25 lr=0.1", 0.60, math.nan),
    ]
    accuracy, stateful, stateless = _equal_upload_verdicts(rows, 0.65)
    # the 55x-budget row is not "at equal upload"; FedAvg within the budget beats intrinsic
    assert "fp32" not in accuracy
    assert "beaten by fedavg E=5 local top-k k=16 (0.750)" in accuracy
    assert "intrinsic 0.05" in stateful and "best baseline 0.2 (fedavg E=5 fp32" in stateful
    assert "4.0x fewer" in stateful
    assert "intrinsic 0.4" in stateless and "2.0x more" in stateless
