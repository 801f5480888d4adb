"""The record of one simulated run: metric curves and cumulative wire bits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quicdesign.errors import ParameterError

from .wire import BitCounter

__all__ = ["RunHistory"]


@dataclass
class RunHistory:
    """Metrics of the server model and bits on the wire at recorded rounds.

    Attributes
    ----------
    label : str
        Short run name used in tables and plots.
    config : dict
        The run's parameters (plain values, for CSV output).
    rounds : list of int
        Number of completed rounds at each record (0 is the initial model).
    metrics : dict of str to list of float
        One curve per metric name, aligned with ``rounds``.
    upload_bits, download_bits : list of int
        Cumulative total bits of all clients at each record (envelopes included).
    upload_bits_unframed, download_bits_unframed : list of int
        The same without the envelopes (header-free payload bits).
    counter : BitCounter
        Final per-client counts.
    extras : dict
        Algorithm-specific results (learned weights, final states, ...).
    """

    label: str
    config: dict
    counter: BitCounter
    rounds: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    upload_bits: list = field(default_factory=list)
    download_bits: list = field(default_factory=list)
    upload_bits_unframed: list = field(default_factory=list)
    download_bits_unframed: list = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def record(self, round_index, values):
        """Append the metrics of the model after ``round_index`` rounds."""
        self.rounds.append(int(round_index))
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(float(value))
        self.upload_bits.append(self.counter.total_upload)
        self.download_bits.append(self.counter.total_download)
        self.upload_bits_unframed.append(self.counter.total_upload_unframed)
        self.download_bits_unframed.append(self.counter.total_download_unframed)

    def curve(self, metric) -> np.ndarray:
        """One metric as an array aligned with ``rounds``."""
        if metric not in self.metrics:
            raise ParameterError(
                f"run {self.label!r} has no metric {metric!r}; it has {sorted(self.metrics)}"
            )
        return np.asarray(self.metrics[metric])

    def final(self, metric) -> float:
        """The last recorded value of a metric."""
        return float(self.curve(metric)[-1])

    def tail_mean(self, metric, from_round, *, log10=False) -> float:
        """Mean of a metric over records at rounds ``>= from_round`` (optionally of log10)."""
        values = self.curve(metric)[np.asarray(self.rounds) >= from_round]
        if values.size == 0:
            raise ParameterError(f"no record at or after round {from_round}")
        if log10:
            values = np.log10(np.maximum(values, np.finfo(float).tiny))
        return float(values.mean())

    def rows(self):
        """One dict per record (config, round, bits and metrics) for CSV output."""
        for i, round_index in enumerate(self.rounds):
            row = {
                "label": self.label,
                **self.config,
                "round": round_index,
                "upload_bits": self.upload_bits[i],
                "download_bits": self.download_bits[i],
                "upload_bits_unframed": self.upload_bits_unframed[i],
                "download_bits_unframed": self.download_bits_unframed[i],
            }
            row.update({name: curve[i] for name, curve in self.metrics.items()})
            yield row
