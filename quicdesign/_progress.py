"""The one progress reporter of every long job (designs, benchmarks, simulations).

On a terminal it is a tqdm bar (when tqdm is installed). Anywhere else (CI logs,
``nohup``, notebooks run by nbconvert) it prints one concise line to stderr per unit of
work -- or, for many small units, about every tenth of the job -- so a long run is never
silent and a static log never holds a frozen bar or a notebook widget.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress"]


class _Silent:
    def update(self, n=1, note=None):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Lines(_Silent):
    """One ``description: done/total unit (note) [elapsed]`` line per reported step."""

    #: With more units than this, print about every tenth of the job instead of each one.
    EVERY_UNIT_UP_TO = 50

    def __init__(self, total, description, unit, stream):
        self.total, self.description, self.unit, self.stream = total, description, unit, stream
        self.done, self.began, self.next_report = 0, time.perf_counter(), 0

    def update(self, n=1, note=None):
        self.done += n
        if self.total and self.total > self.EVERY_UNIT_UP_TO:
            if self.done < self.next_report and self.done < self.total:
                return
            self.next_report = self.done + max(1, self.total // 10)
        total = f"/{self.total}" if self.total else ""
        suffix = f" ({note})" if note else ""
        elapsed = time.perf_counter() - self.began
        # one write per line: a notebook's stream may flush between print's two writes
        self.stream.write(
            f"{self.description}: {self.done}{total} {self.unit}{suffix} [{elapsed:.1f} s]\n"
        )
        self.stream.flush()


class _Bar(_Silent):
    def __init__(self, bar):
        self.bar = bar

    def update(self, n=1, note=None):
        if note:
            self.bar.set_postfix_str(str(note), refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


def progress(total, description, enabled=None, *, unit="step", stream=None):
    """A progress reporter for ``total`` units of work (use as a context manager).

    Parameters
    ----------
    total : int or None
        Number of units (None when unknown).
    description : str
        Short label, e.g. ``"designing"``.
    enabled : bool, optional
        False: silent. True or None: a tqdm bar on a terminal, one line per unit
        otherwise.
    unit : str
        Name of one unit (``"table"``, ``"run"``...).
    stream : file, optional
        Where to report (stderr by default).

    Returns
    -------
    object
        With ``update(n=1, note=None)`` and ``close()``.
    """
    if enabled is False:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            pass
        else:
            bar = tqdm(total=total, desc=description, unit=unit, leave=False, file=stream)
            return _Bar(bar)
    return _Lines(total, description, unit, stream)
