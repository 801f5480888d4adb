"""Configuration of the DME benchmark: defaults, compressor specs, input families and
the measurement helpers every part of it shares."""

from __future__ import annotations

import inspect
import math
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np

from quicdesign._validate import check_int
from quicdesign.compressors import COMPRESSORS, make_compressor
from quicdesign.errors import ParameterError, QuicDesignError

FAMILIES = ("lognormal", "normal", "student-t", "gradients")

DEFAULT_COMPRESSORS = (
    "quicfl",
    "quicfl-ec",
    "lattice-e8",
    "eden",
    "hadamard",
    "qsgd",
    "kashin",
    "countsketch",
    "cossgd",
    "sign",
    "randk",
)

# Names used in the paper notes and issue that differ from the registry's short names.
_ALIASES = {"hadamard-sq": "hadamard", "kashin-sq": "kashin", "count-sketch": "countsketch"}

DEFAULTS = {"dim": 2**16, "bits": (1, 2, 3, 4), "clients": (1, 4, 16), "trials": 3}

SMALL_DEFAULTS = {"dim": 2**10, "bits": (1, 2, 3, 4), "clients": (1, 4, 8), "trials": 2}

SCALING = {"dim": 2**18, "bits": 4, "clients": (1, 2, 4, 8, 16, 32, 64), "repeats": 5}

SMALL_SCALING = {"dim": 2**12, "bits": 4, "clients": (1, 2, 4, 8), "repeats": 1}

COSSGD_TENSOR_DIM = 512

SMALL_COSSGD_TENSOR_DIM = 64

COSSGD_FAMILIES = ("normal", "student-t")

MAX_BITS = 8  # the shipped QUIC-FL tables and EDEN's Lloyd-Max levels stop here

MAX_DIM = 2**28


def check_int_list(values, name, high=None):
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    checked = sorted({check_int(v, name, 1, high) for v in values})
    if not checked:
        raise ParameterError(f"{name} needs at least one value")
    return tuple(checked)


def check_families(families):
    families = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ParameterError(
            f"unknown input family {unknown[0] if unknown else '(none)'!r}; "
            f"choose from {', '.join(FAMILIES)}"
        )
    return tuple(dict.fromkeys(families))


def runnable_families(families):
    """``families`` without those whose optional module is missing (each skip noted)."""
    runnable = []
    for family in families:
        reason = _unavailable(family, _FAMILY_NEEDS)
        if reason is None:
            runnable.append(family)
        else:
            print(f"bench dme: skipping family {family}: {reason}", file=sys.stderr, flush=True)
    if not runnable:
        raise ParameterError("none of the requested input families can run here (notes above)")
    return tuple(runnable)


def resolve_default(value, key, preset):
    return preset[key] if value is None else value


def _parse_value(text):
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_compressor_spec(spec):
    """Split ``"name"`` or ``"name:key=value,key=value"`` into a registry name and overrides.

    Values are read as int, float, bool or ``none`` when they look like one, else kept as
    strings; e.g. ``"kashin:variant=tf"`` or ``"cossgd:clip=0.01"``.
    """
    name, _, options = str(spec).partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in COMPRESSORS:
        raise ParameterError(
            f"unknown compressor {name!r}; available: {', '.join(sorted(COMPRESSORS))}"
        )
    overrides = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ParameterError(f"compressor option {item!r} in {spec!r} is not key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return name, overrides


def bits_parameters(name, bits, dim, overrides=None):
    """Constructor parameters that give compressor ``name`` about ``bits`` bits per coordinate.

    QSGD uses ``s = 2**(bits-1) - 1`` levels (``ceil(log2(2s+1)) = bits`` bits on the wire;
    ``bits = 1`` falls back to ``s = 1``, which costs 2 bits). Count-Sketch uses
    ``ceil(bits d / (32 rows))`` float32 buckets per row and rand-k keeps ``bits / 32`` of
    the coordinates, so both send about ``bits`` bits per coordinate. Kashin quantizes a
    frame of twice the dimension, so it gets ``max(1, bits // 2)`` bits per frame
    coefficient (``bits = 1`` costs 2 bits per coordinate). Sign and DRIVE are
    1-bit schemes and ignore ``bits``. Other compressors get ``bits`` when their
    constructor takes it. The measured bits per coordinate are always reported.
    """
    overrides = overrides or {}
    if name == "qsgd":
        return {"levels": max(1, 2 ** (bits - 1) - 1)}
    if name == "countsketch":
        rows = overrides.get("rows", 3)
        rows = rows if isinstance(rows, int) and rows > 0 else 3
        return {"columns": max(1, math.ceil(bits * dim / (32 * rows)))}
    if name == "randk":
        if "k" in overrides or "fraction" in overrides:
            return {}
        return {"fraction": min(1.0, bits / 32)}
    if name == "kashin":
        return {"bits": max(1, bits // 2)}
    if name in ("sign", "drive"):
        return {}
    try:
        accepts_bits = "bits" in inspect.signature(COMPRESSORS[name]).parameters
    except (TypeError, ValueError):  # a constructor without an inspectable signature
        accepts_bits = False
    return {"bits": bits} if accepts_bits else {}


@dataclass
class Config:
    """One compressor configuration of a run."""

    label: str
    name: str
    bits: int
    params: dict
    compressor: object
    seed_key: int
    design_vnmse: float | None = None

    @property
    def params_text(self):
        return ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


@dataclass
class Stats:
    """Measurements of one configuration on one family, accumulated over trials."""

    vnmse: list = field(default_factory=list)
    payload_bytes: list = field(default_factory=list)
    encode_seconds: list = field(default_factory=list)
    nmse: dict = field(default_factory=dict)
    server_seconds: dict = field(default_factory=dict)


def _design_vnmse(compressor):
    """The vNMSE the compressor is designed for (Gaussian model), when it declares one."""
    resolve_table = getattr(compressor, "resolved_table", None)
    if callable(resolve_table):
        return resolve_table().vnmse
    value = getattr(compressor, "expected_vnmse", None)
    return float(value) if isinstance(value, (int, float)) else None


#: Compressors that need an optional module: name -> (module, extra).
_OPTIONAL_NEEDS = {
    "quicfl-ec": ("constriction", "entropy"),
}
#: Input families that need an optional module: (module, extra installing it).
_FAMILY_NEEDS = {"gradients": ("sklearn", "bench")}


def _unavailable(name, needs=None) -> str | None:
    """Why compressor (or family) ``name`` cannot run here (a missing module), or None."""
    import importlib.util

    module, extra = (_OPTIONAL_NEEDS if needs is None else needs).get(name, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"needs {module} (pip install 'quicdesign[{extra}]')"


def build_configs(specs, bits_list, dim):
    configs, seen = [], set()
    for spec in specs:
        name, overrides = parse_compressor_spec(spec)
        label = str(spec).strip()
        reason = _unavailable(name)
        if reason is not None:
            print(f"bench dme: skipping {label}: {reason}", file=sys.stderr, flush=True)
            continue
        for bits in bits_list:
            params = {**bits_parameters(name, bits, dim, overrides), **overrides}
            key = (name, tuple(sorted((k, repr(v)) for k, v in params.items())))
            if key in seen:  # e.g. sign at every b, or QSGD's s = 1 at b = 1 and 2
                continue
            seen.add(key)
            nominal = params["bits"] if isinstance(params.get("bits"), int) else bits
            if name == "kashin":  # bits per frame coefficient; the frame is 2d long
                nominal *= 2
            try:
                compressor = make_compressor(name, **params)
            except TypeError as exc:
                raise ParameterError(f"compressor {label!r}: {exc}") from None
            seed_key = zlib.crc32(f"{name}|{key[1]}".encode())
            configs.append(Config(label, name, nominal, params, compressor, seed_key))
    if not configs:
        raise ParameterError("none of the requested compressors can run here (notes above)")
    return configs


def warm_up(config, dim, seed):
    """Encode and decode once: validates the parameters and fills one-time caches."""
    rng = np.random.default_rng([seed, 0x5741524D])
    vector = rng.standard_normal(dim).astype(np.float32)
    try:
        payload = config.compressor.encode(vector, round_seed=0, client_id=0, rng=rng)
        config.compressor.decode(payload, dim=dim, round_seed=0)
        config.design_vnmse = _design_vnmse(config.compressor)
    except QuicDesignError as exc:
        raise ParameterError(f"compressor {config.label!r} ({config.params_text}): {exc}") from None


def vector_source(family, dim, seed):
    """A function ``rng -> float32 vector of length dim`` drawing from ``family``."""
    if family == "lognormal":
        return lambda rng: rng.lognormal(0.0, 1.0, dim).astype(np.float32)
    if family == "normal":
        return lambda rng: rng.standard_normal(dim, dtype=np.float32)
    if family == "student-t":
        return lambda rng: rng.standard_t(3, dim).astype(np.float32)
    from ._gradients import digits_gradients

    return digits_gradients(dim, seed).sample


def derived_seed(*keys):
    """A 64-bit round seed from integer keys (the same for every compressor)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def relative_error(estimate, truth, denominator):
    difference = estimate - truth
    return float(np.dot(difference, difference) / denominator)


def aggregate_payloads(compressor, dim, round_seed, payloads):
    """Server work for one round: a fresh aggregator, every payload added, the mean."""
    aggregator = compressor.aggregator(dim, round_seed)
    for payload in payloads:
        aggregator.add(payload)
    return aggregator.result()
