"""SMLM Challenge 2016 matching and scores, and the voxel metrics of Aritake et al. 2021.

References are hand computations on small constructed cases (the numbers are derived in the
comments), a plain sequential implementation of the greedy rule, direct NumPy counts, and the
counts published in Aritake et al. 2021, Table 4.
"""

import math

import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.smlm.localizations import Localizations
from fluojax.smlm.metrics import (
    ARITAKE_VOXEL_GRID,
    ChallengeMetrics,
    VoxelConfusion,
    VoxelGrid,
    challenge_metrics,
    efficiency,
    evaluate,
    fine_voxel_jaccard,
    match,
    metrics_table,
    voxel_confusion,
    voxel_labels,
)


def _table(rows):
    """Localizations from (frame, x, y[, z]) rows."""
    rows = np.asarray(rows, dtype=np.float64)
    z = rows[:, 3] if rows.shape[1] > 3 else None
    return Localizations.build(rows[:, 0].astype(int), rows[:, 1], rows[:, 2], z_nm=z)


def test_hand_case_2d_counts_rmse_bias_efficiency():
    truth = _table([[0, 1000, 1000], [0, 2000, 1000], [0, 3000, 3000]])
    estimate = _table(
        [
            [0, 1030, 1040],  # truth 0 + (30, 40): 50 nm
            [0, 1940, 1080],  # truth 1 + (-60, 80): 100 nm
            [0, 3300, 3000],  # 300 nm from truth 2: beyond 250 nm, a false positive
            [0, 5000, 5000],  # far from all: false positive
        ]
    )
    m = evaluate(truth, estimate)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)
    # exact arithmetic on these numbers; 1e-12 relative covers float64 rounding
    assert m.precision == pytest.approx(0.5, rel=1e-12)
    assert m.recall == pytest.approx(2 / 3, rel=1e-12)
    assert m.f1 == pytest.approx(4 / 7, rel=1e-12)
    assert m.jaccard == pytest.approx(40.0, rel=1e-12)
    assert m.rmse_lateral_nm == pytest.approx(math.sqrt((50**2 + 100**2) / 2), rel=1e-12)
    assert (m.bias_x_nm, m.bias_y_nm) == pytest.approx((-15.0, 60.0), rel=1e-12)
    assert m.efficiency_lateral == pytest.approx(100 - math.sqrt(60**2 + 6250), rel=1e-12)
    assert math.isnan(m.rmse_axial_nm) and math.isnan(m.efficiency_axial)


def test_hand_case_3d_axial_volume_and_volume_efficiency_is_the_mean():
    truth = _table([[0, 1000, 1000, 0], [0, 3000, 1000, 500]])
    estimate = _table([[0, 1030, 1040, 120], [0, 3000, 1100, 340]])  # (30, 40, 120), (0, 100, -160)
    m = evaluate(truth, estimate)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    rmse_ax = math.sqrt((120**2 + 160**2) / 2)  # = sqrt(20000)
    rmse_vol = math.sqrt((50**2 + 120**2 + 100**2 + 160**2) / 2)
    assert m.rmse_axial_nm == pytest.approx(rmse_ax, rel=1e-12)
    assert m.rmse_volume_nm == pytest.approx(rmse_vol, rel=1e-12)
    assert m.bias_z_nm == pytest.approx(-20.0, rel=1e-12)
    e_lat = 100 - math.sqrt(0 + m.rmse_lateral_nm**2)
    e_ax = 100 - math.sqrt(0 + (0.5 * rmse_ax) ** 2)
    assert m.efficiency_axial == pytest.approx(e_ax, rel=1e-12)
    assert m.efficiency_volume == pytest.approx((e_lat + e_ax) / 2, rel=1e-12)


def test_efficiency_formula_hand_value():
    # 100 - sqrt(10^2 + (0.5 * 20)^2) = 100 - sqrt(200)
    assert efficiency(90.0, 20.0, 0.5) == pytest.approx(100 - math.sqrt(200), rel=1e-14)


@pytest.mark.parametrize(("dx", "matched"), [(249.0, True), (250.0, True), (251.0, False)])
def test_lateral_tolerance_edge(dx, matched):
    result = match(_table([[0, 1000, 1000]]), _table([[0, 1000 + dx, 1000]]))
    assert result.tp == int(matched)


@pytest.mark.parametrize(("dz", "matched"), [(499.0, True), (-499.0, True), (501.0, False), (-501.0, False)])
def test_axial_tolerance_edge(dz, matched):
    result = match(_table([[0, 1000, 1000, 100]]), _table([[0, 1010, 1000, 100 + dz]]))
    assert result.is_3d and result.tp == int(matched)


def test_lateral_tolerance_is_on_the_lateral_distance_not_the_3d_one():
    # 3D distance sqrt(249^2 + 400^2) = 471 nm > 250, but lateral 249 <= 250 and |dz| 400 <= 500
    assert match(_table([[0, 0, 0, 0]]), _table([[0, 249, 0, 400]])).tp == 1


def test_matching_is_per_frame():
    truth = _table([[0, 1000, 1000], [1, 5000, 5000]])
    estimate = _table([[1, 1000, 1000], [0, 5000, 5000]])  # each at the other frame's truth
    assert match(truth, estimate).tp == 0


def test_greedy_and_hungarian_differ_where_greedy_takes_the_closest_pair():
    # 1D on x: T0 = 0, T1 = 150; E0 = 100, E1 = 390. Greedy takes (T1, E0) at 50 nm first, which
    # leaves T0-E1 (390 nm) and T1-E1 (T1 used): one match. Hungarian: (T0, E0) 100 nm and
    # (T1, E1) 240 nm: two matches.
    truth, estimate = _table([[0, 0, 0], [0, 150, 0]]), _table([[0, 100, 0], [0, 390, 0]])
    greedy = match(truth, estimate, method="greedy")
    hungarian = match(truth, estimate, method="hungarian")
    assert list(zip(greedy.truth_index, greedy.estimate_index)) == [(1, 0)]
    assert list(zip(hungarian.truth_index, hungarian.estimate_index)) == [(0, 0), (1, 1)]


def test_greedy_and_hungarian_agree_on_separated_molecules():
    truth = _table([[0, 1000, 1000], [0, 3000, 1000], [1, 2000, 2000]])
    estimate = _table([[1, 2050, 1990], [0, 2980, 1010], [0, 1020, 1000]])
    greedy, hungarian = match(truth, estimate), match(truth, estimate, method="hungarian")
    assert greedy.tp == 3
    np.testing.assert_array_equal(greedy.truth_index, hungarian.truth_index)
    np.testing.assert_array_equal(greedy.estimate_index, hungarian.estimate_index)
    np.testing.assert_array_equal(greedy.estimate_index, [2, 1, 0])


def _sequential_greedy(truth, estimate, tol_lat, tol_ax):
    """Reference: every same-frame pair within tolerance sorted by 3D distance (ties by truth then
    estimate row), accepted in order when both are still free."""
    pairs = []
    for i in range(truth.n):
        for j in range(estimate.n):
            if truth.frame[i] != estimate.frame[j]:
                continue
            dx, dy = estimate.x_nm[j] - truth.x_nm[i], estimate.y_nm[j] - truth.y_nm[i]
            dz = estimate.z_nm[j] - truth.z_nm[i]
            if math.hypot(dx, dy) <= tol_lat and abs(dz) <= tol_ax:
                pairs.append((math.sqrt(dx * dx + dy * dy + dz * dz), i, j))
    used_t, used_e, accepted = set(), set(), []
    for _, i, j in sorted(pairs):
        if i not in used_t and j not in used_e:
            used_t.add(i)
            used_e.add(j)
            accepted.append((i, j))
    return sorted(accepted)


def test_vectorised_greedy_equals_the_sequential_rule_on_dense_frames():
    rng = np.random.default_rng(0)
    n_t, n_e = 120, 140
    # dense: 3 frames of a 1.5 um field, so many molecules compete for the same estimates
    truth = Localizations.build(
        rng.integers(0, 3, n_t), rng.uniform(0, 1500, n_t), rng.uniform(0, 1500, n_t), z_nm=rng.uniform(-600, 600, n_t)
    )
    estimate = Localizations.build(
        rng.integers(0, 3, n_e), rng.uniform(0, 1500, n_e), rng.uniform(0, 1500, n_e), z_nm=rng.uniform(-600, 600, n_e)
    )
    result = match(truth, estimate)
    got = sorted(zip(result.truth_index.tolist(), result.estimate_index.tolist()))
    expected = _sequential_greedy(truth, estimate, 250.0, 500.0)
    assert len(expected) > 30  # the case exercises many competing pairs
    assert got == expected


def test_hungarian_finds_the_maximum_number_of_matches():
    # brute force over all one-to-one assignments of a 4 x 4 frame (24 permutations)
    import itertools

    rng = np.random.default_rng(3)
    truth = Localizations.build(np.zeros(4, int), rng.uniform(0, 400, 4), rng.uniform(0, 400, 4))
    estimate = Localizations.build(np.zeros(4, int), rng.uniform(0, 400, 4), rng.uniform(0, 400, 4))
    d = np.hypot(truth.x_nm[:, None] - estimate.x_nm[None], truth.y_nm[:, None] - estimate.y_nm[None])
    best = max(sum(d[i, p[i]] <= 250 for i in range(4)) for p in itertools.permutations(range(4)))
    assert match(truth, estimate, method="hungarian").tp == best


def test_border_exclusion_drops_molecules_near_the_edge():
    field = (6400.0, 6400.0)
    truth = _table([[0, 100, 3000], [0, 3000, 3000], [0, 6300, 6300]])  # two within 450 nm of an edge
    estimate = _table([[0, 110, 3000], [0, 3010, 3000], [0, 5000, 5000]])
    result = match(truth, estimate, border_nm=450.0, field_nm=field)
    assert (result.n_truth, result.n_estimate, result.tp) == (1, 2, 1)
    assert (result.truth_index.tolist(), result.estimate_index.tolist()) == ([1], [1])  # original rows


def test_no_match_gives_nan_rmse_and_zero_jaccard():
    m = evaluate(_table([[0, 0, 0]]), _table([[0, 1000, 0]]))
    assert (m.tp, m.fp, m.fn, m.jaccard, m.f1) == (0, 1, 1, 0.0, 0.0)
    assert math.isnan(m.rmse_lateral_nm) and math.isnan(m.efficiency_lateral)


def test_an_estimate_without_a_position_is_a_false_positive():
    m = evaluate(_table([[0, 0, 0]]), _table([[0, 10, 0], [0, np.nan, 0]]))
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_unknown_method_is_an_input_error():
    with pytest.raises(InputError, match="hungarian"):
        match(_table([[0, 0, 0]]), _table([[0, 0, 0]]), method="nearest")


def test_metrics_table_rows():
    good = challenge_metrics(match(_table([[0, 0, 0]]), _table([[0, 30, 40]])))
    text = metrics_table({"mle": good})
    header, rule, row = text.strip().splitlines()
    assert header.startswith("| method | TP | FP | FN |") and rule.startswith("|---|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["mle", "1", "0", "0"]
    assert cells[header.strip("|").split("|").index(" RMSE lat nm ")] == "50.0"
    assert "-" in cells  # the axial columns of a 2D result
    assert isinstance(good, ChallengeMetrics)


def test_voxel_confusion_equals_a_direct_count():
    rng = np.random.default_rng(1)
    probability = rng.uniform(size=(3, 2, 5, 6))
    labels = rng.uniform(size=probability.shape) < 0.3
    c = voxel_confusion(probability, labels, threshold=0.6)
    p, t = probability.ravel() > 0.6, labels.ravel()
    expected = [sum(a and b for a, b in zip(p, t)), sum(a and not b for a, b in zip(p, t))]
    expected += [sum(b and not a for a, b in zip(p, t)), sum(not a and not b for a, b in zip(p, t))]
    assert [c.tp, c.fp, c.fn, c.tn] == expected
    assert c.precision == pytest.approx(expected[0] / (expected[0] + expected[1]), rel=1e-12)


def test_voxel_scores_reproduce_the_papers_table():
    # Aritake et al. 2021, Table 4: precision 0.925 and recall 0.916 (three digits)
    c = VoxelConfusion.from_counts(tp=22878, fp=1844, fn=2089, tn=8165189)
    assert round(c.precision, 3) == 0.925 and round(c.recall, 3) == 0.916
    assert c.jaccard == pytest.approx(22878 / (22878 + 1844 + 2089), rel=1e-12)


def test_voxel_labels_floor_indexing_and_outside_ignored():
    grid = VoxelGrid(shape=(2, 3, 4), voxel_nm=(400.0, 100.0, 100.0), origin_nm=(-200.0, 0.0, 0.0))
    truth = Localizations.build(
        [0, 0, 1, 1, 1],
        [0.0, 399.9, 100.0, 50.0, 500.0],  # x: voxel 0, 3, 1 (edge belongs to the next), 0, outside
        [0.0, 299.9, 150.0, 50.0, 50.0],
        z_nm=[-200.0, 599.9, 199.9, 600.0, 0.0],  # z voxel 0, 1, 0 (199.9 < 200), outside (600), 0
    )
    labels = voxel_labels(truth, n_frames=2, grid=grid)
    expected = np.zeros((2, 2, 3, 4), bool)
    expected[0, 0, 0, 0] = expected[0, 1, 2, 3] = expected[1, 0, 1, 1] = True
    np.testing.assert_array_equal(labels, expected)


def test_aritake_grid_spans_the_papers_volume():
    # z in [-200, 1350) nm in 4 voxels, 64 x 64 pixels of 192 nm
    g = ARITAKE_VOXEL_GRID
    assert g.origin_nm[0] + g.shape[0] * g.voxel_nm[0] == pytest.approx(1350.0)
    assert g.shape[1] * g.voxel_nm[1] == pytest.approx(64 * 192.0)


def test_fine_voxel_jaccard_hand_case():
    # bins of 24 x 24 x 50 nm: truth bins {A, B, C}; estimate hits A and B (inside the same bins)
    # and one new bin D: |∩| = 2, |∪| = 4
    truth = _table([[0, 10, 10, 10], [0, 100, 10, 10], [1, 10, 10, 10]])
    estimate = _table([[0, 20, 20, 40], [0, 110, 5, 30], [1, 30, 10, 10]])
    assert fine_voxel_jaccard(truth, estimate) == pytest.approx(0.5, rel=1e-12)
