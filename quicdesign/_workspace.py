"""Work arrays reused across an encoder's calls, one set per thread.

A 2**20-long encode needs several megabytes of temporaries; freshly allocated they are
fresh pages every call (the allocator returns large blocks to the system), and faulting
them in costs about as much as the arithmetic on them. An encoder keeps one
:class:`Workspace` and hands its arrays to the stages; nothing that outlives a call may
be a view of them (the next call on the same thread overwrites them).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["Workspace", "WORKSPACE_KEY"]

#: Key of the encoder's workspace in a stage state's ``cache``.
WORKSPACE_KEY = "workspace"


class Workspace(threading.local):
    """Named work arrays, one set per thread, grown on demand and never shrunk."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def __reduce__(self):
        # work arrays are scratch, not state: a copy or an unpickled encoder starts empty
        return (type(self), ())

    def array(self, name: str, size: int, dtype) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` (contents undefined), the same
        memory for the same ``name`` on every call from this thread."""
        dtype = np.dtype(dtype)
        held = self._arrays.get(name)
        if held is None or held.dtype != dtype or held.size < size:
            held = np.empty(size, dtype=dtype)
            self._arrays[name] = held
        return held[:size]


def work_array(workspace: Workspace | None, name: str, size: int, dtype) -> np.ndarray:
    """``workspace.array(name, size, dtype)``, or a fresh array without a workspace."""
    if workspace is None:
        return np.empty(size, dtype=dtype)
    return workspace.array(name, size, dtype)
