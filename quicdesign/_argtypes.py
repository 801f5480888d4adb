"""argparse value types shared by every ``quicdesign`` command.

Each type checks its documented bounds while parsing, so a bad value becomes one
``quicdesign: error: ...`` line with exit status 2 before any work starts; integer lists
(``1-4,8``) are bounded before they are expanded, so ``1-1000000000`` costs nothing.
"""

from __future__ import annotations

import argparse
import math

__all__ = [
    "add_compressor_options",
    "int_list",
    "bounded_int",
    "real",
    "probability",
    "add_progress_option",
    "add_int_list_option",
    "MAX_LIST_LENGTH",
]

#: Longest list ``int_list`` expands (the sum of all its ranges).
MAX_LIST_LENGTH = 10_000


def _parse_int(text: str, what: str, example: str = "an integer") -> int:
    text = text.strip()
    # Reject before int() so a 100000-digit string cannot cost quadratic time.
    if not text or len(text) > 20 or not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected {example} for {what}, got {text!r}")
    return int(text)


def _in_range(value: int, low: int, high: int, what: str) -> int:
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what} must be in {low}..{high}, got {value}")
    return value


def int_list(what: str, low: int, high: int, max_length: int = MAX_LIST_LENGTH):
    """Type for lists like ``1-4``, ``1,2,8`` or ``0-2,7``: ascending ranges, bounded."""

    def parse(text: str) -> list[int]:
        values: list[int] = []
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            example = "integers like 1-4 or 1,2,8"
            start = _in_range(_parse_int(first, what, example), low, high, what)
            stop = _in_range(_parse_int(last, what, example), low, high, what) if dash else start
            if stop < start:
                raise argparse.ArgumentTypeError(
                    f"range {part.strip()!r} for {what} is empty (write low-high)"
                )
            if len(values) + stop - start + 1 > max_length:
                raise argparse.ArgumentTypeError(
                    f"{what} lists more than {max_length} values ({text!r})"
                )
            values.extend(range(start, stop + 1))
        return values

    return parse


class _JoinedLists(argparse.Action):
    """Join the parts of ``--bits 1 2 8`` (each part may itself be ``1-4`` or ``1,2``)."""

    def __init__(self, *args, max_length=MAX_LIST_LENGTH, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_length = max_length

    def __call__(self, parser, namespace, values, option_string=None):
        joined = [value for part in values for value in part]
        if len(joined) > self.max_length:
            parser.error(f"{option_string} lists more than {self.max_length} values")
        setattr(namespace, self.dest, joined)


def add_int_list_option(
    parser, flag, what, low, high, help, shown, *, default=None, max_length=MAX_LIST_LENGTH
):
    """Add an integer-list option; ``1-4``, ``1,2,8`` and ``1 2 8`` all work, everywhere.

    ``help`` says what the values are, ``shown`` what the default means (``"1-4"``).
    """
    parser.add_argument(
        flag,
        type=int_list(what, low, high, max_length),
        nargs="+",
        action=_JoinedLists,
        max_length=max_length,
        default=default,
        metavar="N",
        help=f"{help}, e.g. 1-4, 1,2,8 or 1 2 8 (default: {shown})",
    )


def bounded_int(what: str, low: int, high: int):
    """Type for one integer in ``[low, high]``."""

    def parse(text: str) -> int:
        return _in_range(_parse_int(text, what), low, high, what)

    return parse


def real(what: str, low: float = -math.inf, high: float = math.inf):
    """Type for one finite number in ``[low, high]`` (NaN and infinities refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            message = f"expected a number for {what}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{what} must be a finite number in [{low:g}, {high:g}], got {text!r}"
            )
        return value

    return parse


def probability(text: str) -> float:
    """Type for a probability in (0, 1), written ``0.002`` or ``1/512``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a probability like 1/512, got {text!r}"
        ) from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"tail_prob must be in (0, 1), got {text!r}")
    return value


def add_progress_option(parser, unit: str = "step") -> None:
    """Add ``--progress/--no-progress`` (default None: the shared reporter decides)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress: a bar on a terminal, one line per {unit} otherwise (default: on)",
    )


def add_compressor_options(parser) -> None:
    """Add ``--bits`` and ``--compressor`` (the integration demos' choice of scheme)."""
    parser.add_argument(
        "--bits", type=bounded_int("bits", 1, 8), default=4, help="bits per coordinate (default: 4)"
    )
    parser.add_argument(
        "--compressor",
        default="quicfl",
        help="registry name, e.g. quicfl, quicfl-ec, eden (default: quicfl)",
    )
