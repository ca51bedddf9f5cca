"""SMLM accuracy metrics: the SMLM Challenge 2016 matching and scores, and voxel confusion matrices.

:func:`match` pairs estimated and true localizations one-to-one within each frame, as the
challenge's assessment does (Sage et al. 2019): the globally closest remaining pair first, accepted
only within 250 nm laterally and 500 nm axially; the Hungarian assignment is an option.
:func:`challenge_metrics` turns a match into the challenge's scores (Jaccard in percent, radial
lateral RMSE, axial RMSE, efficiency with alpha = 1 nm^-1 lateral and 0.5 nm^-1 axial; the volume
efficiency as the mean of the two, DECODE's convention, Speiser et al. 2021) and
:func:`evaluate` does both. :func:`voxel_confusion` is the voxel-wise confusion matrix of
Aritake et al. 2021 (their Table 4), :func:`voxel_labels` builds its true voxel labels, and
:func:`fine_voxel_jaccard` is the Jaccard index of the authors' released code (24 x 24 x 50 nm
bins), which is not comparable to the challenge Jaccard. :func:`metrics_table` formats results.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fluojax.io import InputError
from fluojax.smlm.localizations import Localizations

if TYPE_CHECKING:  # annotations only (see fluojax/io.py)
    from jaxtyping import Bool, Float, Int

__all__ = [
    "ARITAKE_VOXEL_GRID",
    "MATCHERS",
    "ChallengeMetrics",
    "MatchResult",
    "VoxelConfusion",
    "VoxelGrid",
    "challenge_metrics",
    "efficiency",
    "evaluate",
    "fine_voxel_jaccard",
    "match",
    "metrics_table",
    "voxel_confusion",
    "voxel_labels",
]

TOLERANCE_LATERAL_NM = 250.0
"""Lateral matching tolerance of the SMLM Challenge 2016 (Sage et al. 2019)."""
TOLERANCE_AXIAL_NM = 500.0
"""Axial matching tolerance of the SMLM Challenge 2016."""
BORDER_NM = 450.0
"""Border excluded by the SMLM Challenge 2016 assessment."""
MATCHERS = ("greedy", "hungarian")
"""The matching algorithms of :func:`match`."""


class MatchResult(NamedTuple):
    """A one-to-one matching of estimates to truths.

    Fields:
        truth_index, estimate_index: int64 (m,), row indices of the matched pairs in the tables
            given to :func:`match` (after border exclusion they still index the original tables).
        dx_nm, dy_nm, dz_nm: float64 (m,), estimate - truth of each pair; dz is NaN in 2D.
        n_truth, n_estimate: how many truths and estimates took part (inside the border).
        is_3d: whether distances and the axial tolerance used z.
    """

    truth_index: Int[np.ndarray, " m"]
    estimate_index: Int[np.ndarray, " m"]
    dx_nm: Float[np.ndarray, " m"]
    dy_nm: Float[np.ndarray, " m"]
    dz_nm: Float[np.ndarray, " m"]
    n_truth: int
    n_estimate: int
    is_3d: bool

    @property
    def tp(self) -> int:
        """True positives: matched pairs."""
        return int(np.shape(self.truth_index)[0])

    @property
    def fp(self) -> int:
        """False positives: estimates without a truth."""
        return self.n_estimate - self.tp

    @property
    def fn(self) -> int:
        """False negatives: truths without an estimate."""
        return self.n_truth - self.tp


class ChallengeMetrics(NamedTuple):
    """The SMLM Challenge 2016 scores of one method on one data set (Sage et al. 2019).

    Fields:
        n_truth, n_estimate, tp, fp, fn: counts.
        precision = TP / (TP + FP), recall = TP / (TP + FN), f1 = 2 P R / (P + R): fractions.
        jaccard = 100 TP / (TP + FP + FN): percent, as the challenge reports it.
        rmse_lateral_nm = sqrt(mean(dx^2 + dy^2)) (radial, not per axis); rmse_axial_nm =
            sqrt(mean(dz^2)); rmse_volume_nm = sqrt(mean(dx^2 + dy^2 + dz^2)); over the matched pairs.
        bias_x_nm, bias_y_nm, bias_z_nm: mean(estimate - truth) over the matched pairs.
        efficiency_lateral, efficiency_axial: 100 - sqrt((100 - JI)^2 + alpha^2 RMSE^2) with alpha
            1 nm^-1 (lateral) and 0.5 nm^-1 (axial), percent; efficiency_volume = their mean
            (DECODE's convention, Speiser et al. 2021).

    Axial and volume values are NaN in 2D; RMSEs, biases and efficiencies are NaN without a match;
    a ratio with a zero denominator is NaN.
    """

    n_truth: int
    n_estimate: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    jaccard: float
    f1: float
    rmse_lateral_nm: float
    rmse_axial_nm: float
    rmse_volume_nm: float
    bias_x_nm: float
    bias_y_nm: float
    bias_z_nm: float
    efficiency_lateral: float
    efficiency_axial: float
    efficiency_volume: float


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _inside(locs: Localizations, border_nm: float, field_nm: tuple[float, float]) -> np.ndarray:
    """Rows whose (x, y) lie at least ``border_nm`` from every edge of [0, width) x [0, height)."""
    width, height = field_nm
    x, y = np.asarray(locs.x_nm), np.asarray(locs.y_nm)
    return (x >= border_nm) & (x <= width - border_nm) & (y >= border_nm) & (y <= height - border_nm)


def _candidates(truth: Localizations, estimate: Localizations, tol_lat: float, tol_ax: float, is_3d: bool):
    """All same-frame (truth, estimate) pairs within the tolerances, and their distances.

    A k-d tree on (x, y, frame * F) with F larger than any lateral distance finds the pairs within
    ``tol_lat`` laterally in the same frame in one call (no loop over frames)."""
    from scipy.spatial import cKDTree

    empty = np.zeros(0, np.int64)
    xy_t = np.stack([np.asarray(truth.x_nm, np.float64), np.asarray(truth.y_nm, np.float64)], axis=1)
    xy_e = np.stack([np.asarray(estimate.x_nm, np.float64), np.asarray(estimate.y_nm, np.float64)], axis=1)
    rows_t = np.flatnonzero(np.isfinite(xy_t).all(axis=1))  # a row without a position matches nothing
    rows_e = np.flatnonzero(np.isfinite(xy_e).all(axis=1))
    if not len(rows_t) or not len(rows_e):
        return empty, empty, np.zeros(0)
    both = np.concatenate([xy_t[rows_t], xy_e[rows_e]])
    span = float(np.ptp(both, axis=0).max())
    separation = 2.0 * (span + tol_lat) + 1.0
    ft, fe = np.asarray(truth.frame, np.float64), np.asarray(estimate.frame, np.float64)
    origin = both.min(axis=0)
    pt = np.column_stack([xy_t - origin, ft * separation])[rows_t]
    pe = np.column_stack([xy_e - origin, fe * separation])[rows_e]
    pairs = cKDTree(pt).sparse_distance_matrix(cKDTree(pe), tol_lat, output_type="ndarray")
    ti, ei = rows_t[pairs["i"].astype(np.int64)], rows_e[pairs["j"].astype(np.int64)]
    same = np.asarray(truth.frame)[ti] == np.asarray(estimate.frame)[ei]
    ti, ei = ti[same], ei[same]
    dx = xy_e[ei, 0] - xy_t[ti, 0]
    dy = xy_e[ei, 1] - xy_t[ti, 1]
    lateral2 = dx * dx + dy * dy
    keep = lateral2 <= tol_lat * tol_lat
    if is_3d:
        dz = np.asarray(estimate.z_nm)[ei] - np.asarray(truth.z_nm)[ti]
        keep &= np.abs(dz) <= tol_ax
        distance = np.sqrt(lateral2 + dz * dz)
    else:
        distance = np.sqrt(lateral2)
    return ti[keep], ei[keep], distance[keep]


def _greedy(ti: np.ndarray, ei: np.ndarray, distance: np.ndarray, nt: int, ne: int) -> np.ndarray:
    """The pairs the sequential greedy rule accepts (closest remaining pair first), as a mask.

    Pairs are ranked by (distance, truth index, estimate index), a strict total order. In each
    round every remaining pair that is the best-ranked one of both its truth and its estimate is
    accepted, and all remaining pairs touching an accepted truth or estimate are dropped. Such a
    pair is accepted by the sequential rule too (no better pair shares an end with it), and each
    round accepts at least the best remaining pair, so the rounds give exactly the sequential
    result; each round is vectorised, and the rounds are few (each accepts every locally best pair).
    """
    order = np.lexsort((ei, ti, distance))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    accepted = np.zeros(len(ti), bool)
    alive = np.ones(len(ti), bool)
    big = np.iinfo(np.int64).max
    while alive.any():
        idx = np.flatnonzero(alive)
        best_t = np.full(nt, big)
        best_e = np.full(ne, big)
        np.minimum.at(best_t, ti[idx], rank[idx])
        np.minimum.at(best_e, ei[idx], rank[idx])
        win = idx[(best_t[ti[idx]] == rank[idx]) & (best_e[ei[idx]] == rank[idx])]
        accepted[win] = True
        used_t = np.zeros(nt, bool)
        used_e = np.zeros(ne, bool)
        used_t[ti[win]] = True
        used_e[ei[win]] = True
        alive[idx[used_t[ti[idx]] | used_e[ei[idx]]]] = False
    return accepted


def _hungarian(ti: np.ndarray, ei: np.ndarray, distance: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The pairs of a minimum-cost assignment per frame among the candidate pairs, as a mask.

    Non-candidate pairs cost more than all candidates together, so the assignment first
    maximises the number of matches, then minimises their summed distance
    (``scipy.optimize.linear_sum_assignment``; one call per frame that has candidates)."""
    from scipy.optimize import linear_sum_assignment

    accepted = np.zeros(len(ti), bool)
    if not len(ti):
        return accepted
    forbidden = float(distance.sum()) + 1.0
    order = np.argsort(frames, kind="stable")
    bounds = np.flatnonzero(np.diff(frames[order])) + 1
    for group in np.split(order, bounds):
        rows, row_of = np.unique(ti[group], return_inverse=True)
        cols, col_of = np.unique(ei[group], return_inverse=True)
        cost = np.full((len(rows), len(cols)), forbidden)
        cost[row_of, col_of] = distance[group]
        pair = np.full((len(rows), len(cols)), -1, np.int64)
        pair[row_of, col_of] = group
        r, c = linear_sum_assignment(cost)
        chosen = pair[r, c]
        accepted[chosen[chosen >= 0]] = True
    return accepted


def match(
    truth: Localizations,
    estimate: Localizations,
    tolerance_lateral_nm: float = TOLERANCE_LATERAL_NM,
    tolerance_axial_nm: float = TOLERANCE_AXIAL_NM,
    method: str = "greedy",
    border_nm: float = 0.0,
    field_nm: tuple[float, float] | None = None,
) -> MatchResult:
    """Match estimates to truths one-to-one within each frame (Sage et al. 2019).

    A (truth, estimate) pair of the same frame is a candidate when its lateral distance
    sqrt(dx^2 + dy^2) <= ``tolerance_lateral_nm`` and, in 3D, |dz| <= ``tolerance_axial_nm``.
    ``"greedy"`` (the challenge's global-sort nearest neighbour, also DECODE's): repeatedly accept
    the closest remaining candidate pair, distance sqrt(dx^2 + dy^2 + dz^2) in 3D and lateral in
    2D, ties broken by the lower truth then estimate row; vectorised over all frames at once (see
    ``_greedy``). ``"hungarian"``: per frame, the assignment with the most matches and, among
    those, the smallest summed distance. 3D means both tables have every z finite.

    Arguments:
        truth, estimate: the tables (frames must use the same numbering).
        tolerance_lateral_nm, tolerance_axial_nm: the tolerances (challenge: 250 and 500 nm).
        method: one of :data:`MATCHERS`.
        border_nm: truths and estimates closer than this to an edge of the field are left out
            before matching (the challenge: 450 nm); needs ``field_nm``.
        field_nm: (width, height) of the field in nm, for ``border_nm``.

    Returns:
        :class:`MatchResult`.

    Raises:
        InputError: an unknown method, negative tolerances or border, a border without a field.
    """
    if method not in MATCHERS:
        raise InputError(f"matching {method!r}: expected one of {', '.join(MATCHERS)}")
    if not (tolerance_lateral_nm >= 0 and tolerance_axial_nm >= 0):
        raise InputError(f"matching tolerances {tolerance_lateral_nm} and {tolerance_axial_nm} nm: must be >= 0")
    truth_rows, estimate_rows = np.arange(truth.n), np.arange(estimate.n)
    if border_nm:
        if border_nm < 0 or field_nm is None:
            raise InputError(f"border of {border_nm} nm: must be >= 0 and needs the field size in nm")
        truth_rows = np.flatnonzero(_inside(truth, border_nm, field_nm))
        estimate_rows = np.flatnonzero(_inside(estimate, border_nm, field_nm))
        truth, estimate = truth.select(truth_rows), estimate.select(estimate_rows)
    is_3d = bool(
        truth.n
        and estimate.n
        and np.isfinite(np.asarray(truth.z_nm)).all()
        and np.isfinite(np.asarray(estimate.z_nm)).all()
    )
    ti, ei, distance = _candidates(truth, estimate, tolerance_lateral_nm, tolerance_axial_nm, is_3d)
    if method == "greedy":
        accepted = _greedy(ti, ei, distance, truth.n, estimate.n)
    else:
        accepted = _hungarian(ti, ei, distance, np.asarray(truth.frame)[ti])
    ti, ei = ti[accepted], ei[accepted]
    order = np.lexsort((ei, ti))
    ti, ei = ti[order], ei[order]
    dz = np.asarray(estimate.z_nm)[ei] - np.asarray(truth.z_nm)[ti] if is_3d else np.full(len(ti), np.nan)
    return MatchResult(
        truth_index=truth_rows[ti],
        estimate_index=estimate_rows[ei],
        dx_nm=np.asarray(estimate.x_nm)[ei] - np.asarray(truth.x_nm)[ti],
        dy_nm=np.asarray(estimate.y_nm)[ei] - np.asarray(truth.y_nm)[ti],
        dz_nm=dz,
        n_truth=truth.n,
        n_estimate=estimate.n,
        is_3d=is_3d,
    )


def efficiency(jaccard_percent: float, rmse_nm: float, alpha_per_nm: float) -> float:
    """The challenge efficiency E = 100 - sqrt((100 - JI)^2 + alpha^2 RMSE^2), percent (Sage et al. 2019).

    Arguments:
        jaccard_percent: JI in percent.
        rmse_nm: RMSE in nm.
        alpha_per_nm: weight in nm^-1 (challenge: 1 lateral, 0.5 axial).
    """
    return 100.0 - math.sqrt((100.0 - jaccard_percent) ** 2 + (alpha_per_nm * rmse_nm) ** 2)


def challenge_metrics(
    result: MatchResult, alpha_lateral_per_nm: float = 1.0, alpha_axial_per_nm: float = 0.5
) -> ChallengeMetrics:
    """The SMLM Challenge 2016 scores of a matching (definitions in :class:`ChallengeMetrics`).

    Arguments:
        result: from :func:`match`.
        alpha_lateral_per_nm, alpha_axial_per_nm: efficiency weights (challenge: 1 and 0.5 nm^-1).
    """
    tp, fp, fn = result.tp, result.fp, result.fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    jaccard = 100.0 * _ratio(tp, tp + fp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall) if tp else (0.0 if tp + fp + fn else math.nan)
    dx, dy, dz = (np.asarray(d, np.float64) for d in (result.dx_nm, result.dy_nm, result.dz_nm))
    mean = lambda v: float(np.mean(v)) if tp else math.nan  # noqa: E731
    rmse_lat = math.sqrt(mean(dx * dx + dy * dy))
    rmse_ax = math.sqrt(mean(dz * dz)) if result.is_3d else math.nan
    rmse_vol = math.sqrt(mean(dx * dx + dy * dy + dz * dz)) if result.is_3d else math.nan
    eff_lat = efficiency(jaccard, rmse_lat, alpha_lateral_per_nm)
    eff_ax = efficiency(jaccard, rmse_ax, alpha_axial_per_nm)
    return ChallengeMetrics(
        n_truth=result.n_truth,
        n_estimate=result.n_estimate,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        jaccard=jaccard,
        f1=f1,
        rmse_lateral_nm=rmse_lat,
        rmse_axial_nm=rmse_ax,
        rmse_volume_nm=rmse_vol,
        bias_x_nm=mean(dx),
        bias_y_nm=mean(dy),
        bias_z_nm=mean(dz) if result.is_3d else math.nan,
        efficiency_lateral=eff_lat,
        efficiency_axial=eff_ax,
        efficiency_volume=0.5 * (eff_lat + eff_ax),
    )


def evaluate(truth: Localizations, estimate: Localizations, **options) -> ChallengeMetrics:
    """:func:`match` then :func:`challenge_metrics`; ``options`` go to :func:`match` (tolerances,
    method, border) or to :func:`challenge_metrics` (``alpha_lateral_per_nm``, ``alpha_axial_per_nm``)."""
    alphas = {k: options.pop(k) for k in ("alpha_lateral_per_nm", "alpha_axial_per_nm") if k in options}
    return challenge_metrics(match(truth, estimate, **options), **alphas)


_TABLE_COLUMNS = (
    ("TP", "tp", "{:d}"),
    ("FP", "fp", "{:d}"),
    ("FN", "fn", "{:d}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("JI %", "jaccard", "{:.1f}"),
    ("RMSE lat nm", "rmse_lateral_nm", "{:.1f}"),
    ("RMSE ax nm", "rmse_axial_nm", "{:.1f}"),
    ("E lat %", "efficiency_lateral", "{:.1f}"),
    ("E ax %", "efficiency_axial", "{:.1f}"),
    ("E vol %", "efficiency_volume", "{:.1f}"),
)


def metrics_table(results: dict[str, ChallengeMetrics]) -> str:
    """A markdown table, one row per method: counts, precision, recall, Jaccard, RMSEs, efficiencies.

    Arguments:
        results: method name -> its :class:`ChallengeMetrics`; NaN shows as ``-``.
    """
    lines = [
        "| method | " + " | ".join(title for title, _, _ in _TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(_TABLE_COLUMNS),
    ]
    for name, metrics in results.items():
        cells = []
        for _, field, fmt in _TABLE_COLUMNS:
            value = getattr(metrics, field)
            cells.append("-" if isinstance(value, float) and math.isnan(value) else fmt.format(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# voxel metrics (Aritake et al. 2021)


@dataclasses.dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid over (z, y, x): voxel (k, i, j) spans z in [z0 + k vz, z0 + (k+1) vz), y in
    [y0 + i vy, ...), x in [x0 + j vx, ...) nm.

    Fields:
        shape: (planes_z, ny, nx) voxels.
        voxel_nm: (vz, vy, vx) voxel sides in nm.
        origin_nm: (z0, y0, x0), the outer corner of voxel (0, 0, 0) in nm.
    """

    shape: tuple[int, int, int]
    voxel_nm: tuple[float, float, float]
    origin_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def index(self, locs: Localizations) -> tuple[np.ndarray, Int[np.ndarray, "n 3"]]:
        """(inside, (k, i, j) per row): k = floor((z - z0) / vz) etc.; ``inside`` marks rows whose
        voxel lies in the grid. A NaN z counts as plane 0 when the grid has one plane."""
        z = np.asarray(locs.z_nm, np.float64)
        if self.shape[0] == 1:
            z = np.where(np.isfinite(z), z, self.origin_nm[0])
        coords = np.stack([z, np.asarray(locs.y_nm, np.float64), np.asarray(locs.x_nm, np.float64)], axis=1)
        with np.errstate(invalid="ignore"):
            scaled = np.floor((coords - np.asarray(self.origin_nm)) / np.asarray(self.voxel_nm))
        inside = np.all(np.isfinite(scaled) & (scaled >= 0) & (scaled < np.asarray(self.shape)), axis=1)
        return inside, np.where(np.isfinite(scaled), scaled, -1).astype(np.int64)


ARITAKE_VOXEL_GRID = VoxelGrid(shape=(4, 64, 64), voxel_nm=(387.5, 192.0, 192.0), origin_nm=(-200.0, 0.0, 0.0))
"""The voxel grid of Aritake et al. 2021 (64 x 64 pixels of 192 nm, 4 planes; z in [-200, 1350) nm
cut into 4 voxels of 387.5 nm, as in the authors' released code)."""


class VoxelConfusion(NamedTuple):
    """A voxel-wise confusion matrix (Aritake et al. 2021, Table 4) and its scores.

    Fields:
        tp, fp, fn, tn: voxel counts (predicted occupied and occupied; predicted and empty; missed;
            correctly empty).
        precision = TP / (TP + FP), recall = TP / (TP + FN), jaccard = TP / (TP + FP + FN): fractions
            (NaN on a zero denominator).
    """

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    jaccard: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, tn: int) -> VoxelConfusion:
        """The scores of given counts."""
        return cls(tp, fp, fn, tn, _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tp, tp + fp + fn))


def voxel_labels(truth: Localizations, n_frames: int, grid: VoxelGrid) -> Bool[np.ndarray, "frames planes ny nx"]:
    """True voxel labels: voxel (k, i, j) of frame f is occupied when a true molecule of frame f
    lies in it (index = floor((position - origin) / voxel size), see :class:`VoxelGrid`).

    Molecules outside the grid or outside frames [0, n_frames) are ignored; two in one voxel make
    one occupied voxel.

    Arguments:
        truth: the true molecules.
        n_frames: number of frames.
        grid: the voxel grid.

    Returns:
        bool (n_frames, planes_z, ny, nx).
    """
    inside, kij = grid.index(truth)
    frame = np.asarray(truth.frame, np.int64)
    inside &= (frame >= 0) & (frame < n_frames)
    labels = np.zeros((int(n_frames), *grid.shape), bool)
    labels[frame[inside], kij[inside, 0], kij[inside, 1], kij[inside, 2]] = True
    return labels


def voxel_confusion(
    probability: Float[np.ndarray, "frames planes ny nx"],
    labels: Bool[np.ndarray, "frames planes ny nx"],
    threshold: float = 0.5,
) -> VoxelConfusion:
    """The voxel-wise confusion matrix of predicted probabilities against true labels, over all voxels.

    A voxel is predicted occupied when its probability > ``threshold`` (Aritake et al. 2021 report
    TP 22,878, FN 2,089, FP 1,844, TN 8,165,189 at 0.5 in their Table 4: precision 0.925, recall
    0.916).

    Arguments:
        probability: predicted occupancy probabilities (NumPy or JAX), any shape.
        labels: true occupancy, same shape (e.g. from :func:`voxel_labels`).
        threshold: detection threshold.

    Raises:
        InputError: shapes differ.
    """
    predicted = np.asarray(probability) > threshold
    truth = np.asarray(labels).astype(bool)
    if predicted.shape != truth.shape:
        raise InputError(f"voxel probabilities of shape {predicted.shape} but labels of shape {truth.shape}")
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return VoxelConfusion.from_counts(tp, fp, fn, truth.size - tp - fp - fn)


def fine_voxel_jaccard(
    truth: Localizations,
    estimate: Localizations,
    voxel_nm: tuple[float, float, float] = (50.0, 24.0, 24.0),
    origin_nm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> float:
    """The Jaccard index of the authors' released code (Aritake et al. 2021, released code).

    Positions are cut into bins of ``voxel_nm`` = (vz, vy, vx) (24 x 24 x 50 nm there) and the
    occupied bins compared: |U_est ∩ U_true| / |U_est ∪ U_true|, U the set of distinct
    (frame, bin) keys, i.e. the per-frame intersections and unions summed over frames. A fraction
    in [0, 1], NaN when both are empty. It rewards a bin-exact hit and nothing else: not
    comparable to the challenge Jaccard of :func:`challenge_metrics` (tolerance matching at
    250/500 nm, percent). A NaN z (2D) is binned as z = origin.

    Arguments:
        truth, estimate: the tables.
        voxel_nm: bin sides (vz, vy, vx) in nm.
        origin_nm: (z0, y0, x0), corner of bin (0, 0, 0) in nm.
    """

    def keys(locs: Localizations) -> np.ndarray:
        z = np.asarray(locs.z_nm, np.float64)
        z = np.where(np.isfinite(z), z, origin_nm[0])
        coords = np.stack([z, np.asarray(locs.y_nm, np.float64), np.asarray(locs.x_nm, np.float64)], axis=1)
        bins = np.floor((coords - np.asarray(origin_nm)) / np.asarray(voxel_nm)).astype(np.int64)
        rows = np.column_stack([np.asarray(locs.frame, np.int64), bins])
        return np.unique(rows, axis=0) if len(rows) else rows.reshape(0, 4)

    a, b = keys(truth), keys(estimate)
    union = np.unique(np.concatenate([a, b]), axis=0).shape[0]
    return _ratio(a.shape[0] + b.shape[0] - union, union)
