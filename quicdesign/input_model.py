"""What input a table assumes: the value law and how inputs are normalized first.

A table is optimal for one law of the scaled values ``z`` it quantizes. The runtime has
two ways to produce ``z`` (``docs/wire-format.md``):

``"rotated"``
    randomized Hadamard transform, then each chunk scaled to unit RMS
    (:class:`quicdesign.QuicFLEncoder`). Whatever the input, ``z`` is then close to N(0, 1), so
    a rotated table must be designed for the standard normal.
``"direct"``
    no rotation; each chunk scaled to unit RMS (:class:`quicdesign.DirectEncoder`).
    ``z`` keeps the input's law, rescaled to unit variance, so a direct table is designed
    for that law (``solvers.design(..., input_model="direct")``).

The manifest records ``parameters.input_model = {"normalization", "scale", "law"}``.
Tables without it (every table written before it existed, the shipped ones included)
are ``rotated`` tables for the law in ``parameters.distribution`` (standard normal).
"""

from __future__ import annotations

from .errors import ParameterError, TableError

__all__ = ["ROTATED", "DIRECT", "NORMAL_LAW", "input_model_of", "check_input_model"]

ROTATED = "rotated"
DIRECT = "direct"
NORMALIZATIONS = (ROTATED, DIRECT)
#: How a chunk is scaled before the table sees it (the only scale so far).
CHUNK_RMS = "chunk-rms"
NORMAL_LAW = {"kind": "standard_normal"}
#: Laws a rotated table may be designed for: the normal, or the exact law of a rotated
#: chunk (``solvers.design(..., input_model="rotated:N")``).
ROTATED_LAWS = ("standard_normal", "rotated_chunk")


def input_model_of(manifest: dict) -> dict:
    """The input model recorded in a manifest (defaults for tables that predate it)."""
    params = manifest.get("parameters", {}) if isinstance(manifest, dict) else {}
    recorded = params.get("input_model")
    if recorded is None:
        law = params.get("distribution", NORMAL_LAW)
        return {"normalization": ROTATED, "scale": CHUNK_RMS, "law": law}
    if not isinstance(recorded, dict) or recorded.get("normalization") not in NORMALIZATIONS:
        raise TableError(
            f"parameters.input_model must name a normalization in {NORMALIZATIONS}, "
            f"got {recorded!r}"
        )
    if recorded.get("scale", CHUNK_RMS) != CHUNK_RMS:
        raise TableError(f"unsupported input scale {recorded.get('scale')!r}")
    return {"normalization": recorded["normalization"], "scale": CHUNK_RMS, **recorded}


def check_input_model(table, normalization: str, force: bool) -> None:
    """Refuse a table designed for another input than this runtime path produces.

    Parameters
    ----------
    table : quicdesign.Table
    normalization : {"rotated", "direct"}
        What the caller's runtime path does.
    force : bool
        Use the table anyway (for experiments that measure the mismatch).

    Raises
    ------
    ParameterError
        If the table's normalization differs, or a rotated path gets a table designed for
        a law other than the standard normal (rotation makes inputs nearly normal).
    """
    if force:
        return
    model = table.input_model
    if model["normalization"] != normalization:
        raise ParameterError(
            f"{table.name} was designed for {model['normalization']} inputs but this is the "
            f"{normalization} path; use the matching encoder or pass force=True"
        )
    law = model.get("law", NORMAL_LAW)
    if normalization == ROTATED and law.get("kind") not in ROTATED_LAWS:
        raise ParameterError(
            f"{table.name} was designed for the law {law} but rotated inputs are close to "
            "N(0, 1): design it with input_model='direct' and use DirectEncoder, or pass "
            "force=True"
        )
