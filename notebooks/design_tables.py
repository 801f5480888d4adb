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
# # Designing QUIC-FL tables
#
# How the optimal unbiased quantizer depends on the shared bits `l`, the tail
# probability `p` and the message bits `b`; what the receiver table `R` and the sender
# rule look like; and a design for a custom (heavy-tailed) value distribution.
# Set `QUICDESIGN_SMALL=1` for a fast run (CI does). Every vNMSE here is exact (the
# design objective on N(0, 1) inputs), not sampled: no trials, no error bars. The designs
# go through `solvers.sweep`, which prints one line per table designed.

# %%
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import quicdesign
import solvers

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
SMALL = os.environ.get("QUICDESIGN_SMALL") == "1"
STARTS = 2 if SMALL else 4

# %% [markdown]
# ## vNMSE against the shared bits l (p = 1/512)

# %%
shared_range = range(0, 5 if SMALL else 8)
bits_range = (1, 2, 3) if SMALL else (1, 2, 3, 4)
specs = [(b, l) for b in bits_range for l in shared_range]
designs = solvers.sweep(specs, n_jobs=1, certify=False, starts=STARTS)
by_l = {b: [r.vnmse for r in designs if r.table.bits == b] for b in bits_range}
fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
for b, values in by_l.items():
    (line,) = ax.semilogy(list(shared_range), values, "o-", label=f"b = {b}: designed table")
    ax.axhline(1 / (4**b - 1), ls=":", color=line.get_color(), label=f"b = {b}: 1/(4^b - 1)")
ax.set(
    xlabel="shared bits l (2^l shared values per coordinate)",
    ylabel="vNMSE on N(0, 1) inputs (exact)",
    title="vNMSE against shared bits, p = 1/512",
    xticks=list(shared_range),
)
ax.grid(alpha=0.3, which="both")
fig.legend(fontsize=8, loc="outside right upper")
for b, values in by_l.items():
    print(
        f"b={b}: " + ", ".join(f"l={l}: {v:.5g}" for l, v in zip(shared_range, values, strict=True))
    )

# %% [markdown]
# ## vNMSE against the tail probability p (b = 2, l = 4)
#
# A larger p sends more coordinates exactly (64 p extra bits per coordinate in the
# paper's count) and shrinks the quantized interval.

# %%
tails = (
    [1 / 64, 1 / 256, 1 / 1024]
    if SMALL
    else [1 / 32, 1 / 64, 1 / 128, 1 / 256, 1 / 512, 1 / 1024, 1 / 4096]
)
by_p = solvers.sweep([(2, 4, p) for p in tails], n_jobs=1, certify=False, starts=STARTS)
fig, ax = plt.subplots(layout="constrained")
wire_bits = [2 + 64 * p for p in tails]  # each exact coordinate costs 64 bits
ax.plot(wire_bits, [r.vnmse for r in by_p], "o-")
for p, bits, r in zip(tails, wire_bits, by_p, strict=True):
    ax.annotate(f"p=1/{1 / p:.0f}", (bits, r.vnmse), textcoords="offset points", xytext=(4, 4))
ax.set(
    xlabel="wire bits per coordinate (2 + 64 p)",
    ylabel="vNMSE on N(0, 1) inputs (exact)",
    title="b = 2, l = 4: a larger p buys vNMSE with bits",
)
ax.grid(alpha=0.3)
for p, r in zip(tails, by_p, strict=True):
    print(
        f"p=1/{1 / p:.0f}: T={r.table.threshold:.3f} vNMSE={r.vnmse:.5g}"
        f" bits/coord={2 + 64 * p:.3f}"
    )

# %% [markdown]
# ## vNMSE against b for the shipped defaults

# %%
shipped = [quicdesign.load_table(b) for b in range(1, 9)]
fig, ax = plt.subplots(layout="constrained")
ax.semilogy(
    [t.bits for t in shipped], [t.vnmse for t in shipped], "o-", label="shipped default tables"
)
ax.semilogy(range(1, 9), [1 / (4**b - 1) for b in range(1, 9)], "k:", label="1/(4^b - 1)")
ax.set(
    xlabel="message bits b per coordinate",
    ylabel="vNMSE on N(0, 1) inputs (exact)",
    title="shipped tables (p = 1/512, default l per b)",
)
ax.grid(alpha=0.3, which="both")
_ = ax.legend()

# %% [markdown]
# ## The shape of R and of the sender rule (b = 2, l = 5)
#
# Each message owns a block of consecutive values across h; at every z all shared
# values send one of two adjacent messages and at most one of them randomizes.

# %%
table = quicdesign.load_table(2)
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for x in range(table.num_messages):
    left.plot(table.receiver[:, x], ".-", label=f"message x = {x}")
left.set(
    xlabel="shared value h",
    ylabel="decoded value R(h, x) (units of the chunk RMS)",
    title="receiver table, b = 2, l = 5",
)
left.legend(fontsize=8)
z = np.linspace(*table.support, 801)
probs = table.sender.message_probabilities(z)  # (n, H, K)
expected_message = (probs * np.arange(table.num_messages)).sum(axis=2)
image = right.imshow(
    expected_message.T, aspect="auto", origin="lower", extent=[z[0], z[-1], 0, table.num_shared]
)
right.set(
    xlabel="input value z (units of the chunk RMS)",
    ylabel="shared value h",
    title="sender: expected message given h and z",
)
fig.colorbar(image, ax=right, label="expected message index")
print(solvers.verify(table))

# %% [markdown]
# ## A custom distribution: Student-t with 4 degrees of freedom
#
# Designing for the actual value distribution beats reusing the normal design on it,
# **if the table sees that distribution**: that is the direct path (`DirectEncoder`, no
# rotation, `input_model="direct"`). The rotated path (`Encoder`) makes any input close
# to N(0, 1), where the shipped normal tables are right and this t(4) table would lose;
# `notebooks/input_models.py` measures both paths on several laws.

# %%
heavy = stats.t(df=4)
custom = solvers.design(2, 3, distribution=heavy, certify=False, starts=STARTS)
lower, upper = custom.table.support
normal_design = solvers.design(2, 3, threshold=upper, certify=False, starts=STARTS)
from solvers.distributions import ScipyDistribution  # noqa: E402

reuse = solvers.evaluate(normal_design.table.receiver, ScipyDistribution(heavy), lower, upper)
print(
    f"t(4) without rotation: designed for t(4): {custom.vnmse:.5f}; "
    f"normal design reused: {reuse.vnmse:.5f}"
)
assert custom.vnmse <= reuse.vnmse + 1e-12
