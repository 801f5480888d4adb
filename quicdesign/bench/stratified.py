"""``quicdesign bench stratified``: what stratified shared randomness buys, by correlation.

For each bit width (shipped default table, ``n = 2**l`` clients: one full block) and each
client correlation ``rho``, client vectors are ``sqrt(rho) z + sqrt(1 - rho) e_i`` with
``z`` and ``e_i`` standard normal, and the round's mean is estimated with independent and
with stratified ``h`` (``docs/randomness.md`` section 3.1). Prints the NMSE of the mean,
``||estimate - mean||^2 / ||mean||^2``, for both and their ratio. Identical vectors
(``rho = 1``) are the best case; the other rows show how fast the gain fades.
"""

from __future__ import annotations

import numpy as np

from .._argtypes import add_progress_option, bounded_int
from .._limits import BENCH_MAX_DIM, BENCH_MAX_REPEATS
from .._progress import progress as reporter
from .._validate import check_int
from ..codec import QuicFLAggregator, QuicFLEncoder
from ..errors import ParameterError
from ..table import load_table

__all__ = ["bench_stratified", "stratified_markdown", "register"]

CORRELATIONS = (1.0, 0.99, 0.9, 0.5)


def _mean_nmse(table, vectors, trials, stratified, seed) -> float:
    mean = vectors.mean(axis=0)
    errors = []
    for trial in range(trials):
        round_seed = seed * 1000 + trial
        encoder = QuicFLEncoder(table, round_seed, stratified=stratified)
        aggregator = QuicFLAggregator(table, round_seed, vectors.shape[1], stratified=stratified)
        for index, vector in enumerate(vectors):
            aggregator.add(encoder.encode(vector, index, rng=round_seed * 7919 + index))
        errors.append(np.sum((aggregator.result() - mean) ** 2) / np.sum(mean**2))
    return float(np.mean(errors))


def bench_stratified(
    bits=(1, 2, 4), correlations=CORRELATIONS, dim=2**14, trials=5, seed=0, progress=None
):
    """Measure the NMSE of the round mean with independent and stratified ``h``.

    Parameters
    ----------
    bits : sequence of int
        Bit widths (shipped default tables; ``n = 2**shared_bits`` clients each).
    correlations : sequence of float
        Client correlations in ``[0, 1]``.
    dim : int
        Vector length.
    trials : int
        Rounds per configuration (means reported).
    seed : int
        Seed of the vectors and of the rounds.
    progress : bool, optional
        False: silent; otherwise (default) a bar on a terminal, one line per configuration
        elsewhere.

    Returns
    -------
    list of dict
        One row per (bits, correlation).
    """
    dim = check_int(dim, "dim", 1, BENCH_MAX_DIM)
    trials = check_int(trials, "trials", 1, BENCH_MAX_REPEATS)
    for rho in correlations:
        if not 0.0 <= float(rho) <= 1.0:
            raise ParameterError(f"correlations must be in [0, 1], got {rho!r}")
    rows = []
    print(f"stratified shared randomness: NMSE of the mean, d = {dim}, {trials} rounds each")
    print(f"{'b':>2} {'n':>3} {'rho':>5} {'independent':>12} {'stratified':>11} {'ratio':>6}")
    with reporter(
        len(bits) * len(correlations), "bench stratified", progress, unit="configuration"
    ) as bar:
        for b in bits:
            table = load_table(b)
            clients = table.num_shared
            for rho in correlations:
                rng = np.random.default_rng([seed, b, int(rho * 1000)])
                common = rng.normal(size=dim)
                own = rng.normal(size=(clients, dim))
                vectors = np.sqrt(rho) * common + np.sqrt(1 - rho) * own
                plain = _mean_nmse(table, vectors, trials, False, seed)
                stratified = _mean_nmse(table, vectors, trials, True, seed)
                row = {
                    "bits": b,
                    "clients": clients,
                    "correlation": float(rho),
                    "independent": plain,
                    "stratified": stratified,
                    "ratio": stratified / plain,
                }
                rows.append(row)
                print(
                    f"{b:>2} {clients:>3} {rho:>5g} {plain:>12.3e} {stratified:>11.3e} "
                    f"{row['ratio']:>6.3f}"
                )
                bar.update()
    return rows


def stratified_markdown(rows) -> str:
    """Markdown table of :func:`bench_stratified` rows (one per bits and correlation)."""
    lines = [
        "| b | clients n | correlation | NMSE independent h | NMSE stratified h | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['bits']} | {r['clients']} | {r['correlation']:g} | {r['independent']:.4g} "
        f"| {r['stratified']:.4g} | {r['ratio']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _run(args) -> int:
    bench_stratified(dim=args.dim, trials=args.trials, progress=args.progress)
    return 0


def register(sub) -> None:
    """Add the ``stratified`` subcommand to the ``bench`` subparsers object ``sub``."""
    parser = sub.add_parser(
        "stratified",
        help="NMSE of the mean with independent vs stratified shared randomness",
    )
    parser.add_argument(
        "--dim",
        type=bounded_int("dim", 1, BENCH_MAX_DIM),
        default=2**14,
        help="vector length (default: 2^14)",
    )
    parser.add_argument(
        "--trials",
        type=bounded_int("trials", 1, BENCH_MAX_REPEATS),
        default=5,
        help="rounds per configuration (default: 5)",
    )
    add_progress_option(parser, "configuration")
    parser.set_defaults(run=_run)
