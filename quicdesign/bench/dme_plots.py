"""Figures of the DME benchmark (Agg canvas, no pyplot; matplotlib imported when used)."""

from __future__ import annotations

import numpy as np


def _figure(**kwargs):
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _bound(bits):
    return 1.0 / (4.0**bits - 1.0)


def plot_nmse_vs_bits(rows, path=None, clients=None):
    """vNMSE (top) and NMSE at ``n`` clients (bottom) against measured bits per coordinate.

    One column per family, log y. The dashed line is the bound ``1/(4^b - 1)`` for any
    unbiased b-bit estimate (``1/(n (4^b - 1))`` for the mean of ``n`` independent ones),
    evaluated at the measured bits.
    """
    clients = max(r["clients"] for r in rows) if clients is None else clients
    rows = [r for r in rows if r["clients"] == clients]
    families = list(dict.fromkeys(r["family"] for r in rows))
    labels = list(dict.fromkeys(r["compressor"] for r in rows))
    figure = _figure(figsize=(4.2 * len(families), 7.5), layout="constrained")
    axes = figure.subplots(2, len(families), squeeze=False, sharex=True)
    low = max(min(r["bits_per_coordinate"] for r in rows), 0.05)
    high = max(r["bits_per_coordinate"] for r in rows)
    grid = np.linspace(low, high, 200)
    for column, family in enumerate(families):
        for row_index, (key, scale) in enumerate((("vnmse", 1), ("nmse", clients))):
            ax = axes[row_index, column]
            for label in labels:
                points = sorted(
                    (r["bits_per_coordinate"], r[key])
                    for r in rows
                    if r["family"] == family and r["compressor"] == label and r[key] > 0
                )
                if points:
                    ax.plot(*zip(*points, strict=True), "o-", ms=4, label=label)
            ax.plot(
                grid,
                _bound(grid) / scale,
                "k--",
                lw=1,
                label="bound 1/(4^b - 1), unbiased" if scale == 1 else None,
            )
            ax.set_yscale("log")
            # the bound falls fast with b; do not let it squash the measured points
            measured = [r[key] for r in rows if r["family"] == family and r[key] > 0]
            if measured:
                ax.set_ylim(bottom=min(measured) / 3)
            name = "vNMSE" if scale == 1 else f"NMSE, n = {clients}"
            ylabel = "vNMSE of one client" if scale == 1 else f"NMSE of the mean of {clients}"
            ax.set(title=f"{family}: {name}", ylabel=ylabel)
            ax.grid(True, which="major", alpha=0.3)
        axes[1, column].set_xlabel("measured bits per coordinate")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, fontsize=7, loc="outside right upper")
    sample = rows[0]
    figure.suptitle(
        f"all schemes: d = {sample['dim']}, n = {clients} clients, {sample['trials']} trials; "
        f"dashed: the bound (divided by n below)",
        fontsize=9,
    )
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


#: Compressors whose vNMSE sits near the bound (the comparison that matters).
NEAR_BOUND = ("quicfl", "quicfl-ec", "eden", "lattice-e8", "lattice-d4")


def certified_scalar_floor(bits):
    """The certified floor of unbiased *scalar* entropy-coded schemes at rate ``bits``.

    Each shipped entropy table's ``global_bound`` proves ``vNMSE >= L - lambda R`` for every
    rate ``R``; the floor is the largest of these lines (valid at any rate, tight at the
    tables' own rates). Returns ``(floor, [(rate, value), ...])``; the floor is None when
    no shipped proof can be read.
    """
    from quicdesign.errors import TableError
    from quicdesign.table import load_entropy_table

    lines = []
    for rate in (1, 2, 3, 4):
        try:
            section = load_entropy_table(rate).manifest.get("global_bound") or {}
        except TableError:
            continue
        if {"value", "lambda", "rate_bits"} <= set(section):
            lines.append((section["rate_bits"], section["value"], section["lambda"]))
    if not lines:
        return None, []
    bits = np.asarray(bits, dtype=float)
    floor = np.max([value + slope * (rate - bits) for rate, value, slope in lines], axis=0)
    return floor, [(rate, value) for rate, value, _ in lines]


def plot_near_bound(rows, path=None):
    """vNMSE of the near-bound unbiased schemes against measured bits, with error bars.

    One panel per family; the weak baselines are left out so the differences between
    QUIC-FL, its entropy-coded variant, the dithered lattices and EDEN are visible. Error
    bars are one standard error over the trials; the dashed line is the bound
    ``1/(4^b - 1)`` at the measured bits; black bars mark the certified floor of scalar
    entropy-coded schemes at its proofs' rates (:func:`certified_scalar_floor`), which
    only vector schemes may pass. Returns None when no near-bound scheme was run.
    """
    rows = [r for r in rows if r["compressor"].split(":")[0].strip() in NEAR_BOUND]
    if not rows:
        return None
    rows = [r for r in rows if r["clients"] == min(r["clients"] for r in rows)]
    families = list(dict.fromkeys(r["family"] for r in rows))
    figure = _figure(figsize=(4.2 * len(families) + 1.8, 4.2), layout="constrained")
    axes = figure.subplots(1, len(families), squeeze=False)[0]
    for ax, family in zip(axes, families, strict=True):
        mine = [r for r in rows if r["family"] == family]
        for label in dict.fromkeys(r["compressor"] for r in mine):
            points = sorted(
                (r["bits_per_coordinate"], r["vnmse"], r["vnmse_se"] or 0.0)
                for r in mine
                if r["compressor"] == label
            )
            bits, vnmse, error = zip(*points, strict=True)
            ax.errorbar(bits, vnmse, yerr=error, fmt="o-", ms=4, capsize=3, label=label)
        grid = np.linspace(
            min(r["bits_per_coordinate"] for r in mine),
            max(r["bits_per_coordinate"] for r in mine),
            200,
        )
        ax.plot(grid, _bound(grid), "k--", lw=1, label="bound 1/(4^b - 1)")
        # the proofs are tight at their own rates; between them the envelope of the
        # proofs' lines is valid but loose, so only the proved points are drawn
        _, anchors = certified_scalar_floor(grid)
        if anchors:
            ax.plot(
                *zip(*anchors, strict=True),
                "k_",
                ms=14,
                mew=2,
                zorder=5,
                label="certified scalar floor",
            )
        ax.set(
            yscale="log",
            title=family,
            xlabel="measured bits per coordinate",
            ylabel="vNMSE of one client",
        )
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, fontsize=8, loc="outside right center")
    sample = rows[0]
    figure.suptitle(
        f"near-bound unbiased schemes: d = {sample['dim']}, one client, {sample['trials']} "
        "trials\nerror bars one standard error; dashed: the bound at the measured bits",
        fontsize=9,
    )
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_server_time(rows, path=None, family=None):
    """Server aggregation time against ``n`` (log-log), one line per compressor.

    Uses one family (the first by default) and each compressor's highest bit width.
    """
    family = rows[0]["family"] if family is None else family
    rows = [r for r in rows if r["family"] == family]
    from matplotlib.ticker import NullLocator

    figure = _figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    for label in dict.fromkeys(r["compressor"] for r in rows):
        top = max(r["bits"] for r in rows if r["compressor"] == label)
        points = sorted(
            (r["clients"], r["server_ms"])
            for r in rows
            if r["compressor"] == label and r["bits"] == top
        )
        ax.plot(*zip(*points, strict=True), "o-", ms=4, label=f"{label} (b={top})")
    counts = sorted({r["clients"] for r in rows})
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="clients n",
        ylabel="server time per round (ms)",
        title=(
            f"server aggregation time (median of {rows[0]['trials']} trials), "
            f"d = {rows[0]['dim']}, {family}"
        ),
    )
    # label the measured n themselves; log-axis minor labels like "2x10^0" only clutter
    ax.set_xticks(counts, labels=[str(n) for n in counts])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)
    # outside the axes: ten lines leave no corner of the data free
    figure.legend(fontsize=7, loc="outside right upper")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_server_scaling(result, path=None):
    """Server time against ``n`` (linear axes) with the least-squares lines."""
    figure = _figure(figsize=(8.5, 4.5), layout="constrained")
    ax = figure.subplots()
    counts = np.array(result.clients, dtype=float)
    for label, fit in result.fits.items():
        times = [r["server_ms"] for r in result.rows if r["compressor"] == label]
        (line,) = ax.plot(counts, times, "o", label=label)
        if fit["slope_ms_per_client"] is not None:
            ax.plot(
                counts,
                fit["slope_ms_per_client"] * counts + fit["intercept_ms"],
                "-",
                color=line.get_color(),
                lw=1,
                label=f"{label} fit: {fit['slope_ms_per_client']:.3g} ms/client",
            )
    ax.set(
        xlabel="clients n",
        ylabel="server time per round (ms)",
        title=f"server time, d = {result.dim}, b = {result.bits}, "
        f"median of {result.repeats} timed run{'s' if result.repeats > 1 else ''}",
    )
    ax.grid(True, alpha=0.3)
    figure.legend(fontsize=8, loc="outside right upper")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure
