"""quicdesign.integrations.torch: tensors through compressors and the DDP hook on gloo."""

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("threadpoolctl", reason="the torch extra is not installed")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from quicdesign.compressors import COMPRESSORS, QuicFL, make_compressor  # noqa: E402
from quicdesign.errors import (  # noqa: E402
    InputDTypeError,
    InputVectorError,
    ParameterError,
    PayloadError,
)
from quicdesign.integrations._torch_demo import digits_split, free_port, init_gloo  # noqa: E402
from quicdesign.integrations.torch import (  # noqa: E402
    QuicFLHookState,
    bucket_round_seed,
    decode_mean,
    encode_tensor,
    quicfl_hook,
)
from quicdesign.rotation import RotationLayout  # noqa: E402

BITS = 4
STEPS = 12
WORLD = 2
# Constructor parameters for the compressors whose defaults need a choice.
_PARAMS = {"randk": {"fraction": 0.25}}


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_every_compressor_round_trips_a_tensor(name):
    compressor = make_compressor(name, **_PARAMS.get(name, {}))
    tensor = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    payload = encode_tensor(tensor, compressor, round_seed=5, client_id=0)
    mean = decode_mean([payload], compressor, dim=tensor.numel(), round_seed=5)
    expected = compressor.decode(
        payload, dim=tensor.numel(), round_seed=5
    )  # the numpy path, unchanged
    assert mean.dtype == torch.float32 and mean.shape == (120,)
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_low_precision_and_requires_grad_tensors_are_accepted(dtype):
    compressor = QuicFL(bits=8)
    leaf = torch.randn(500, generator=torch.Generator().manual_seed(2)).to(dtype)
    leaf.requires_grad_(True)
    payload = encode_tensor(leaf * 1, compressor, round_seed=1, client_id=3)
    mean = decode_mean([payload], compressor, dim=500, round_seed=1, dtype=dtype)
    assert mean.dtype == dtype and not mean.requires_grad
    reference = leaf.detach().double()
    nmse = float(((mean.double() - reference) ** 2).sum() / (reference**2).sum())
    # 8-bit QUIC-FL has vNMSE ~ 2e-5; bf16 storage of the result adds ~ 2**-16 relative
    assert nmse < 1e-3


def test_weighted_mean_of_two_clients_matches_numpy_path():
    compressor = QuicFL(bits=4)
    gen = torch.Generator().manual_seed(3)
    vectors = [torch.randn(2000, generator=gen) for _ in range(2)]
    payloads = [
        encode_tensor(v, compressor, round_seed=9, client_id=i) for i, v in enumerate(vectors)
    ]
    mean = decode_mean(payloads, compressor, dim=2000, round_seed=9, weights=[1.0, 3.0])
    aggregator = compressor.aggregator(2000, 9)
    aggregator.add(payloads[0], 1.0)
    aggregator.add(payloads[1], 3.0)
    np.testing.assert_allclose(mean.numpy(), aggregator.result(), rtol=1e-6)


def test_bad_inputs_are_refused_with_typed_errors():
    compressor = QuicFL(bits=2)
    with pytest.raises(InputDTypeError):
        encode_tensor(torch.arange(10), compressor, round_seed=0, client_id=0)
    with pytest.raises(InputVectorError):
        encode_tensor(np.ones(10), compressor, round_seed=0, client_id=0)
    with pytest.raises(InputVectorError):
        encode_tensor(torch.empty(0), compressor, round_seed=0, client_id=0)
    with pytest.raises(InputVectorError):
        encode_tensor(torch.tensor([1.0, float("nan")]), compressor, round_seed=0, client_id=0)
    with pytest.raises(ParameterError):
        encode_tensor(torch.ones(4), object(), round_seed=0, client_id=0)
    payload = encode_tensor(torch.ones(64), compressor, round_seed=0, client_id=0)
    with pytest.raises(ParameterError):
        decode_mean([], compressor, dim=64, round_seed=0)
    with pytest.raises(ParameterError):
        decode_mean(payload, compressor, dim=64, round_seed=0)
    with pytest.raises(ParameterError):
        decode_mean([payload], compressor, dim=64, round_seed=0, weights=[1.0, 2.0])
    with pytest.raises(PayloadError):
        decode_mean(["text"], compressor, dim=64, round_seed=0)
    with pytest.raises(InputDTypeError):
        decode_mean([payload], compressor, dim=64, round_seed=0, dtype=torch.int32)


def test_payload_of_another_round_or_dimension_is_refused():
    compressor = QuicFL(bits=4)
    payload = encode_tensor(torch.ones(300), compressor, round_seed=11, client_id=1)
    with pytest.raises(PayloadError, match="round"):
        decode_mean([payload], compressor, dim=300, round_seed=12)
    with pytest.raises(PayloadError):
        decode_mean([payload], compressor, dim=301, round_seed=11)
    with pytest.raises(PayloadError):  # the same client twice
        decode_mean([payload, payload], compressor, dim=300, round_seed=11)


def test_hook_state_pickles_without_its_process_group():
    state = QuicFLHookState("a process group", QuicFL(bits=3), seed=7, start_iter=2)
    state.iteration = 5
    restored = pickle.loads(pickle.dumps(state))
    assert restored.process_group is None
    assert (restored.seed, restored.start_iter, restored.iteration) == (7, 2, 5)
    assert restored.compressor.bits == 3
    for bad in ({"seed": -1}, {"start_iter": 1.5}, {"blas_threads": 0}):
        with pytest.raises(ParameterError):
            QuicFLHookState(None, QuicFL(), **bad)
    with pytest.raises(ParameterError):
        QuicFLHookState(None, "quicfl")


def test_bucket_round_seeds_are_distinct_per_iteration_and_bucket():
    seeds = {bucket_round_seed(0, it, b) for it in range(50) for b in range(8)}
    assert len(seeds) == 400
    assert bucket_round_seed(1, 0, 0) != bucket_round_seed(0, 0, 0)
    assert bucket_round_seed(3, 4, 5) == bucket_round_seed(3, 4, 5)


# --------------------------------------------------------------------------- 2 ranks


def _expected_error_weight(vector, vnmse):
    """vNMSE times the squared norm each chunk keeps after cropping its zero padding."""
    layout = RotationLayout.for_dim(vector.numel())
    padded = torch.zeros(layout.rotated_dim, dtype=torch.float64)
    padded[: vector.numel()] = vector.double()
    chunks = padded.reshape(layout.num_chunks, layout.chunk_size)
    kept = torch.clamp(
        vector.numel() - torch.arange(layout.num_chunks) * layout.chunk_size,
        max=layout.chunk_size,
    )
    return vnmse * float(((chunks**2).sum(dim=1) * kept / layout.chunk_size).sum())


class _Recorder:
    """Hook state that records the hook's mean against an exact all-reduce per bucket.

    ``records`` maps ``"iteration/bucket"`` to ``(error, expected error)``. It is keyed, not
    a list: gloo runs collectives on a pool of threads, so the buckets' futures (and these
    callbacks) complete in an order that differs between ranks under load.
    """

    def __init__(self, inner, vnmse):
        self.inner, self.vnmse, self.records, self.bucket_sizes = inner, vnmse, {}, set()


def _recording_hook(state: _Recorder, bucket) -> torch.futures.Future[torch.Tensor]:
    iteration = state.inner.iteration
    compressed = iteration >= state.inner.start_iter
    key = f"{iteration}/{bucket.index()}"
    exact = bucket.buffer().detach().clone()
    weight = torch.tensor([_expected_error_weight(exact, state.vnmse)], dtype=torch.float64)
    dist.all_reduce(exact)
    dist.all_reduce(weight)
    exact /= WORLD
    if compressed:
        state.bucket_sizes.add(exact.numel())

    def record(future):
        mean = future.value()
        if compressed:
            error = float(((mean.double() - exact.double()) ** 2).sum())
            state.records[key] = (error, float(weight) / WORLD**2)
        return mean

    return quicfl_hook(state.inner, bucket).then(record)


class _Bucket:
    """The part of ``torch.distributed.GradBucket`` the hook uses."""

    def __init__(self, tensor, index=0, last=True):
        self._tensor, self._index, self._last = tensor, index, last

    def buffer(self):
        return self._tensor

    def index(self):
        return self._index

    def is_last(self):
        return self._last


def test_hook_seeds_each_bucket_and_iteration_and_counts_iterations(tmp_path, monkeypatch):
    # one gloo rank in this process: enough to see which round seed each bucket gets
    from quicdesign.integrations import torch as integration

    seeds = []
    real_encode = integration.encode_tensor

    def recording_encode(tensor, compressor, *, round_seed, client_id, rng=None):
        seeds.append(round_seed)
        return real_encode(tensor, compressor, round_seed=round_seed, client_id=client_id, rng=rng)

    monkeypatch.setattr(integration, "encode_tensor", recording_encode)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        state = QuicFLHookState(None, QuicFL(bits=4), seed=5, start_iter=1)
        for _ in range(2):  # iteration 0 is plain all-reduce, iteration 1 compressed
            for index, last in ((0, False), (1, False), (2, True)):
                bucket = _Bucket(torch.randn(700), index=index, last=last)
                mean = quicfl_hook(state, bucket).wait()
                assert mean.shape == (700,)
    finally:
        dist.destroy_process_group()
    assert state.iteration == 2
    assert seeds == [bucket_round_seed(5, 1, index) for index in range(3)]


def _mlp():
    hidden = [nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU()]
    return nn.Sequential(*hidden, nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))


def _train(rank, steps, hook_state=None, hook=None, dtype=torch.float32):
    x_train, y_train, _, _ = digits_split(0)
    x_local, y_local = x_train[rank::WORLD].to(dtype), y_train[rank::WORLD]
    torch.manual_seed(0)
    model = DistributedDataParallel(_mlp().to(dtype), bucket_cap_mb=0.02)
    if hook is not None:
        model.register_comm_hook(hook_state, hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(x_local), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(x_local[index]).float(), y_local[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def _max_parameter_gap(model):
    """Largest difference between this rank's parameters and the other rank's."""
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    return float((gathered[0] - gathered[1]).abs().max())


def _worker(rank, port, out_dir):
    init_gloo(rank, WORLD, port)
    try:
        compressor = QuicFL(bits=BITS)
        vnmse = compressor.resolved_table().vnmse
        recorder = _Recorder(QuicFLHookState(None, compressor, seed=3, start_iter=1), vnmse)
        model, hooked_losses = _train(rank, STEPS, recorder, _recording_hook)
        result = {
            "records": recorder.records,
            "bucket_sizes": sorted(recorder.bucket_sizes),
            "hooked_losses": hooked_losses,
            "hooked_gap": _max_parameter_gap(model),
            "iterations": recorder.inner.iteration,
        }
        _, result["reference_losses"] = _train(rank, STEPS)

        bf16_state = QuicFLHookState(None, compressor, seed=4, start_iter=1)
        model, bf16_losses = _train(rank, 3, bf16_state, quicfl_hook, dtype=torch.bfloat16)
        result["bf16_gap"] = _max_parameter_gap(model)
        result["bf16_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        result["bf16_losses"] = bf16_losses

        # A misconfigured rank (another seed, so another round) must be refused loudly. The
        # hook is called on a bucket directly: an exception inside DDP's backward leaves
        # the reducer in a state that aborts the process at exit.
        mismatched = QuicFLHookState(None, compressor, seed=100 + rank)
        try:
            quicfl_hook(mismatched, _Bucket(torch.randn(3000))).wait()
            result["mismatch_error"] = None
        except Exception as error:  # torch wraps the hook's PayloadError
            result["mismatch_error"] = str(error)
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(result, handle)
        # no rank tears gloo down while the other is still inside a collective
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    # bounded: a hang in a collective would otherwise block the suite
    results = [out_dir / f"rank{r}.json" for r in range(WORLD)]
    try:
        for _ in range(120):
            if context.join(timeout=1):
                break
        else:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank DDP run did not finish within 120 s")
    except mp.ProcessExitedException as exc:
        # gloo's C++ teardown occasionally aborts ("terminate called without an active
        # exception") after both ranks have finished and written their results; only a
        # failure before that point is ours
        if not all(path.exists() for path in results):
            raise
        print(f"a rank aborted during gloo teardown after finishing: {exc}")
    return [json.loads(path.read_text()) for path in results]


def test_ddp_uses_several_buckets_and_counts_iterations(two_ranks):
    print("compressed bucket sizes", two_ranks[0]["bucket_sizes"])
    assert len(two_ranks[0]["bucket_sizes"]) >= 3
    assert two_ranks[0]["iterations"] == STEPS


def test_ddp_parameters_stay_identical_across_ranks(two_ranks):
    for result in two_ranks:
        assert result["hooked_gap"] == 0.0
        assert result["bf16_gap"] == 0.0


def test_hook_mean_has_nmse_of_table_vnmse_over_world_size(two_ranks):
    # E||mean_hat - mean||^2 = (1/n^2) sum_i vNMSE * ||g_i||^2 (per chunk, times the share of
    # the chunk that survives cropping the padding); for unpadded buckets vNMSE / n times the
    # clients' mean squared norm. Each record's ratio to that expectation has mean 1.
    records = two_ranks[0]["records"]
    buckets = {key.split("/")[1] for key in records}
    assert len(records) == len(buckets) * (STEPS - 1)
    ratios = np.array([error / expected for error, expected in records.values()])
    standard_error = ratios.std(ddof=1) / np.sqrt(len(ratios))
    # 4 standard errors, plus 2 % for the table's vNMSE being that of an exactly normal z:
    # rotated chunks of 1024..8192 coordinates are only close to normal
    assert abs(ratios.mean() - 1) < 4 * standard_error + 0.02, (ratios.mean(), standard_error)
    # both ranks decode the same payloads, so they see the same errors (bucket by bucket;
    # the order the buckets complete in may differ between ranks)
    assert records == two_ranks[1]["records"]


def test_hooked_loss_curve_follows_all_reduce(two_ranks):
    hooked = np.array(two_ranks[0]["hooked_losses"])
    reference = np.array(two_ranks[0]["reference_losses"])
    # same initial model and batches: step 1 is the plain all-reduce, so identical; 4-bit
    # QUIC-FL (vNMSE ~ 1e-2 per rank) then moves the curve by a few percent at most
    assert hooked[0] == reference[0]
    np.testing.assert_allclose(hooked, reference, rtol=0.05)


def test_bf16_model_trains_through_the_hook(two_ranks):
    assert two_ranks[0]["bf16_dtypes"] == ["torch.bfloat16"]
    assert all(np.isfinite(two_ranks[0]["bf16_losses"]))


def test_payload_from_another_round_is_refused_in_the_hook(two_ranks):
    for result in two_ranks:
        assert result["mismatch_error"] is not None
        assert "round" in result["mismatch_error"]
