# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Choosing l and p on certified numbers
#
# Every table can be compared with a **certified lower bound**: no unbiased
# per-coordinate scheme with `2**b` messages per inside coordinate — whatever its shared
# randomness — gets below it at that tail probability (see `solvers.lower_bound` and
# `docs/table-format.md`). This notebook sweeps the shared bits `l` and the tail
# probability `p` and plots the designed vNMSE beside the bound, so the price of a
# smaller `l` or a larger `p` is read against what is possible at all.
# Set `QUICDESIGN_SMALL=1` for a fast run (CI does). Every vNMSE here is exact (the
# design objective on N(0, 1) inputs), not sampled: no trials, no error bars. Designs go
# through `solvers.sweep` (one line per table); the bound loops print one line per step.

# %%
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter

import quicdesign
import solvers
from quicdesign.bound import check_global_bound
from solvers.bound import larger_design, lower_bound

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
SMALL = os.environ.get("QUICDESIGN_SMALL") == "1"
BITS = [1, 2] if SMALL else [1, 2, 3, 4]
SHARED = list(range(0, 7)) if SMALL else list(range(0, 11))
TAILS = [1 / 32, 1 / 512] if SMALL else [1 / 2**k for k in range(5, 12)]
BOUND_SECONDS = 2.0 if SMALL else 60.0

# %% [markdown]
# ## vNMSE against l at p = 1/512, with the shipped certified bound
#
# The bound does not depend on `l`: it is shipped with the tables (re-verified here).
# Designs for `l <= 8` come from `solvers.design`; `l = 9, 10` are refined from the
# `l = 8` table with `solvers.bound.larger_design`.

# %%
by_l = {}
bounds = {}
designed = solvers.sweep(
    [(bits, l) for bits in BITS for l in SHARED if l <= 8], n_jobs=1, starts=1, certify=False
)
designed = {(r.table.bits, r.table.shared_bits): r.vnmse for r in designed}
for bits in BITS:
    shipped = quicdesign.load_table(bits, 8)
    bounds[bits] = check_global_bound(shipped).recomputed
    values = []
    for shared_bits in SHARED:
        if shared_bits <= 8:
            values.append(designed[bits, shared_bits])
        else:
            table = larger_design(shipped, shared_bits=shared_bits)
            values.append(
                solvers.evaluate(
                    table.receiver, solvers.StandardNormal(), table.lower, table.upper
                ).vnmse
            )
    by_l[bits] = np.array(values)
    gaps = 100 * (by_l[bits] - bounds[bits]) / bounds[bits]
    print(f"b={bits}: bound {bounds[bits]:.6g}; gap by l: " + ", ".join(f"{g:.2f}%" for g in gaps))
    assert np.all(by_l[bits] > bounds[bits])

# %%
PLAIN = FormatStrFormatter("%g")
fig, axes = plt.subplots(1, len(BITS), figsize=(3.6 * len(BITS) + 1.5, 3.4), layout="constrained")
for ax, bits in zip(axes, BITS, strict=True):
    ax.plot(SHARED, by_l[bits], "o-", label="designed table")
    ax.axhline(bounds[bits], color="k", ls="--", label="certified lower bound (any l)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)  # 2, 3, 4 rather than 2x10^0 on a short log axis
    ax.yaxis.set_minor_formatter(PLAIN)
    ax.set_xlabel("shared bits l")
    ax.set_xticks(SHARED)
    ax.set_title(f"b = {bits}, p = 1/512")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("vNMSE on N(0, 1) inputs (exact)")
_ = fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="outside right upper")
fig.savefig("bound_vs_shared_bits.png", dpi=110)

# %% [markdown]
# Relative gap to the bound (log scale): the last shared bits buy little, and the bound
# says how little is left to gain by any per-coordinate scheme.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
for bits in BITS:
    ax.plot(SHARED, 100 * (by_l[bits] - bounds[bits]) / bounds[bits], "o-", label=f"b = {bits}")
ax.set_yscale("log")
ax.set_xlabel("shared bits l")
ax.set_xticks(SHARED)
ax.set_ylabel("vNMSE above the certified bound (%)")
ax.set_title("how much any per-coordinate scheme could still gain, p = 1/512")
ax.grid(alpha=0.3, which="both")
_ = ax.legend()
fig.savefig("gap_vs_shared_bits.png", dpi=110)

# %% [markdown]
# ## Against the tail probability p (total bits b + 64 p)
#
# A larger `p` sends more coordinates exactly (64 bits each) and shrinks the quantized
# interval. Both the design (at the default `l` of each `b`) and the bound are computed
# for each `p`.

# %%
rows = []
for bits in BITS:
    shared_bits = {1: 6, 2: 5, 3: 4, 4: 4}[bits]
    for tail in TAILS:
        result = solvers.design(bits, shared_bits, tail_prob=tail, starts=1, certify=False)
        proof = lower_bound(result.table, seconds=BOUND_SECONDS)
        rows.append((bits, tail, bits + 64 * tail, result.vnmse, proof.bound))
        print(
            f"b={bits} p=1/{round(1 / tail)}: total bits {bits + 64 * tail:.4f} "
            f"vNMSE {result.vnmse:.6g} bound {proof.bound:.6g}"
        )
rows = np.array(rows)
assert np.all(rows[:, 3] > rows[:, 4])

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
for bits in BITS:
    sel = rows[:, 0] == bits
    (line,) = ax.plot(rows[sel, 2], rows[sel, 3], "o-", label=f"b = {bits}: design")
    ax.plot(rows[sel, 2], rows[sel, 4], "x--", color=line.get_color(), label=f"b = {bits}: bound")
    for total, vnmse, tail in zip(rows[sel, 2], rows[sel, 3], rows[sel, 1], strict=True):
        if tail in (TAILS[0], TAILS[-1]):  # name the two ends of each curve
            ax.annotate(
                f"p=1/{round(1 / tail)}",
                (total, vnmse),
                xytext=(3, 4),
                textcoords="offset points",
                fontsize=7,
            )
ax.set_yscale("log")
ax.yaxis.set_major_formatter(PLAIN)
ax.yaxis.set_minor_formatter(PLAIN)
ax.set_xlabel("bits per coordinate on the wire, b + 64 p (an exact coordinate costs 64 bits)")
ax.set_ylabel("vNMSE on N(0, 1) inputs (exact)")
span = f"p = 1/{round(1 / TAILS[0])} ... 1/{round(1 / TAILS[-1])}"
ax.set_title(f"designs and certified bounds against what p costs, {span}", fontsize=10)
ax.grid(alpha=0.3, which="both")
_ = fig.legend(fontsize=8, loc="outside right upper")
fig.savefig("bound_vs_tail.png", dpi=110)
