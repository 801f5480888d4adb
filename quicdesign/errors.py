"""Exception types raised by quicdesign.

Every error caused by bad input is also a ``ValueError`` or ``TypeError`` so callers
that catch the builtin types keep working.
"""

__all__ = [
    "QuicDesignError",
    "ParameterError",
    "InputVectorError",
    "InputDTypeError",
    "TableError",
    "TableChecksumError",
    "TableVersionError",
    "TableNotFoundError",
    "PayloadError",
]


class QuicDesignError(Exception):
    """Base class of every exception raised on purpose by quicdesign."""


class ParameterError(QuicDesignError, ValueError):
    """A design or runtime parameter is out of its valid range."""


class InputVectorError(QuicDesignError, ValueError):
    """A vector given to an encoder is empty, non-finite or has a bad shape."""


class InputDTypeError(QuicDesignError, TypeError):
    """A vector given to an encoder has a dtype kind that cannot be encoded."""


class TableError(QuicDesignError, ValueError):
    """A table file or table object is malformed or inconsistent."""


class TableChecksumError(TableError):
    """A table array or manifest does not match its recorded sha256."""


class TableVersionError(TableError):
    """A table was written in a format major version this release cannot read."""


class TableNotFoundError(TableError, LookupError):
    """No shipped or stored table matches the request."""


class PayloadError(QuicDesignError, ValueError):
    """A payload received by a server-side aggregator is malformed or does not belong."""
