"""Markdown tables and CSV files of the DME benchmark results."""

from __future__ import annotations

import csv
from pathlib import Path


def _cell(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _markdown(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def sweep_markdown(rows, clients=None):
    """Markdown table of the sweep at ``clients`` (default: the largest ``n`` of the rows)."""
    if not rows:
        return "(no rows)"
    clients = max(r["clients"] for r in rows) if clients is None else clients
    header = [
        "compressor",
        "params",
        "family",
        "bits/coord",
        "vNMSE",
        "± se",
        "design vNMSE",
        f"NMSE (n={clients})",
        "encode ms",
        f"server ms (n={clients})",
    ]
    body = [
        [
            r["compressor"],
            r["params"],
            r["family"],
            f"{r['bits_per_coordinate']:.4f}",
            _cell(r["vnmse"]),
            _cell(r["vnmse_se"], 2),
            _cell(r["design_vnmse"]),
            _cell(r["nmse"]),
            f"{r['encode_ms']:.3g}",
            f"{r['server_ms']:.3g}",
        ]
        for r in rows
        if r["clients"] == clients
    ]
    return _markdown(header, body)


def server_scaling_markdown(result):
    """Markdown table of server time per ``n`` and the fit lines of :class:`ServerScaling`."""
    labels = list(result.fits)
    by_key = {(r["compressor"], r["clients"]): r["server_ms"] for r in result.rows}
    header = ["n"] + [f"{label} ms" for label in labels]
    body = [[str(n)] + [f"{by_key[(label, n)]:.4g}" for label in labels] for n in result.clients]
    lines = [_markdown(header, body), ""]
    for label, fit in result.fits.items():
        if fit["slope_ms_per_client"] is not None:
            lines.append(
                f"- {label}: {fit['slope_ms_per_client']:.4g} ms per client + "
                f"{fit['intercept_ms']:.4g} ms (least squares, R^2 = {_cell(fit['r2'])})"
            )
    if result.ratio is not None:
        lines.append(
            f"- n = {result.clients[-1]}, d = {result.dim}, b = {result.bits}: "
            f"EDEN / QUIC-FL server time = {result.ratio:.3g}"
        )
    return "\n".join(lines)


def cossgd_markdown(rows):
    """Markdown pivot of :func:`run_cossgd_comparison` rows: NMSE per quantizer column."""
    quantizers = list(dict.fromkeys(r["quantizer"] for r in rows))
    cells = {(r["family"], r["dim"], r["bits"], r["quantizer"]): r["nmse"] for r in rows}
    keys = list(dict.fromkeys((r["family"], r["dim"], r["bits"]) for r in rows))
    header = ["family", "d", "b"] + quantizers
    body = [
        [family, str(dim), str(bits)] + [_cell(cells[(family, dim, bits, q)]) for q in quantizers]
        for family, dim, bits in keys
    ]
    return _markdown(header, body)


def write_csv(rows, path):
    """Write dict rows to ``path`` as CSV (None becomes an empty cell)."""
    path = Path(path)
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path
