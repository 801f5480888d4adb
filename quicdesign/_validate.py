"""Validation of runtime inputs shared by every encoder and aggregator."""

from __future__ import annotations

import math
import numbers
import operator
import os
from pathlib import Path

import numpy as np

from .errors import InputDTypeError, InputVectorError, ParameterError

__all__ = [
    "MAX_DIM",
    "MIN_WEIGHT",
    "MAX_WEIGHT",
    "check_int",
    "check_positive_float",
    "check_probability",
    "check_tail_prob",
    "as_client_vector",
    "check_client_id",
    "check_dim",
    "check_f32_normal",
    "check_round_seed",
    "check_weight",
    "check_real",
    "writable_dir",
]

MAX_DIM = 2**31 - 1
#: Accepted client weights (see :func:`check_weight`).
MIN_WEIGHT = 2.0**-256
MAX_WEIGHT = 2.0**256
_MAX_CLIENT_ID = 2**32 - 1


def check_int(value, name, low, high=None) -> int:
    """Return ``value`` as an int in ``[low, high]`` (no upper bound when None).

    Raises
    ------
    ParameterError
        For bools (an int subclass, but almost surely a caller bug), non-integers and
        values out of range.
    """
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} must be an integer {bound}, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise ParameterError(
            f"{name} must be an integer {bound}, got {type(value).__name__}"
        ) from None
    if value < low or (high is not None and value > high):
        raise ParameterError(f"{name} must be an integer {bound}, got {value}")
    return value


def check_positive_float(value, name, *, allow_zero=False) -> float:
    """Return ``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``).

    Raises
    ------
    ParameterError
        For non-numbers, bools, non-finite values and values out of range.
    """
    result = check_real(value, name, 0.0)
    if result == 0 and not allow_zero:
        raise ParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return result


def check_probability(value, name, *, allow_zero=False, allow_one=True) -> float:
    """Return ``value`` as a float in ``(0, 1]``; the ends are open or closed as asked.

    Raises
    ------
    ParameterError
        For non-numbers and values outside the interval.
    """
    value = check_positive_float(value, name, allow_zero=allow_zero)
    if value > 1 or (value == 1 and not allow_one):
        bound = "at most 1" if allow_one else "below 1"
        raise ParameterError(f"{name} must be {bound}, got {value}")
    return value


def check_tail_prob(tail_prob, name="tail_prob") -> float:
    """Return a tail probability ``p`` in the open interval ``(0, 1)``."""
    result = check_real(tail_prob, name, 0.0, 1.0)
    if not 0.0 < result < 1.0:
        raise ParameterError(f"{name} must be in (0, 1), got {tail_prob!r}")
    return result


def check_round_seed(round_seed) -> int:
    """Return ``round_seed`` as an int in ``[0, 2**64)`` or raise ``ParameterError``."""
    return check_int(round_seed, "round_seed", 0, 2**64 - 1)


def check_client_id(client_id) -> int:
    """Return ``client_id`` as an int in ``[0, 2**32)`` (it travels as a u32)."""
    return check_int(client_id, "client_id", 0, _MAX_CLIENT_ID)


def check_dim(dim) -> int:
    """Return ``dim`` as an int in ``[1, 2**31 - 1]``."""
    return check_int(dim, "dim", 1, MAX_DIM)


def check_weight(weight) -> float:
    """Return ``weight`` as a float in ``[MIN_WEIGHT, MAX_WEIGHT]`` or raise ``ParameterError``.

    Only real numbers (``int``, ``float``, numpy integers and floats) are accepted: a bool,
    a string or a complex number is a caller bug, not a weight. The range ``[2**-256,
    2**256]`` keeps every weighted running sum exact to float64 rounding: decoded
    contributions stay below ``2**192`` and a round has at most ``2**32`` clients, so the
    totals can neither overflow nor underflow into subnormals (``5e-324`` would).
    """
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real):
        raise ParameterError(f"weight must be a real number, got {type(weight).__name__}")
    value = float(weight)
    if not (math.isfinite(value) and MIN_WEIGHT <= value <= MAX_WEIGHT):
        raise ParameterError(
            f"weight must be finite and in [2**-256, 2**256] (positive), got {weight!r}"
        )
    return value


def check_f32_normal(values, what, exponents=0) -> None:
    """Refuse nonzero side information too small for float32's normal range (``2**-126``).

    Multiplicative side information (norms, scales) travels as float32; below that range
    float32 keeps fewer than 24 bits, so the decoded vector's error would grow without
    bound (or it would round to 0 and decode a nonzero vector as zeros). The side values
    are ``values * 2**exponents``; passing the exponents separately keeps a value that
    would underflow even float64 from being mistaken for an exact 0.

    Raises
    ------
    InputVectorError
        Naming ``what`` and the value's binary exponent.
    """
    mantissas, binary = np.frexp(np.asarray(values, dtype=np.float64))
    binary = binary + np.asarray(exponents)
    small = (mantissas != 0) & (binary < -125)
    if np.any(small):
        raise InputVectorError(
            f"vector is too small to encode: its {what} is about 2**{int(binary[small].min())}, "
            "below float32's normal range (2**-126); scale the vector up first"
        )


def as_client_vector(vector, *, check_finite=True) -> np.ndarray:
    """Validate a client vector and return it flattened (C order), never modified.

    Parameters
    ----------
    vector : array_like
        float16, float32 or float64 values of any shape, contiguous or not.
    check_finite : bool
        False when the caller's first pass over the values refuses non-finite ones
        itself (:func:`check_finite_vector`), saving a pass.

    Returns
    -------
    numpy.ndarray
        1-D view when possible, otherwise a copy; callers must not write to it.

    Raises
    ------
    InputDTypeError
        If the dtype is not float16/32/64 (integers are refused rather than guessed at),
        or ``vector`` is a masked array.
    InputVectorError
        If the vector is empty, too long, or holds a non-finite value (the message names
        the first bad index).
    """
    if isinstance(vector, np.ma.MaskedArray):
        # np.asarray would silently send the values the mask hides
        raise InputDTypeError(
            "masked arrays are refused: fill them explicitly, e.g. vector.filled(0.0)"
        )
    array = np.asarray(vector)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
        raise InputDTypeError(
            f"vector must be float16, float32 or float64, got {array.dtype}; cast it explicitly"
        )
    if array.size == 0:
        raise InputVectorError("vector is empty")
    if array.size > MAX_DIM:
        raise InputVectorError(f"vector of {array.size} entries exceeds the 2**31 - 1 limit")
    flat = array.reshape(-1)
    if check_finite:
        check_finite_vector(flat)
    return flat


def check_finite_vector(flat) -> None:
    """Refuse a flat vector holding NaN or an infinity, naming the first bad index.

    Raises
    ------
    InputVectorError
        If a value is not finite.
    """
    finite = np.isfinite(flat)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise InputVectorError(f"vector has a non-finite value {flat[bad]} at index {bad}")


def writable_dir(path) -> Path:
    """Create ``path`` if needed and prove it is writable, before any long work starts.

    Raises
    ------
    ParameterError
        If the folder cannot be created or written.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


def check_real(value, name, low=-math.inf, high=math.inf) -> float:
    """Return ``value`` as a finite float in ``[low, high]`` (bools and strings refused).

    Raises
    ------
    ParameterError
        For non-numbers, NaN, infinities and values out of range.
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ParameterError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(f"{name} must be a real number, got {value!r}") from None
    if not (math.isfinite(result) and low <= result <= high):
        raise ParameterError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return result


def check_minmax_magnitude(values, exponents=0) -> None:
    """Refuse a nonzero vector whose largest magnitude is below float32's normal range.

    The min-max bounds travel as float32; below ``2**-126`` they keep too few bits (or
    round to 0), so the decoded values would be float32 grid noise many orders of
    magnitude larger than the vector. ``values`` (rows) are scaled by
    ``2**exponents`` (one per row), checked before that scaling can underflow float64.
    """
    peaks = np.max(np.abs(np.atleast_2d(values)), axis=-1)
    mantissas, binary = np.frexp(peaks.astype(np.float64))
    binary = binary + np.broadcast_to(exponents, binary.shape)
    nonzero = mantissas != 0
    if np.any(nonzero):
        largest = int(np.argmax(np.where(nonzero, binary, np.iinfo(binary.dtype).min)))
        check_f32_normal(mantissas[largest], "largest value", binary[largest])
