"""CSV tables and PNG curves of an experiment (matplotlib imported on use, Agg backend)."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np

__all__ = ["write_csv", "write_result", "plot_curves", "plot_decoding"]


def write_csv(path, rows):
    """Write dict rows to CSV; the header is the union of keys in first-seen order."""
    rows = list(rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def _mean_curves(histories, metric):
    """Per configuration: rounds, mean bits per client (up + down), the mean metric, and
    the lowest and highest seed's metric (the band)."""
    grouped = {}
    for history in histories:
        if metric in history.metrics:
            grouped.setdefault(history.config.get("config", history.label), []).append(history)
    curves = {}
    for config, runs in grouped.items():
        length = min(len(h.rounds) for h in runs)
        rounds = np.asarray(runs[0].rounds[:length])
        per_seed = np.array([h.curve(metric)[:length] for h in runs])
        values = per_seed.mean(axis=0)
        clients = runs[0].counter.num_clients
        bits = np.mean(
            [
                (np.asarray(h.upload_bits[:length]) + np.asarray(h.download_bits[:length]))
                / clients
                for h in runs
            ],
            axis=0,
        )
        curves[config] = (rounds, bits, values, per_seed.min(axis=0), per_seed.max(axis=0))
    return curves


#: Axis labels in words (with units) for the recorded metrics.
METRIC_LABELS = {
    "excess_loss": "excess training loss f(x) - f* (log scale)",
    "test_accuracy": "test accuracy (fraction correct)",
    "loss": "training loss",
    "train_loss": "training loss",
}


def _zoom_past_the_start(axes, curves, share=0.1):
    """Fit the y axis to rounds after the first ``share`` of the run.

    The first rounds (accuracy rising from chance, loss falling from its start) stretch a
    linear axis so far that configurations which differ by a percent look identical.
    """
    tails = [
        values[rounds >= share * rounds.max()]
        for rounds, _, values, *_ in curves.values()
        if rounds.size >= 10
    ]
    tails = [tail[np.isfinite(tail)] for tail in tails]
    if not tails or not all(tail.size for tail in tails):
        return
    low = min(float(tail.min()) for tail in tails)
    high = max(float(tail.max()) for tail in tails)
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    axes.set_ylim(low - margin, high + margin)
    start = int(share * max(rounds.max() for rounds, *_ in curves.values()))
    axes.set_title(f"y axis fitted to rounds >= {start}; earlier rounds off the scale", fontsize=8)


def plot_curves(path, histories, metric, *, log_metric=False, title=""):
    """Plot ``metric`` against rounds and against bits per client; returns the path or None.

    Returns None when no run recorded the metric.
    """
    curves = _mean_curves(histories, metric)
    if not curves:
        return None
    plt = _pyplot()
    figure, (by_round, by_bits) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for index, (config, (rounds, bits, values, *band)) in enumerate(curves.items()):
        # many configurations overlap: vary the dash pattern as well as the colour
        style = {
            "linewidth": 1.3,
            "linestyle": ("-", "--", "-.", ":")[index % 4],
            "marker": "o" if len(rounds) < 6 else None,  # short runs: keep lone points
            "markersize": 4,
            # past ten configurations the default colour cycle repeats
            "color": plt.get_cmap("tab20")(index % 20) if len(curves) > 10 else f"C{index % 10}",
        }
        (line,) = by_round.plot(rounds, values, label=config, **style)
        sent = bits > 0  # the initial model costs nothing and has no place on a log axis
        by_bits.plot(bits[sent], values[sent], **style)
        if band and np.any(band[1] > band[0]):  # one seed has no band
            low, high = band
            shade = {"color": line.get_color(), "alpha": 0.15, "linewidth": 0}
            by_round.fill_between(rounds, low, high, **shade)
            by_bits.fill_between(bits[sent], low[sent], high[sent], **shade)
    runs = len(histories) // max(len(curves), 1)
    seeds = f"{runs} seed" + ("s" if runs != 1 else "")
    by_round.set_xlabel(
        f"round (line: mean of {seeds}; band: lowest to highest seed)"
        if runs > 1
        else "round (one seed)"
    )
    by_bits.set_xlabel("bits sent per client, uplink + downlink (log scale)")
    by_bits.set_xscale("log")
    for axes in (by_round, by_bits):
        label = METRIC_LABELS.get(metric, metric.replace("_", " "))
        axes.set_ylabel(label if log_metric else label.replace(" (log scale)", ""))
        if log_metric:
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
    if not log_metric:
        _zoom_past_the_start(by_round, curves)
    figure.legend(fontsize=7, loc="outside right upper")
    figure.suptitle(textwrap.fill(title, 75), fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_decoding(path, rows, *, title=""):
    """Plot exact MV and FV decoding errors against the SNR, one colour per batch split."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    splits = list(dict.fromkeys(row["split"] for row in rows))
    for index, split in enumerate(splits):
        mine = [row for row in rows if row["split"] == split]
        snr = [row["snr"] for row in mine]
        color = f"C{index}"
        axes.plot(snr, [row["mv_exact"] for row in mine], "-o", color=color, label=f"MV {split}")
        axes.plot(snr, [row["fv_exact"] for row in mine], "--s", color=color, label=f"FV {split}")
        axes.plot(snr, [row["mv_hoeffding"] for row in mine], ":", color=color, linewidth=0.8)
    axes.set_xlabel("per-sample SNR")
    axes.set_ylabel("P(decoded sign is wrong)")
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(title, fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _best_rate_only(histories, metric):
    """Per ``config["method"]``, the runs of its learning rate with the best final metric.

    A learning-rate sweep puts every rate in the table; the figure shows one curve per
    method so that it stays readable.
    """
    finals = {}
    for history in histories:
        key = (history.config["method"], history.config["config"])
        finals.setdefault(key, []).append(history.final(metric))
    best = {}
    for (method, config), values in finals.items():
        if method not in best or np.mean(values) > best[method][1]:
            best[method] = (config, float(np.mean(values)))
    kept = {config for config, _ in best.values()}
    return [h for h in histories if h.config["config"] in kept]


def write_result(result, folder):
    """Write ``<name>_curves.csv``, ``<name>_summary.csv`` and ``<name>.png`` to ``folder``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = result.experiment.name
    written = [write_csv(folder / f"{name}_summary.csv", result.summary)]
    if result.experiment.plot == "decoding":
        written.append(
            plot_decoding(
                folder / f"{name}.png", result.summary, title=f"{name}: {result.experiment.claim}"
            )
        )
    if result.histories:
        rows = (row for history in result.histories for row in history.rows())
        written.append(write_csv(folder / f"{name}_curves.csv", rows))
        figure = plot_curves(
            folder / f"{name}.png",
            _best_rate_only(result.histories, result.experiment.metric)
            if result.experiment.plot == "best-rate"
            else result.histories,
            result.experiment.metric,
            log_metric=result.experiment.log_metric,
            title=f"{name}: {result.experiment.claim}",
        )
        if figure is not None:
            written.append(figure)
    return written
