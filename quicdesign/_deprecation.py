"""Old names kept for one release, resolved lazily with a ``DeprecationWarning``."""

from __future__ import annotations

import warnings

__all__ = ["renamed_attributes"]


def renamed_attributes(module_name: str, renamed: dict[str, str], namespace: dict):
    """Return a module ``__getattr__`` that maps old names to new ones, with a warning.

    Parameters
    ----------
    module_name : str
        The module's ``__name__`` (used in messages).
    renamed : dict
        Old name -> new name (the new name must be in ``namespace``).
    namespace : dict
        The module's ``globals()``.
    """

    def __getattr__(name):
        new = renamed.get(name)
        if new is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        warnings.warn(
            f"{module_name}.{name} was renamed {new}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return namespace[new]

    return __getattr__
