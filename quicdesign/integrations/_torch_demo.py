"""``python -m quicdesign.integrations.torch --demo``: 2-rank DDP with and without the hook.

Trains the same small MLP on scikit-learn's digits (8x8 images, 10 classes) twice on
gloo over 127.0.0.1: once with plain all-reduce and once with :func:`quicfl_hook`, and
prints the bytes each rank sent and the test accuracy of both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from quicdesign._argtypes import add_compressor_options, bounded_int
from quicdesign.compressors import make_compressor

from .torch import QuicFLHookState, quicfl_hook

_TIMEOUT = datetime.timedelta(seconds=120)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 for the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_gloo(rank, world_size, port):
    """Join a gloo process group on 127.0.0.1 with one intra-op thread per rank."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=_TIMEOUT,
    )


def digits_split(seed=0):
    """Standardized digits: (x_train, y_train, x_test, y_test) as tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def make_mlp(hidden=128):
    """A 64-hidden-hidden-10 MLP; with a small bucket cap DDP splits it in several buckets."""
    layers = [nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, 10))


def train_run(rank, world_size, compressor, *, steps, seed=0, lr=0.1, batch=64):
    """Train the MLP with DDP (compressed if ``compressor`` is given); return figures."""
    x_train, y_train, x_test, y_test = digits_split(seed)
    shard = slice(rank, None, world_size)  # each rank holds its own half of the data
    x_local, y_local = x_train[shard], y_train[shard]
    torch.manual_seed(seed)  # identical initial model on every rank
    model = DistributedDataParallel(make_mlp(), bucket_cap_mb=0.02)
    state = None
    if compressor is not None:
        state = QuicFLHookState(None, compressor, seed=seed, start_iter=1)
        model.register_comm_hook(state, quicfl_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed + 1000 * rank)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(x_local), (batch,), generator=generator)
        loss = nn.functional.cross_entropy(model(x_local[index]), y_local[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(dim=1) == y_test).float().mean())
    dense = sum(4 * p.numel() for p in model.parameters()) * steps
    return {
        "losses": losses,
        "accuracy": accuracy,
        "bytes_sent": dense if state is None else state.bytes_sent,
        "dense_bytes": dense if state is None else state.dense_bytes,
    }


def _worker(rank, world_size, port, config, out_dir):
    init_gloo(rank, world_size, port)
    try:
        results = {}
        for label, name in (("all-reduce", None), (config["compressor"], config["compressor"])):
            compressor = None if name is None else make_compressor(name, bits=config["bits"])
            results[label] = train_run(rank, world_size, compressor, steps=config["steps"])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def run_demo(*, steps=150, bits=4, compressor="quicfl", world_size=2):
    """Spawn the ranks, train both runs and return rank 0's figures."""
    config = {"steps": steps, "bits": bits, "compressor": compressor}
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), config, out_dir), nprocs=world_size)
        return json.loads(Path(out_dir, "rank0.json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m quicdesign.integrations.torch",
        description="2-rank DDP on scikit-learn digits: QUIC-FL hook versus all-reduce.",
    )
    parser.add_argument("--demo", action="store_true", help="run the demo")
    parser.add_argument(
        "--steps",
        type=bounded_int("steps", 1, 100_000),
        default=150,
        help="SGD steps per run (default: 150)",
    )
    add_compressor_options(parser)
    args = parser.parse_args(argv)
    if not args.demo:
        parser.print_help()
        return 0
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    print(f"training 2 ranks x 2 runs, {args.steps} steps each (gloo on 127.0.0.1) ...")
    results = run_demo(steps=args.steps, bits=args.bits, compressor=args.compressor)
    header = ("run", "bytes sent/rank", "bits/coord", "final loss", "accuracy")
    print("{:<12} {:>16} {:>11} {:>11} {:>9}".format(*header))
    for label, figures in results.items():
        bits_per = 32 * figures["bytes_sent"] / figures["dense_bytes"]
        final_loss = float(np.mean(figures["losses"][-10:]))
        print(
            f"{label:<12} {figures['bytes_sent']:>16,} {bits_per:>11.3f} "
            f"{final_loss:>11.4f} {figures['accuracy']:>9.4f}"
        )
    print("(bits/coord: 32 x bytes sent / dense bytes; step 1 of the hooked run is a plain")
    print(" all-reduce so DDP can rebuild its buckets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
