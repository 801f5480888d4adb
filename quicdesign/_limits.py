"""Documented bounds of the design layer, shared by ``solvers`` and the CLI.

They live in the (numpy-only) runtime package so the command line can check arguments
while parsing, without importing ``solvers``.
"""

__all__ = [
    "DESIGN_MAX_BITS",
    "DESIGN_MAX_SHARED_BITS",
    "MAX_STARTS",
    "MAX_HOPS",
    "MAX_ITER",
    "MAX_JOBS",
    "BENCH_MAX_DIM",
    "BENCH_MAX_CLIENTS",
    "BENCH_MAX_REPEATS",
    "BENCH_MAX_VALUES",
]

#: Largest message bits ``b`` and shared bits ``l`` the optimizer designs.
DESIGN_MAX_BITS = 8
DESIGN_MAX_SHARED_BITS = 8
#: Most optimizer starts, basin-hopping rounds and L-BFGS-B iterations per run.
MAX_STARTS = 1000
MAX_HOPS = 1000
MAX_ITER = 100_000
#: Most parallel workers (joblib ``n_jobs``).
MAX_JOBS = 1024
#: Benchmark sizes: longest vector, most clients and timed repeats, and the most
#: float32 values held at once (``clients * dim``, 1 GiB).
BENCH_MAX_DIM = 2**26
BENCH_MAX_CLIENTS = 1024
BENCH_MAX_REPEATS = 1000
BENCH_MAX_VALUES = 2**28
