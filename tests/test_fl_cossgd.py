"""FedSGD with per-tensor compression both ways, and bidirectional CosSGD."""

import numpy as np
import pytest

from quicdesign.compressors import CosSGD, QuicFL
from quicdesign.errors import ParameterError
from quicdesign.fl import (
    Participation,
    classification_problem,
    run_cossgd,
    run_fedsgd,
    teacher_dataset,
)


@pytest.fixture(scope="module")
def teacher_problems():
    problems = []
    for seed in (0, 1):
        train, test = teacher_dataset(num_train=2000, num_test=1000, seed=seed)
        problems.append(
            classification_problem("mlp", train, test, 10, partition="shards", hidden=32, seed=seed)
        )
    return problems


def test_per_tensor_bits_equal_the_payload_sizes(teacher_problems):
    problem = teacher_problems[0]
    sizes = [s.stop - s.start for _, s in problem.tensor_slices]
    assert sizes == [20 * 32, 32, 32 * 5, 5]
    rounds = 6
    for mode in ("update", "weights", "none"):
        history = run_cossgd(
            problem,
            bits_up=3,
            bits_down=2,
            downlink_mode=mode,
            rounds=rounds,
            step_size=0.5,
            seed=0,
        )
        up = sum(8 * CosSGD(bits=3).payload_size(n) for n in sizes)
        down = (
            sum(8 * CosSGD(bits=2).payload_size(n) for n in sizes)
            if mode != "none"
            else 32 * problem.dim + 8 * 21  # float32 and the envelope, like every payload
        )
        assert np.all(history.counter.upload == rounds * up), mode
        assert np.all(history.counter.download == rounds * down), mode
        assert history.counter.broadcast == rounds * down


def test_uncompressed_fedsgd_is_sgd_at_float32_precision(teacher_problems):
    problem = teacher_problems[0]
    history = run_fedsgd(problem, rounds=20, step_size=0.5, batch_size=None, seed=2)
    model = problem.initial_point(2)
    for _ in range(20):
        grads = problem.gradients(model, np.arange(10), np.zeros(10, dtype=int), None)
        model = (model - 0.5 * grads.mean(axis=0)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(history.extras["model"], model, atol=1e-5)


def test_update_mode_keeps_clients_close_to_the_server_model(teacher_problems):
    problem = teacher_problems[0]
    gaps = {}
    for mode in ("update", "weights"):
        history = run_cossgd(
            problem, bits_up=4, bits_down=2, downlink_mode=mode, rounds=60, step_size=0.5, seed=0
        )
        gaps[mode] = np.linalg.norm(history.extras["server_model"] - history.extras["model"])
    # the update mode corrects earlier quantization errors, absolute weights do not.
    # Measured (seed 0): update 0.125, weights 5.22. Two-sided so that a broken
    # quantizer (gap far larger) or a lossless downlink (gap ~0) both fail.
    assert 0.03 < gaps["update"] < 0.5, gaps
    assert 2.0 < gaps["weights"] < 15.0, gaps
    assert gaps["update"] < 0.1 * gaps["weights"], gaps


def test_other_protocol_compressors_plug_in(teacher_problems):
    problem = teacher_problems[0]
    history = run_fedsgd(
        problem,
        rounds=3,
        step_size=0.5,
        uplink=QuicFL(bits=2),
        downlink=QuicFL(bits=2),
        per_tensor=False,
        participation=Participation(per_round=4),
        seed=0,
    )
    assert np.isfinite(history.final("loss"))
    assert (history.counter.upload > 0).sum() <= 10
    assert history.counter.upload.sum() > 0 and history.counter.download.min() > 0
    with pytest.raises(ParameterError):
        run_fedsgd(problem, rounds=1, step_size=0.5, downlink_mode="gradients")


@pytest.mark.slow
def test_cosine_4_bit_bidirectional_training_is_close_to_full_precision(teacher_problems):
    accuracy = {}
    for seed, problem in enumerate(teacher_problems):
        options = dict(
            rounds=400,
            step_size=0.5,
            seed=seed,
            record_every=400,
            participation=Participation(per_round=5),
        )
        accuracy.setdefault("fp32", []).append(
            run_fedsgd(problem, **options).final("test_accuracy")
        )
        for bits in (4, 2):
            accuracy.setdefault(bits, []).append(
                run_cossgd(
                    problem, bits_up=bits, bits_down=bits, downlink_mode="update", **options
                ).final("test_accuracy")
            )
    mean = {key: float(np.mean(values)) for key, values in accuracy.items()}
    # Measured: fp32 0.775, 4 bits 0.778, 2 bits 0.756 (chance: 0.2 with five classes).
    assert 0.70 < mean["fp32"] < 0.85, mean
    assert abs(mean[4] - mean["fp32"]) < 0.02, mean
    # 2 bits: close below full precision, not above it
    assert 0.70 < mean[2] < mean["fp32"] + 0.01, mean


def test_accuracy_curves_are_fitted_past_the_first_rounds(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from quicdesign.fl import report

    rounds = np.arange(101)
    rising = 0.8 - 0.7 * np.exp(-rounds / 3.0)  # from chance to a plateau in ~10 rounds
    curves = {
        "fp32": (rounds, 1e4 * rounds, rising),
        "4-bit": (rounds, 1e3 * rounds, rising - 0.01),
    }
    monkeypatch.setattr(report, "_mean_curves", lambda histories, metric: curves)
    captured = {}
    original = report._zoom_past_the_start

    def spy(axes, curves, share=0.1):
        original(axes, curves, share)
        captured["ylim"] = axes.get_ylim()

    monkeypatch.setattr(report, "_zoom_past_the_start", spy)
    path = report.plot_curves(tmp_path / "curves.png", [None, None], "test_accuracy")
    low, high = captured["ylim"]
    # the 1-point gap between the plateaus spans a visible share of the axis
    assert 0.7 < low < 0.79 - 0.01 and 0.8 < high < 0.81, (low, high)
    assert imread(path).shape[0] > 100
