"""The conformance kit tested the way scikit-learn tests ``check_estimator``.

Each deliberately broken compressor below has exactly one defect; the kit must reject it
with an ``AssertionError`` naming the check that covers the defect, both when that check
runs alone and when the whole kit runs (so every earlier check lets the defect through
and the message points at the right place). The unbroken base passes every check.
"""

import numpy as np
import pytest

from quicdesign.compressors import Compressor, CompressorProperties, HadamardSQ, StochasticQuantizer
from quicdesign.compressors._common import DirectSumAggregator
from quicdesign.compressors.sq import MinMaxQuantize
from quicdesign.errors import PayloadError
from quicdesign.fl import RawFloats
from quicdesign.stages import Pipeline, RandomizedHadamard
from quicdesign.testing import (
    CHECKS,
    check_compressor,
    iter_checks,
    parametrize_checks,
    parametrize_compressors,
    register_check,
)

# 8-bit min-max SQ: unbiased, validated, cheap, and noisy enough that a 1 % bias in
# d = 1000 is about 100 standard errors away, far from both 5 (the kit's threshold) and
# the 500 a too-lenient kit might use.
BASE_BITS = 8


class Base(StochasticQuantizer):
    def __init__(self):
        super().__init__(bits=BASE_BITS)


class BiasedByOnePercent(Base):
    """Every decoded vector is 1 % too long."""

    def _decode_body(self, reader, header, round_seed):
        return 1.01 * super()._decode_body(reader, header, round_seed)


class _CountMeanAggregator(DirectSumAggregator):
    def weighted_mean(self):
        if not self._clients:
            return super().weighted_mean()
        return self._sum / len(self._clients)  # divides the weighted sum by the count


class WrongScale(Base):
    """``result()`` divides the weighted sum by the number of clients, not their weight."""

    def _make_aggregator(self, dim, round_seed):
        return _CountMeanAggregator(self, dim, round_seed, (dim,))


class _DuplicateBlindAggregator(DirectSumAggregator):
    def _check_new_client(self, client_id):
        pass


class AcceptsDuplicates(Base):
    """The aggregator never looks at client ids."""

    def _make_aggregator(self, dim, round_seed):
        return _DuplicateBlindAggregator(self, dim, round_seed, (dim,))


class MutatesInput(Base):
    """Encoding clips the caller's array in place to the float32 grid."""

    def encode(self, vector, **kwargs):
        payload = super().encode(vector, **kwargs)
        if isinstance(vector, np.ndarray) and vector.flags.writeable and vector.size:
            vector[0] = np.nextafter(vector[0], np.inf)
        return payload


class _SumTwiceAggregator(DirectSumAggregator):
    def merge(self, other):
        super().merge(other)
        self._sum += other._sum  # the shard's sum is counted twice


class MergeNotSequential(Base):
    """Merging two shards differs from adding all payloads to one aggregator."""

    def _make_aggregator(self, dim, round_seed):
        return _SumTwiceAggregator(self, dim, round_seed, (dim,))


class NondeterministicBytes(Base):
    """Ignores the caller's rng: same seeds, different bytes."""

    def encode(self, vector, *, round_seed, client_id, rng=None):
        return super().encode(vector, round_seed=round_seed, client_id=client_id, rng=None)


class NondeterministicDecode(Base):
    """Decoding the same payload twice gives different vectors (fresh dither at the server)."""

    def _decode_body(self, reader, header, round_seed):
        decoded = super()._decode_body(reader, header, round_seed)
        return decoded + 1e-6 * np.random.default_rng().standard_normal(decoded.shape)


class _LeakyAggregator(DirectSumAggregator):
    def add(self, payload, weight=1.0):
        try:
            super().add(payload, weight)
        except PayloadError:
            self._total_weight += weight  # a refused payload still counts its weight
            raise


class StateChangedAfterRefusal(Base):
    """A refused payload leaves its weight behind in the aggregator."""

    def _make_aggregator(self, dim, round_seed):
        return _LeakyAggregator(self, dim, round_seed, (dim,))


class AcceptsIntegers(Base):
    """Silently converts integer vectors instead of refusing them."""

    def encode(self, vector, **kwargs):
        if np.issubdtype(np.asarray(vector).dtype, np.integer):
            vector = np.asarray(vector, dtype=np.float64)
        return super().encode(vector, **kwargs)


class HeaderlessAccounting(Base):
    """Reports bits per coordinate without the payload header."""

    def bits_per_coordinate(self, payload, dim):
        return 8.0 * (len(payload) - 21) / dim


class _ZeroWhenEmptyAggregator(DirectSumAggregator):
    def result(self):
        if not self._clients:
            return np.zeros(self.dim)
        return super().result()


class EmptyResultIsZero(Base):
    """``result()`` of an empty aggregator returns zeros instead of raising."""

    def _make_aggregator(self, dim, round_seed):
        return _ZeroWhenEmptyAggregator(self, dim, round_seed, (dim,))


class CountsItsUse(Base):
    """Encoding writes a public attribute, so the repr changes after first use."""

    def encode(self, vector, **kwargs):
        self.encoded = getattr(self, "encoded", 0) + 1
        return super().encode(vector, **kwargs)


class Unpicklable(Base):
    """Holds a lambda, so it cannot travel to a worker process."""

    def __init__(self):
        super().__init__()
        self._hook = lambda: None


class _KeepsEveryClientAggregator(DirectSumAggregator):
    def add(self, payload, weight=1.0):
        super().add(payload, weight)
        self._kept = [*getattr(self, "_kept", []), self._sum.copy()]


class ClaimsToSumButKeepsClients(Base):
    """Declares sums_before_decoding but keeps a vector per client."""

    properties = CompressorProperties(unbiased=True, sums_before_decoding=True)

    def _make_aggregator(self, dim, round_seed):
        return _KeepsEveryClientAggregator(self, dim, round_seed, (dim,))


class _ShiftedRotation(RandomizedHadamard):
    def invert(self, y, side, state, dim):
        return super().invert(y, side, state, dim) + 1.0  # affine, not linear


class NonlinearCommutingStage(HadamardSQ):
    """A stage claims commutes_with_sum while its inverse adds a constant."""

    def __init__(self):
        super().__init__(bits=BASE_BITS)

    @property
    def stages(self):
        return Pipeline((_ShiftedRotation(), MinMaxQuantize(BASE_BITS)))


#: (broken compressor, the check that must name it, kit options)
BROKEN = [
    (BiasedByOnePercent, "unbiasedness", {"dims": (1000,)}),
    (WrongScale, "weighted_mean", {}),
    (AcceptsDuplicates, "duplicate_client", {}),
    (MutatesInput, "round_trip", {}),
    (MergeNotSequential, "merge", {}),
    (NondeterministicBytes, "determinism", {}),
    (NondeterministicDecode, "determinism", {}),
    (StateChangedAfterRefusal, "corrupt_payload", {}),
    (AcceptsIntegers, "input_validation", {}),
    (HeaderlessAccounting, "bytes_accounting", {}),
    (EmptyResultIsZero, "empty_aggregator", {}),
    (CountsItsUse, "parameters_unchanged", {}),
    (Unpicklable, "pickle", {}),
    (ClaimsToSumButKeepsClients, "commutes_with_sum", {"dims": (1000,)}),
    (NonlinearCommutingStage, "commutes_with_sum", {}),
]


def test_every_check_has_a_broken_compressor():
    assert {check for _, check, _ in BROKEN} == set(CHECKS)


@pytest.mark.parametrize(
    "broken, check, options",
    BROKEN,
    ids=[f"{broken.__name__}-{check}" for broken, check, _ in BROKEN],
)
def test_the_named_check_rejects_the_broken_compressor(broken, check, options):
    with pytest.raises(AssertionError, match=rf"check_compressor\[{check}\] failed"):
        check_compressor(broken(), checks=[check], **options)


@pytest.mark.parametrize(
    "broken, check, options",
    BROKEN,
    ids=[f"{broken.__name__}-{check}" for broken, check, _ in BROKEN],
)
def test_the_whole_kit_stops_at_the_right_check(broken, check, options):
    with pytest.raises(AssertionError, match=rf"check_compressor\[{check}\] failed") as failure:
        check_compressor(broken(), **options)
    assert broken.__name__ in str(failure.value)


@parametrize_checks({"base-sq8": Base()})
def test_the_unbroken_base_passes_every_check(compressor, check):
    check_compressor(compressor, checks=[check])


def test_biased_compressor_is_rejected_by_a_margin_not_by_luck():
    """A 1 % bias in d = 1000 is ~100 standard errors: rejected at the threshold of 5, but a
    kit that tolerated 500 would pass it (so that slack would be caught)."""
    with pytest.raises(AssertionError) as failure:
        check_compressor(BiasedByOnePercent(), checks=["unbiasedness"], dims=(1000,))
    z = float(str(failure.value).split(" is ")[1].split(" standard errors")[0])
    assert 20 < z < 500


def test_registry_yields_name_check_pairs_and_refuses_unknown_or_duplicate_names():
    pairs = list(iter_checks())
    assert [name for name, _ in pairs] == list(CHECKS)
    assert pairs[-1][0] == "unbiasedness"  # the expensive check runs last
    assert all(callable(check) for _, check in pairs)
    with pytest.raises(ValueError, match="unknown checks"):
        list(iter_checks(["no_such_check"]))
    with pytest.raises(ValueError, match="already registered"):
        register_check("merge")(lambda ctx: None)


def test_parametrize_helpers_give_readable_ids():
    marker = parametrize_checks({"a": Base()}, checks=["merge", "determinism"])
    assert [case.id for case in marker.args[1]] == ["a-merge", "a-determinism"]
    marker = parametrize_compressors({"a": Base()})
    assert marker.kwargs["ids"] == ["a"]


def test_raw_floats_is_not_a_compressor():
    """The simulator's exact channel does not claim the protocol (no declared properties),
    but its payloads carry the envelope like every other, so the payload checks pass."""
    raw = RawFloats()
    assert not isinstance(raw, Compressor)
    assert not hasattr(raw, "properties")
    with pytest.raises(AttributeError, match="properties"):
        check_compressor(raw, checks=["unbiasedness"])
    # the envelope's client id and round tag: shards and duplicates are told apart
    check_compressor(raw, checks=["merge", "duplicate_client", "corrupt_payload", "round_trip"])
