"""The one training loop of the simulators: rounds, records, progress and callbacks.

Every algorithm is a :class:`RoundStep`: an object holding its state (models, memories,
random streams, a :class:`BitCounter`) that advances by one round when called. The loop
around it is the same for all of them and lives here once: record the initial model,
run the rounds, hand each round's report to the user's callback, record the metrics every
``record_every`` rounds and after the last one, and show progress.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from quicdesign._progress import progress as reporter
from quicdesign._validate import check_int

from .history import RunHistory

__all__ = ["RoundStep", "train"]


class RoundStep(ABC):
    """One algorithm's state and its round, driven by :func:`train`.

    Attributes
    ----------
    label : str
        Run name.
    config : dict
        The run's parameters (plain values, for CSV output).
    counter : BitCounter
        Counts the bits the rounds send.
    """

    label: str
    config: dict
    counter: object

    @abstractmethod
    def model(self):
        """The model whose metrics are recorded (after the rounds run so far)."""

    @abstractmethod
    def step(self, round_index) -> tuple:
        """Run round ``round_index`` (from 0); return the callback's arguments after it."""

    def extras(self) -> dict:
        """Algorithm-specific results stored in ``RunHistory.extras`` after the run."""
        return {"model": self.model()}


def train(problem, algorithm, *, rounds, record_every=1, callback=None, progress=None):
    """Run ``rounds`` rounds of an algorithm and record the metrics of its model.

    Parameters
    ----------
    problem : Problem
        Supplies ``metrics(model)``.
    algorithm : RoundStep
        State and round of the algorithm.
    rounds : int
        Number of rounds.
    record_every : int
        Record metrics every this many rounds (and after the last one).
    callback : callable, optional
        ``callback(round_index, *algorithm.step(round_index))`` after every round.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per round
        elsewhere.

    Returns
    -------
    RunHistory
        Metrics at round 0, every ``record_every`` rounds and after the last one; the
        bits counted by then; ``extras`` from ``algorithm.extras()``.
    """
    rounds = check_int(rounds, "rounds", 0)
    record_every = check_int(record_every, "record_every", 1)
    history = RunHistory(algorithm.label, algorithm.config, algorithm.counter)
    history.record(0, problem.metrics(algorithm.model()))
    bar = reporter(rounds, history.label, progress, unit="round")
    for t in range(rounds):
        report = algorithm.step(t)
        if callback is not None:
            callback(t, *report)
        if (t + 1) % record_every == 0 or t + 1 == rounds:
            history.record(t + 1, problem.metrics(algorithm.model()))
        bar.update()
    bar.close()
    history.extras.update(algorithm.extras())
    return history


def run_steps(
    step_class, problem, *, rounds, record_every=1, callback=None, progress=None, **options
):
    """Build ``step_class(problem, **options)`` and :func:`train` it (the runners' tail).

    Returns
    -------
    RunHistory
        What :func:`train` returns.
    """
    algorithm = step_class(problem, **options)
    return train(
        problem,
        algorithm,
        rounds=rounds,
        record_every=record_every,
        callback=callback,
        progress=progress,
    )
