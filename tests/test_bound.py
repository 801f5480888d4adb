"""The global lower bound: exact DP, closed-form checks, validity and the shipped proofs."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import special

import quicdesign
from quicdesign.bound import (
    check_global_bound,
    entropy_constrained_1d,
    evaluate_multipliers,
    kmeans_1d,
    standard_normal_cell_moments,
)
from quicdesign.errors import TableError

solvers = pytest.importorskip("solvers")
from solvers.bound import (  # noqa: E402
    attach_bound,
    attach_floor,
    design_multipliers,
    entropy_floor,
    lower_bound,
)

THRESHOLD = float(-special.ndtri(1 / 1024))


def _brute_force_kmeans(points, weights, clusters):
    order = np.argsort(points)
    y, w = points[order], weights[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, y.size), min(clusters - 1, y.size - 1)):
        bounds = [0, *cuts, y.size]
        cost = 0.0
        for start, stop in itertools.pairwise(bounds):
            center = np.average(y[start:stop], weights=w[start:stop])
            cost += np.sum(w[start:stop] * (y[start:stop] - center) ** 2)
        best = min(best, cost)
    return best


def test_kmeans_dp_matches_brute_force_on_tiny_instances():
    rng = np.random.default_rng(7)
    for _ in range(300):
        size = int(rng.integers(2, 9))
        clusters = int(rng.integers(1, 5))
        points = rng.normal(size=size) * rng.choice([0.1, 1.0, 10.0])
        if rng.random() < 0.3:
            points = np.round(points)  # ties
        weights = rng.random(size) + 1e-3
        cost, labels, centers = kmeans_1d(points, weights, clusters)
        expected = _brute_force_kmeans(points, weights, clusters)
        assert cost == pytest.approx(expected, rel=1e-10, abs=1e-13)
        # The returned clustering realizes the cost.
        assert np.sum(weights * (centers[labels] - points) ** 2) == pytest.approx(
            cost, rel=1e-10, abs=1e-13
        )


def test_kmeans_dp_matches_full_dp_on_larger_instances():
    """Divide and conquer must equal the plain O(K n^2) DP."""
    rng = np.random.default_rng(3)
    for clusters in (2, 3, 5, 16):
        points = np.concatenate([rng.normal(size=150), rng.normal(4, 0.1, size=50)])
        weights = rng.random(points.size)
        y, w = points[np.argsort(points)], weights[np.argsort(points)]
        prefix = [np.concatenate(([0.0], np.cumsum(w * y**k))) for k in range(3)]
        start, stop = np.meshgrid(np.arange(y.size + 1), np.arange(y.size + 1), indexing="ij")
        mass = prefix[0][stop] - prefix[0][start]
        with np.errstate(divide="ignore", invalid="ignore"):
            cost = np.where(
                stop > start,
                prefix[2][stop]
                - prefix[2][start]
                - (prefix[1][stop] - prefix[1][start]) ** 2 / np.where(mass > 0, mass, 1),
                np.inf,
            )
        cost[np.arange(y.size + 1), np.arange(y.size + 1)] = 0.0
        best = cost[0]
        for _ in range(clusters - 1):
            best = np.min(best[:, None] + cost, axis=0)
        assert kmeans_1d(points, weights, clusters)[0] == pytest.approx(best[-1], rel=1e-9)


@pytest.mark.parametrize(
    ("bits", "expected"), [(1, 0.545818), (2, 0.124567), (3, 0.032347), (4, 0.008321)]
)
def test_linear_multiplier_reproduces_eden_type_bound(bits, expected):
    """With y = a z the bound is s2 D / (s2 - D), D the Lloyd-Max error (p = 1/512)."""
    edges = np.linspace(-THRESHOLD, THRESHOLD, 20001)
    moments = standard_normal_cell_moments(edges)
    mass, first, second = moments
    inside_second = second.sum()
    centers = first / mass
    within_cells = np.sum(second - first**2 / mass)
    lloyd_max = kmeans_1d(centers, mass, 2**bits)[0] + within_cells
    slope = inside_second / (inside_second - lloyd_max)
    value = evaluate_multipliers(2 * slope * centers, moments, 2**bits).value
    assert value == pytest.approx(expected, abs=1e-6)
    # The best linear multiplier: a slightly different slope gives less.
    assert evaluate_multipliers(2.05 * slope * centers, moments, 2**bits).value < value


def test_cell_moments_match_scipy():
    edges = np.linspace(-THRESHOLD, THRESHOLD, 9)
    mass, first, second = standard_normal_cell_moments(edges)
    normal = solvers.StandardNormal()
    m0, m1, m2 = (np.diff(m) for m in normal.partial_moments(edges))
    np.testing.assert_allclose([mass, first, second], [m0, m1, m2], rtol=1e-13, atol=1e-16)


def test_subgradient_is_an_affine_minorant():
    """L is concave: L(rho') <= L(rho) + g . (rho' - rho) for every rho'."""
    table = quicdesign.load_table(2, 5)
    edges, rho = design_multipliers(table)
    moments = standard_normal_cell_moments(edges)
    base = evaluate_multipliers(rho, moments, 4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = rho + rng.normal(scale=0.3, size=rho.size)
        value = evaluate_multipliers(other, moments, 4).value
        assert value <= base.value + base.subgradient @ (other - rho) + 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("bits", [1, 2])
def test_bound_is_below_every_design_l0_to_l8(bits):
    """One multiplier bounds designs at every l (a violated bound is a bug)."""
    proof = lower_bound(quicdesign.load_table(bits, 8), seconds=3.0)
    vnmses = []
    for shared_bits in range(0, 9):
        result = solvers.design(bits, shared_bits, starts=1, certify=False)
        vnmses.append(result.vnmse)
        assert proof.bound < result.vnmse
    # Designs approach the bound as l grows; the l = 8 design is within a few percent.
    assert vnmses[-1] < vnmses[0]
    assert (vnmses[-1] - proof.bound) / proof.bound < 0.05
    assert proof.bound > proof.start_bound


def test_shipped_tables_carry_bounds_that_reverify():
    for entry in quicdesign.list_tables():
        table = quicdesign.load_table(entry["bits"], entry["shared_bits"], entry["tail_prob"])
        check = check_global_bound(table)
        assert check is not None, table.name
        assert check.recomputed <= table.vnmse
        assert check.recomputed == pytest.approx(table.manifest["global_bound"]["value"], rel=1e-9)


@pytest.mark.parametrize(("bits", "target"), [(1, 0.010), (2, 0.005), (3, 0.005), (4, 0.005)])
def test_shipped_l8_tables_meet_the_gap_targets(bits, target):
    check = check_global_bound(quicdesign.load_table(bits, 8))
    assert check.relative_gap <= target


def _saved_with_bound(tmp_path, seconds=0.0):
    table = quicdesign.load_table(2, 5)
    if table.manifest.get("global_bound") is None:
        table = attach_bound(table, lower_bound(table, seconds=seconds))
    folder = tmp_path / "table"
    table.save(folder)
    return folder


def _resign(folder, edit):
    """Apply ``edit`` to the manifest and re-sign it the way the project saves tables."""
    table = quicdesign.Table.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edges, rho = (a.copy() for a in table.bound_arrays())
    section = dict(manifest["global_bound"])
    edges, rho, section = edit(edges, rho, section)
    base = table.with_manifest(global_bound=section)
    base.with_global_bound(section, edges, rho).save(folder)


def test_verifier_refuses_tampered_multipliers(tmp_path):
    folder = _saved_with_bound(tmp_path)
    assert check_global_bound(quicdesign.Table.load(folder)) is not None

    def bump(edges, rho, section):
        rho[rho.size // 3] += 0.5
        return edges, rho, section

    _resign(folder, bump)  # consistent checksums, but the proof no longer gives the value
    with pytest.raises(TableError, match="does not re-evaluate"):
        check_global_bound(quicdesign.Table.load(folder))


def test_verifier_refuses_a_changed_array_file(tmp_path):
    folder = _saved_with_bound(tmp_path)
    data = bytearray((folder / "bound_multipliers.f64").read_bytes())
    data[8] ^= 1
    (folder / "bound_multipliers.f64").write_bytes(bytes(data))
    with pytest.raises(TableError, match="sha256"):
        quicdesign.Table.load(folder)


def test_verifier_refuses_a_bound_above_the_vnmse(tmp_path):
    folder = _saved_with_bound(tmp_path)
    table = quicdesign.Table.load(folder)
    # A table whose claimed vNMSE is below its own bound is impossible: refuse it.
    quality = {**table.manifest["quality"], "vnmse": table.manifest["global_bound"]["value"] / 2}
    table.with_manifest(quality=quality).save(folder)
    with pytest.raises(TableError, match="exceeds"):
        check_global_bound(quicdesign.Table.load(folder))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e, r, s: (e, r, {**s, "value": s["value"] * 1.01}), "does not re-evaluate"),
        (lambda e, r, s: (e[::-1].copy(), r, s), "increasing|span"),
        (lambda e, r, s: (e * 0.99, r, s), "span exactly"),
        (lambda e, r, s: (e, np.full_like(r, np.inf), s), "finite"),
        (lambda e, r, s: (e, r, {**s, "bits": 3}), "bits"),
        (lambda e, r, s: (e, r, {**s, "distribution": {"kind": "scipy"}}), "standard-normal"),
    ],
)
def test_verifier_refuses_malformed_proofs(tmp_path, edit, message):
    folder = _saved_with_bound(tmp_path)
    _resign(folder, edit)
    with pytest.raises(TableError, match=message):
        check_global_bound(quicdesign.Table.load(folder))


def test_loader_bounds_the_cell_count_before_reading(tmp_path):
    folder = _saved_with_bound(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["global_bound"]["cells"] = 1 << 40
    # Re-sign with the format's own serializer: only the cell bound may refuse it.
    (folder / "manifest.json").write_bytes(quicdesign.table._serialize_manifest(manifest))
    with pytest.raises(TableError, match="cells"):
        quicdesign.Table.load(folder)


def test_table_without_bound_round_trips(tmp_path):
    table = quicdesign.load_table(3, 4).with_manifest(global_bound=None)
    assert "global_bound" not in table.manifest
    table.save(tmp_path / "bare")
    loaded = quicdesign.Table.load(tmp_path / "bare")
    assert check_global_bound(loaded) is None
    assert not (tmp_path / "bare" / "bound_edges.f64").exists()
    with pytest.raises(TableError, match="no global_bound"):
        loaded.bound_arrays()


def test_ascent_raises_the_start_and_stays_below_the_table():
    table = quicdesign.load_table(3, 4)
    result = lower_bound(table, seconds=2.0)
    assert result.start_bound < result.bound < table.vnmse
    assert result.relative_gap == pytest.approx((table.vnmse - result.bound) / result.bound)
    # The proof re-evaluates from its arrays alone.
    moments = standard_normal_cell_moments(result.edges)
    assert evaluate_multipliers(result.multipliers, moments, 8).certified == pytest.approx(
        result.bound, rel=1e-12
    )


@pytest.mark.parametrize(("rate", "reference"), [(2, 0.097601), (4, 0.0055860)])
def test_entropy_floor_is_close_to_the_reference_and_below_the_tables(rate, reference):
    floor = entropy_floor(rate, seconds=5.0 if rate == 2 else 8.0)
    assert floor["floor"] <= reference * (1 + 1e-6)
    assert floor["floor"] >= reference * 0.97
    shipped = quicdesign.load_entropy_table(rate)
    assert floor["floor"] < shipped.vnmse
    assert math.isfinite(floor["lambda"])


def _brute_force_ecsq(points, weights, penalty):
    order = np.argsort(points)
    y, w = points[order], weights[order]
    total_w, best = w.sum(), np.inf
    for count in range(0, y.size):
        for cuts in itertools.combinations(range(1, y.size), count):
            cost = 0.0
            for start, stop in itertools.pairwise([0, *cuts, y.size]):
                mass = w[start:stop].sum()
                center = np.average(y[start:stop], weights=w[start:stop])
                cost += np.sum(w[start:stop] * (y[start:stop] - center) ** 2)
                cost += penalty * -mass * np.log2(mass / total_w)
            best = min(best, cost)
    return best


def test_entropy_constrained_dp_matches_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(150):
        size = int(rng.integers(1, 8))
        points = rng.normal(size=size) * 3
        weights = rng.random(size) + 1e-3
        penalty = float(rng.choice([0.0, 0.05, 0.5, 5.0]))
        cost, labels, centers, entropy = entropy_constrained_1d(points, weights, penalty)
        assert cost == pytest.approx(_brute_force_ecsq(points, weights, penalty), abs=1e-12)
        share = np.bincount(labels, weights=weights) / weights.sum()
        assert entropy == pytest.approx(-np.sum(share[share > 0] * np.log2(share[share > 0])))


def _entropy_table_with_floor(tmp_path, **changes):
    table = quicdesign.load_entropy_table(2)
    if table.manifest.get("global_bound") is None:
        floor = entropy_floor(table.manifest["coding"]["entropy_bits"], cells=200, seconds=1.0)
        table = attach_floor(table, floor)
    section = {**table.manifest["global_bound"], **changes}
    edges, rho = table.bound_arrays()
    folder = tmp_path / "entropy"
    table.with_global_bound(section, edges, rho).save(folder)
    return quicdesign.Table.load(folder)


def test_entropy_table_floor_reverifies_and_is_refused_when_tampered(tmp_path):
    table = _entropy_table_with_floor(tmp_path)
    check = check_global_bound(table)
    assert 0 < check.recomputed < table.vnmse
    section = table.manifest["global_bound"]
    tampered = _entropy_table_with_floor(tmp_path, **{"lambda": section["lambda"] * 1.1})
    with pytest.raises(TableError, match="does not re-evaluate"):
        check_global_bound(tampered)
    # A floor stated at a rate below what the table spends proves nothing about it.
    with pytest.raises(TableError, match="below the table's entropy"):
        check_global_bound(_entropy_table_with_floor(tmp_path, rate_bits=1.5))


def test_lower_bound_from_a_spec_and_bad_arguments():
    spec = solvers.DesignSpec(2, 2)
    result = lower_bound(spec, seconds=0.5)
    assert 0 < result.bound < result.vnmse
    with pytest.raises(ValueError, match="Table or a DesignSpec"):
        lower_bound("b2", seconds=1)
    with pytest.raises(ValueError, match="seconds"):
        lower_bound(spec, seconds=-1)
    table = quicdesign.load_table(3, 4)
    with pytest.raises(ValueError, match="same bits"):
        lower_bound(table, start=quicdesign.load_table(2, 5))


def test_verifier_needs_numpy_only():
    """The runtime verifier re-checks a shipped proof without scipy, cvxpy or solvers."""
    import subprocess
    import sys

    code = (
        "import sys, quicdesign\n"
        "from quicdesign.bound import check_global_bound\n"
        "check = check_global_bound(quicdesign.load_table(4, 8))\n"
        "assert check.recomputed > 0\n"
        "bad = [m for m in ('scipy', 'cvxpy', 'solvers', 'joblib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bound_for_another_distribution_is_below_its_design():
    """Any ValueDistribution: a Laplace design is bounded on the Laplace law itself."""
    from scipy import stats

    laplace = stats.laplace(scale=1 / math.sqrt(2))
    result = solvers.design(2, 4, distribution=laplace, starts=1, certify=False)
    proof = lower_bound(result.table, distribution=laplace, seconds=2.0)
    assert proof.distribution["kind"] == "scipy"
    assert proof.vnmse == pytest.approx(result.vnmse, rel=1e-12)
    assert 0 < proof.bound < proof.vnmse
    # The normal-law bound does not apply to it: a different number.
    normal = lower_bound(result.table, seconds=0.0)
    assert normal.bound != pytest.approx(proof.bound, rel=1e-3)


def test_a_claim_without_its_proof_is_dropped_and_arrays_need_a_claim():
    table = quicdesign.load_table(2)
    params = dict(
        bits=2,
        shared_bits=table.shared_bits,
        tail_prob=table.tail_prob,
        lower=table.lower,
        upper=table.upper,
    )
    copied = quicdesign.Table(table.receiver, manifest=table.manifest, **params)
    assert "global_bound" not in copied.manifest
    assert check_global_bound(copied) is None
    manifest = {k: v for k, v in table.manifest.items() if k != "global_bound"}
    with pytest.raises(TableError, match="need a global_bound"):
        quicdesign.Table(
            table.receiver, manifest=manifest, bound_arrays=table.bound_arrays(), **params
        )


def test_bound_for_an_empirical_sample():
    sample = np.random.default_rng(5).standard_t(df=5, size=3000)
    result = solvers.design(1, 3, distribution=sample, starts=1, certify=False)
    proof = lower_bound(result.table, distribution=sample, seconds=1.0)
    assert np.all(np.isfinite(proof.multipliers))
    assert 0 < proof.bound < proof.vnmse


def test_module_command_runs_without_runpy_warning(tmp_path):
    """`python -m solvers.bound` (quoted in the README) starts cleanly and refuses a bad folder."""
    import subprocess
    import sys

    help_run = subprocess.run(
        [sys.executable, "-W", "error", "-m", "solvers.bound", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "RuntimeWarning" not in help_run.stderr
    assert "--start-shared-bits" in help_run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "solvers.bound", str(tmp_path / "absent"), "--seconds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"python -m solvers.bound: error: {tmp_path / 'absent'} is neither a table nor a table "
        "collection"
    ]
