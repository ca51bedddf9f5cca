"""FRAP of an image stack: circular ROI -> recovery curve -> least-squares (D, c0, alpha).

The steps behind ``fluojax frap fit`` (and the data side of ``fluojax frap predict``):

1. **ROI** ``circle:X,Y,R`` (:func:`parse_roi`) in pixel coordinates of the stack: x = column,
   y = row, pixel j spans ``[j, j + 1]`` (so pixel centres are at ``j + 1/2``, as in ImageJ and in
   :mod:`fluojax.frap.models`); R in pixels. The circle must lie fully inside the image. It is
   both the bleach region of the model and the ROI of the recovery curve (DeepFRAP:
   Wåhlstrand Skärström et al. 2021, eq. 6).
2. **Square window.** The solver works on an ``N x N`` image (plus ``pad`` pixels on each side,
   periodic). A square stack is used whole (``N`` = its side). A non-square ``Y x X`` stack is
   cropped to the ``N x N`` square, ``N = min(Y, X)``, that contains the ROI and is centred on it
   as far as the image allows (:func:`square_window`); the crop origin goes into summary.json.
   With the model's beta = 1 (no imaging bleach) only the ROI pixels and the size of the periodic
   domain ``L = N + 2 pad`` matter, so this crop changes nothing but ``L``. Default
   ``pad = N // 2`` (DeepFRAP: 256 + 2 x 128), reduced where needed to keep ``L`` at most
   :data:`MAX_GRID_PX`; a given pad is refused above ``MAX_PAD_FACTOR N`` or when ``L`` would
   exceed :data:`MAX_GRID_PX` (:func:`check_pad`).
3. **Checks** (:func:`check_stack`; each failure is one :class:`fluojax.io.InputError` line):
   at least :data:`MIN_POSTBLEACH` postbleach frames (``frames - n_prebleach``), ROI inside the
   image, finite values, not more than :data:`MAX_SATURATED_FRACTION` of the ROI pixels at the
   integer type's maximum in any frame (float stacks are not checked for saturation), ROI
   intensity not constant, positive prebleach ROI mean.
4. **Curve** (:func:`roi_curve`): ``F(t) = sum_xy w I(x, y, t)``, w the area-fraction disk of
   ``circular_region`` normalised to sum 1 (a weighted ROI mean, in the stack's intensity units).
5. **Normalisation** (:func:`normalise_curve`): ``F / mean(F_prebleach) * 0.75`` so that c0 is
   near the middle of DeepFRAP's c0 prior [0.5, 1], where the fit's bounds and starts and the
   networks' training data live; c0 and the noise variance are reported back in stack units.
6. **D range** (:func:`default_d_range_px2_s`): the curve depends on D only through
   ``D dt / R^2`` (and pixelation), so DeepFRAP's table range 1-3000 px^2/s at dt = 0.265 s,
   R = 19.742 px is rescaled to the data's dt and R and widened 10x each way (a table 1e5 wide in
   D with 48 Chebyshev nodes is accurate to below 1e-6 of c0, :data:`TABLE_NODES`; the table's
   error estimate is reported). Random starts come from DeepFRAP's D prior rescaled the same way.
7. **Fit** (:func:`fit_prepared`): ``fluojax.frap.estimate.fit_recovery_curves`` (multistart LM,
   95 % Wald intervals, noise variance from the residuals) on a ``FastCurveTable`` of this
   geometry and these settings.
8. **Status** (:func:`fit_status`, codes in :class:`FrapStatus`): the engine's status, unless
   the fit converged but means nothing: NO_BLEACH when the bleach is indistinguishable from none
   (alpha's 95 % interval reaches 1), UNDETERMINED when D's 95 % interval spans more than a
   decade (:data:`MAX_D_CI_RATIO`) or has an open end. A fit counts as successful
   (:func:`fit_ok`) when its status is CONVERGED or AT_BOUND and its parameters are finite.

Timings, in s, are collected in a dict (``read``, ``table``, ``fit``) by the callers.
"""

from __future__ import annotations

import enum
import math
import re
import time
from typing import NamedTuple

import jax
import numpy as np

from fluojax import fit as fitlib
from fluojax.frap import estimate
from fluojax.frap.models import (
    DEEPFRAP_DT_S,
    DEEPFRAP_RADIUS_PX,
    BleachGeometry,
    FastCurveTable,
    FrapParams,
    FrapSettings,
    build_fast_curve_table,
    circular_region,
    recovery_curve_fast,
)
from fluojax.io import InputError

__all__ = [
    "MAX_D_CI_RATIO",
    "MAX_GRID_PX",
    "MAX_PAD_FACTOR",
    "MAX_SATURATED_FRACTION",
    "MIN_POSTBLEACH",
    "NORMALISED_LEVEL",
    "RESIDUAL_RATIO_LIMIT",
    "CircleROI",
    "FrapStatus",
    "NetworkPrediction",
    "NetworkRefinement",
    "PreparedStack",
    "build_table",
    "check_pad",
    "check_stack",
    "default_d_range_px2_s",
    "finite_or_none",
    "fit_ok",
    "fit_prepared",
    "fit_prior",
    "fit_status",
    "fit_summary",
    "model_curve",
    "normalise_curve",
    "parse_roi",
    "predict_prepared",
    "prepare_stack",
    "refine_prepared",
    "roi_curve",
    "settings_summary",
    "square_window",
    "status_name",
    "status_reason",
]

MIN_POSTBLEACH = 3
"""Fewest postbleach frames accepted (D and alpha are set by the postbleach values, plus one
degree of freedom for the noise estimate)."""
MAX_SATURATED_FRACTION = 0.01
"""Largest accepted fraction of ROI pixels that reach the integer type's maximum in some frame."""
NORMALISED_LEVEL = 0.75
"""Prebleach ROI mean after normalisation: the middle of DeepFRAP's c0 prior [0.5, 1]."""
DEEPFRAP_D_RANGE_PX2_S = (1.0, 3000.0)
"""``build_fast_curve_table``'s default range, for DeepFRAP's dt and radius."""
DEEPFRAP_START_RANGE_PX2_S = (1.7322, 1732.2)
"""DeepFRAP's D prior (1-1000 um^2/s at 0.7598 um pixels) in px^2/s."""
D_RANGE_WIDENING = 10.0
MAX_PAD_FACTOR = 4
"""Largest pad, in units of the window side N: the periodic copies of the bleach are then 9 N
apart, far beyond the region the data describe; a wider domain changes nothing but the cost."""
MAX_GRID_PX = 2048
"""Largest solver grid side ``N + 2 pad``. Building the table costs K spectral solves on the
grid, each ~ L^2 log L: ~20 times the cost of DeepFRAP's 512 px grid at 2048 px, ~190 times at
6000 px (timings in docs/benchmarks.md)."""
TABLE_NODES = 48
"""Chebyshev nodes of the fit's table: over the default 5.5 decades of D its error estimate is
~2e-7 to 5e-7 of c0 (64 nodes: ~3e-9), below the ~1e-6 float32 rounding of the fast curve; fewer
nodes make a smaller Levenberg-Marquardt program to compile."""


class CircleROI(NamedTuple):
    """Circular ROI in pixel coordinates of the stack (x = column, y = row; pixel j spans [j, j+1]).

    Attributes:
        x, y: centre in pixels.
        r: radius in pixels.
    """

    x: float
    y: float
    r: float

    def text(self) -> str:
        return f"circle:{self.x:g},{self.y:g},{self.r:g}"


class PreparedStack(NamedTuple):
    """A checked stack reduced to its recovery curve (host NumPy data).

    Attributes:
        settings: ``FrapSettings`` of the data (N = window side, pad, frame counts, dt).
        geometry: ``BleachGeometry`` of the ROI in the window.
        roi: the ROI in stack coordinates.
        window: (x0, y0, n): column and row of the window's first pixel, and its side.
        curve: (n_prebleach + n_postbleach,) float64 weighted ROI mean, stack intensity units.
        prebleach_mean: mean of the prebleach values of ``curve`` (stack units).
        normalised: ``curve`` scaled so that its prebleach mean is :data:`NORMALISED_LEVEL`.
    """

    settings: FrapSettings
    geometry: BleachGeometry
    roi: CircleROI
    window: tuple[int, int, int]
    curve: np.ndarray
    prebleach_mean: float
    normalised: np.ndarray

    @property
    def scale(self) -> float:
        """Stack intensity units per normalised unit: ``prebleach_mean / NORMALISED_LEVEL``."""
        return self.prebleach_mean / NORMALISED_LEVEL


_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_CIRCLE = re.compile(rf"^circle:{_NUMBER},{_NUMBER},{_NUMBER}$")


def parse_roi(text: str) -> CircleROI:
    """Parse ``circle:X,Y,R`` (pixels; x = column, y = row, pixel j spans [j, j+1]).

    Raises:
        InputError: any other form, or R not positive.
    """
    m = _CIRCLE.match(str(text).strip())
    if not m:
        raise InputError(
            f"ROI {text!r}: expected circle:X,Y,R in pixels (x = column, y = row), e.g. circle:128,128,19.7"
        )
    x, y, r = (float(v) for v in m.groups())
    if not r > 0:
        raise InputError(f"ROI {text!r}: radius {r:g} px, must be > 0")
    return CircleROI(x, y, r)


def square_window(shape_yx: tuple[int, int], roi: CircleROI) -> tuple[int, int, int]:
    """The ``n x n`` window (``n = min(Y, X)``) used for a ``Y x X`` image: the whole image when
    square, else the square that contains the ROI and is centred on it as far as the image allows.

    Arguments:
        shape_yx: (Y, X) image shape in pixels.
        roi: ``CircleROI`` lying inside the image.

    Returns:
        (x0, y0, n): first column, first row, side, in pixels.

    Raises:
        InputError: the ROI does not fit in any such square (only when 2 R is close to n).
    """
    ny, nx = (int(v) for v in shape_yx)
    n = min(ny, nx)

    def origin(centre, length):
        return int(min(max(math.floor(centre - 0.5 * n + 0.5), 0), length - n))

    x0, y0 = origin(roi.x, nx), origin(roi.y, ny)
    if not (roi.x - roi.r >= x0 and roi.x + roi.r <= x0 + n and roi.y - roi.r >= y0 and roi.y + roi.r <= y0 + n):
        raise InputError(
            f"ROI {roi.text()}: a disk of radius {roi.r:g} px does not fit in a {n} x {n} px square window "
            f"of the {nx} x {ny} px (X x Y) image"
        )
    return x0, y0, n


def check_pad(n: int, pad: int | None) -> int:
    """The solver padding for an ``n``-px square: ``pad`` checked, or the default.

    Arguments:
        n: side of the analysed square in pixels.
        pad: padding per side in pixels, or None for the default ``n // 2`` (reduced so that the
            grid ``n + 2 pad`` stays at most :data:`MAX_GRID_PX`).

    Returns:
        pad in pixels.

    Raises:
        InputError: a negative pad, a pad above ``MAX_PAD_FACTOR n``, a grid above ``MAX_GRID_PX``.
    """
    n = int(n)
    if n > MAX_GRID_PX:
        raise InputError(
            f"the analysed square is {n} px wide; the solver grid is at most {MAX_GRID_PX} px per side "
            f"(its cost grows as its area): crop the stack around the ROI"
        )
    if pad is None:
        return max(0, min(n // 2, (MAX_GRID_PX - n) // 2))
    pad = int(pad)
    if pad < 0:
        raise InputError(f"solver padding {pad} px: must be >= 0")
    if pad > MAX_PAD_FACTOR * n:
        raise InputError(
            f"solver padding {pad} px: at most {MAX_PAD_FACTOR} x the {n}-px square's side ({MAX_PAD_FACTOR * n} px); "
            f"a wider periodic domain changes nothing but the run time"
        )
    if n + 2 * pad > MAX_GRID_PX:
        raise InputError(
            f"solver padding {pad} px: the solver grid would be {n + 2 * pad} px per side, above the {MAX_GRID_PX} px "
            f"allowed (a padding of {(MAX_GRID_PX - n) // 2} px or less; the table's cost grows as the grid's area)"
        )
    return pad


def _roi_inside(shape_yx, roi: CircleROI) -> None:
    ny, nx = shape_yx
    if not (roi.x - roi.r >= 0 and roi.y - roi.r >= 0 and roi.x + roi.r <= nx and roi.y + roi.r <= ny):
        raise InputError(
            f"ROI {roi.text()}: the circle is not fully inside the {nx} x {ny} px (X x Y) image "
            f"(needs R <= X <= {nx} - R and R <= Y <= {ny} - R)"
        )


def check_stack(stack, roi: CircleROI, n_prebleach: int) -> None:
    """Shape-level checks that need no pixel data beyond the shape: frames and ROI position.

    Arguments:
        stack: (T, Y, X) array.
        roi: ``CircleROI``.
        n_prebleach: recorded prebleach frames (>= 1).

    Raises:
        InputError: fewer than ``n_prebleach + MIN_POSTBLEACH`` frames, ROI not inside the image.
    """
    if stack.ndim != 3:
        raise InputError(f"expected a (frames, Y, X) stack, got shape {stack.shape}")
    frames = int(stack.shape[0])
    if n_prebleach < 1:
        raise InputError(f"{n_prebleach} prebleach frames: at least one is needed (it sets c0)")
    if frames - n_prebleach < MIN_POSTBLEACH:
        raise InputError(
            f"{frames} frames with {n_prebleach} prebleach frames: at least {n_prebleach + MIN_POSTBLEACH} "
            f"frames are needed ({MIN_POSTBLEACH} postbleach frames after the prebleach ones)"
        )
    _roi_inside(stack.shape[1:], roi)


def _check_values(stack, window_data: np.ndarray, inside: np.ndarray, n_prebleach: int) -> None:
    """Value checks: finite, not saturated, not constant (see the module docstring)."""
    if np.issubdtype(stack.dtype, np.floating) and not np.all(np.isfinite(window_data)):
        bad = int(np.sum(~np.isfinite(window_data)))
        raise InputError(f"the stack has {bad} non-finite values (NaN or inf) in the analysed window")
    roi_pixels = window_data[:, inside]  # (T, pixels touching the ROI)
    if np.issubdtype(stack.dtype, np.integer):
        top = np.iinfo(stack.dtype).max
        saturated = np.any(roi_pixels >= top, axis=0)
        fraction = float(saturated.mean())
        if fraction > MAX_SATURATED_FRACTION:
            raise InputError(
                f"saturated stack: {fraction:.1%} of the ROI pixels reach the {stack.dtype} maximum {top} "
                f"(at most {MAX_SATURATED_FRACTION:.0%} allowed)"
            )
    if float(np.ptp(roi_pixels)) == 0.0:
        raise InputError(f"constant stack: every ROI pixel has the value {roi_pixels.flat[0]:g} in every frame")


def roi_curve(window_data: np.ndarray, geometry: BleachGeometry) -> np.ndarray:
    """Weighted ROI mean of every frame, ``F(t) = sum_xy w(x, y) I(x, y, t)``
    (Wåhlstrand Skärström et al. 2021, eq. 6).

    Arguments:
        window_data: (T, N, N) intensities (any units).
        geometry: ``BleachGeometry`` whose ``roi_weights`` (sum 1) are used.

    Returns:
        (T,) float64 curve, in the units of the data.
    """
    w = np.asarray(geometry.roi_weights, np.float64)
    return np.einsum("tij,ij->t", np.asarray(window_data, np.float64), w)


def normalise_curve(curve: np.ndarray, n_prebleach: int) -> tuple[np.ndarray, float]:
    """Scale a curve so that its prebleach mean is :data:`NORMALISED_LEVEL`.

    Returns:
        (normalised curve, prebleach mean in the curve's units).

    Raises:
        InputError: non-positive prebleach mean.
    """
    pre = float(np.mean(curve[:n_prebleach]))
    if not pre > 0:
        raise InputError(
            f"the prebleach ROI mean is {pre:g}: FRAP needs positive intensities (subtract less background?)"
        )
    return curve * (NORMALISED_LEVEL / pre), pre


def prepare_stack(
    stack, roi: CircleROI, n_prebleach: int, n_bleach: int, dt_s: float, pad: int | None = None
) -> PreparedStack:
    """Check a (T, Y, X) stack and reduce it to its normalised ROI recovery curve.

    Arguments:
        stack: (T, Y, X) array (ndarray or memmap); frames are n_prebleach then postbleach frames.
        roi: ``CircleROI`` in stack pixel coordinates.
        n_prebleach: recorded frames before the bleach.
        n_bleach: bleach frames (not recorded; each lasts dt).
        dt_s: frame interval in s.
        pad: padding of the periodic solver grid in pixels (default and bounds: :func:`check_pad`).

    Returns:
        ``PreparedStack``.

    Raises:
        InputError: see :func:`check_stack` and the module docstring.
    """
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise InputError(f"frame interval {dt_s:g} s: must be > 0")
    if n_bleach < 1:
        raise InputError(f"{n_bleach} bleach frames: at least one is needed")
    check_stack(stack, roi, n_prebleach)
    x0, y0, n = square_window(stack.shape[1:], roi)
    settings = FrapSettings(
        n_pixels=n,
        pad=check_pad(n, pad),
        n_prebleach=int(n_prebleach),
        n_bleach=int(n_bleach),
        n_postbleach=int(stack.shape[0]) - int(n_prebleach),
        dt_s=float(dt_s),
    )
    geometry = circular_region(settings, roi.r, (roi.x - x0, roi.y - y0))
    data = np.asarray(stack[:, y0 : y0 + n, x0 : x0 + n])
    _check_values(stack, data, np.asarray(geometry.indicator) > 0, n_prebleach)
    curve = roi_curve(data, geometry)
    normalised, pre = normalise_curve(curve, n_prebleach)
    return PreparedStack(settings, geometry, roi, (x0, y0, n), curve, pre, normalised)


def default_d_range_px2_s(dt_s: float, radius_px: float) -> tuple[float, float]:
    """D range (px^2/s) of the fit: DeepFRAP's 1-3000 px^2/s rescaled to dt and R, widened 10x.

    The curve depends on D through ``D dt / R^2``, so the range is
    ``(1, 3000) * (0.265 s / dt) * (R / 19.742 px)^2`` times ``(1/10, 10)``.
    """
    s = (DEEPFRAP_DT_S / dt_s) * (radius_px / DEEPFRAP_RADIUS_PX) ** 2
    lo, hi = DEEPFRAP_D_RANGE_PX2_S
    return lo * s / D_RANGE_WIDENING, hi * s * D_RANGE_WIDENING


def fit_prior(dt_s: float, radius_px: float, d_range_px2_s: tuple[float, float]):
    """``FrapPrior`` for the starts and c0/alpha bounds, with D in px^2/s (no pixel size needed).

    D starts: DeepFRAP's prior (1.73-1732 px^2/s) rescaled like :func:`default_d_range_px2_s`,
    clipped into ``d_range_px2_s``; c0 in [0.5, 1] (bounds [0.25, 2]) around the normalised
    level 0.75; alpha in [0.1, 0.95] (bounds [0.05, 1]), wider than DeepFRAP's 0.45 so that deep
    single-frame bleaches are inside the bounds.
    """
    from fluojax.frap.simulate import FrapPrior

    s = (DEEPFRAP_DT_S / dt_s) * (radius_px / DEEPFRAP_RADIUS_PX) ** 2
    lo, hi = (v * s for v in DEEPFRAP_START_RANGE_PX2_S)
    lo, hi = max(lo, d_range_px2_s[0]), min(hi, d_range_px2_s[1])
    if not lo < hi:
        lo, hi = d_range_px2_s
    return FrapPrior(d_px2_s_range=(lo, hi), c0_range=(0.5, 1.0), alpha_range=(0.1, 0.95), pixel_size_um=None)


def _prior_of(prepared: PreparedStack, table: FastCurveTable):
    """:func:`fit_prior` of a prepared stack and its table (the starts and bounds of every fit)."""
    return fit_prior(prepared.settings.dt_s, prepared.roi.r, table.d_range_px2_s)


def build_table(prepared: PreparedStack, d_range_px2_s: tuple[float, float] | None = None) -> FastCurveTable:
    """``FastCurveTable`` of the prepared stack's geometry and settings (default D range from
    :func:`default_d_range_px2_s`)."""
    rng = d_range_px2_s or default_d_range_px2_s(prepared.settings.dt_s, prepared.roi.r)
    return build_fast_curve_table(
        prepared.geometry, prepared.settings, (float(rng[0]), float(rng[1])), n_nodes=TABLE_NODES
    )


def fit_prepared(prepared: PreparedStack, table: FastCurveTable, *, n_starts: int = 30, seed: int = 0):
    """Fit (D px^2/s, c0, alpha) to the normalised curve of ``prepared``.

    Returns:
        ``fluojax.frap.estimate.FrapFit`` for one curve, **in normalised units** (c0 and the noise
        variance scale with ``prepared.scale`` and its square).
    """
    prior = _prior_of(prepared, table)
    return estimate.fit_recovery_curves(
        prepared.normalised, table, key=jax.random.key(seed), n_starts=n_starts, prior=prior
    )


def fit_ok(status: int, params) -> bool:
    """True when a fit's status (:class:`FrapStatus` code) is CONVERGED or AT_BOUND and its
    parameters are finite (NO_BLEACH and UNDETERMINED fits are not ok)."""
    return bool(fitlib.succeeded(int(status), np.asarray(params), np))


MAX_D_CI_RATIO = 10.0
"""Widest accepted 95 % interval of D, upper / lower: beyond a decade D is not determined."""


class FrapStatus(enum.IntEnum):
    """FRAP's own status codes, after :class:`fluojax.fit.Status`'s 0-5: two for fits that
    converged but are not meaningful (see :func:`fit_status`)."""

    NO_BLEACH = fitlib.FIRST_TECHNIQUE_CODE
    """The bleach depth is indistinguishable from none: alpha's 95 % interval reaches 1."""
    UNDETERMINED = 7
    """D's 95 % interval spans more than :data:`MAX_D_CI_RATIO`, or has an open end."""


def status_name(code: int) -> str:
    """The name of a FRAP status code, :class:`fluojax.fit.Status`'s or :class:`FrapStatus`'s
    (the code as text when it has none)."""
    return fitlib.status_name(code, FrapStatus)


def fit_status(result) -> np.ndarray:
    """FRAP status of each fit: the engine's, or NO_BLEACH / UNDETERMINED for converged fits that mean nothing.

    A converged (or at-bound) fit with finite parameters is

    * **NO_BLEACH** when the upper limit of alpha's 95 % interval is >= 1 (or not finite). The
      bleach depth is ``c0 (1 - alpha^n_bleach)``, zero exactly at alpha = 1; by the delta method
      its z-score is ``(1 - alpha^n) / (n alpha^(n-1) sd_alpha)``, which for alpha near 1 is
      ``(1 - alpha) / sd_alpha``. An interval reaching 1 is therefore a depth within ~1.96 of its
      standard errors of zero: the data cannot tell this bleach from none (a one-sided test at
      2.5 %, at the level of the intervals the fit reports). With no bleach, D has no effect on
      the curve and any value fits.
    * **UNDETERMINED** otherwise, when D's 95 % interval spans more than :data:`MAX_D_CI_RATIO`
      (upper / lower > 10, i.e. sd(ln D) > ln 10 / (2 x 1.96) = 0.59) or has an open end
      (non-finite or non-positive limit): the data fix D to less than a decade.

    Arguments:
        result: ``fluojax.frap.estimate.FrapFit`` (B fits).

    Returns:
        (B,) int array of :class:`FrapStatus` codes.
    """
    status = np.asarray(result.status, np.int64).copy()
    params, lower, upper = (np.asarray(a, np.float64) for a in (result.params, result.ci_lower, result.ci_upper))
    good = fitlib.succeeded(status, params, np)
    with np.errstate(invalid="ignore", divide="ignore"):
        no_bleach = ~(upper[:, 2] < 1.0)  # NaN counts as reaching 1
        open_end = ~(np.isfinite(lower[:, 0]) & np.isfinite(upper[:, 0]) & (lower[:, 0] > 0))
        wide = ~(upper[:, 0] / lower[:, 0] <= MAX_D_CI_RATIO)
    status = np.where(good & no_bleach, FrapStatus.NO_BLEACH, status)
    status = np.where(good & ~no_bleach & (open_end | wide), FrapStatus.UNDETERMINED, status)
    return status


def status_reason(status: int, params, ci_lower, ci_upper) -> str:
    """Why a fit of :class:`FrapStatus` ``status`` is not ok, in a few words (empty when it is).

    Arguments:
        status: the code from :func:`fit_status`.
        params, ci_lower, ci_upper: (3,) (D px^2/s, c0, alpha) and their 95 % limits.
    """
    status = int(status)
    if fitlib.succeeded(status, np.asarray(params), np):
        return ""
    if status == FrapStatus.NO_BLEACH:
        return (
            f"no bleach in the data: the fraction left per bleach frame, alpha = {params[2]:.4g} "
            f"(95 % CI up to {ci_upper[2]:.4g}), is indistinguishable from 1, so D is not measurable "
            f"(check the numbers of prebleach and bleach frames and the ROI)"
        )
    if status == FrapStatus.UNDETERMINED:
        lo, hi = float(ci_lower[0]), float(ci_upper[0])
        if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
            return f"D is not determined: its 95 % CI spans a factor {hi / lo:.3g} (more than {MAX_D_CI_RATIO:g})"
        return "D is not determined: its 95 % CI has an open end"
    return f"the fit did not converge (status {status_name(status)})"


def model_curve(params, table: FastCurveTable) -> np.ndarray:
    """The fast model curve at (D px^2/s, c0, alpha) (normalised units), NaN for NaN params."""
    params = np.asarray(params, np.float64)
    if not np.all(np.isfinite(params)):
        return np.full(table.n_frames, np.nan)
    return np.asarray(
        recovery_curve_fast(FrapParams(float(params[0]), float(params[1]), float(params[2])), table), np.float64
    )


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Summaries (what `fluojax frap fit`/`predict` write to summary.json)


def finite_or_none(value):
    """float, or None for NaN/inf (strict JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def fit_summary(prepared: PreparedStack, table: FastCurveTable, result, pixel_um: float) -> tuple[dict, np.ndarray]:
    """The fitted parameters in physical units, the status and the model curve of one fit.

    Arguments:
        prepared: the ``PreparedStack`` that was fitted.
        table: the ``FastCurveTable`` of the fit.
        result: ``fluojax.frap.estimate.FrapFit`` of the one curve, in normalised units
            (:func:`fit_prepared`, or ``learned.refine(...).fit``).
        pixel_um: pixel side in um.

    Returns:
        (summary, model): a JSON-ready dict (status and its reason, D in um^2/s and px^2/s, c0
        in stack units, alpha, each with value, 95 % interval and standard error; the noise
        variance; reduced chi^2; the RSS in stack units), and the model curve at the fitted
        parameters in stack units ((T,) float64; NaN when the fit failed).
    """
    from fluojax.frap.models import d_px2_s_to_um2_s
    from fluojax.frap.simulate import roi_effective_pixels

    num = finite_or_none
    p, lo, hi, sd = (
        np.asarray(a, np.float64)[0] for a in (result.params, result.ci_lower, result.ci_upper, result.stderr)
    )
    scale = prepared.scale
    um = lambda v: d_px2_s_to_um2_s(v, pixel_um)  # noqa: E731

    def est(value, lower, upper, stderr, unit):
        return {"value": num(value), "ci95": [num(lower), num(upper)], "stderr": num(stderr), "unit": unit}

    status = int(fit_status(result)[0])
    noise = float(result.noise_variance[0]) * scale**2
    model = model_curve(p, table) * scale
    return {
        "status": status_name(status),
        "status_code": status,
        "ok": fit_ok(status, p),
        "status_reason": status_reason(status, p, lo, hi) or None,
        "engine_status": status_name(result.status[0]),
        "D_um2_s": est(um(p[0]), um(lo[0]), um(hi[0]), um(sd[0]), "um^2/s"),
        "D_px2_s": est(p[0], lo[0], hi[0], sd[0], "px^2/s"),
        "c0": est(p[1] * scale, lo[1] * scale, hi[1] * scale, sd[1] * scale, "stack intensity"),
        "c0_over_prebleach_mean": num(p[1] / NORMALISED_LEVEL),
        "alpha": est(p[2], lo[2], hi[2], sd[2], "fraction left per bleach frame"),
        "noise_variance": {
            "curve": num(noise),
            "pixel_equivalent": num(noise * roi_effective_pixels(prepared.geometry)),
            "unit": "stack intensity^2",
            "what": "residual variance of one ROI-curve value, RSS/(n - 3); pixel_equivalent = curve x effective ROI pixels "
            "(the per-pixel variance a if pixel noise is independent and constant)",
        },
        "chi2_reduced": num(result.chi2_reduced[0]),
        "rss": num(np.sum((prepared.curve - model) ** 2)),
    }, model


def settings_summary(prepared: PreparedStack, table: FastCurveTable, pixel_um: float, stack_path) -> dict:
    """The analysis settings of a prepared stack, JSON-ready: frames, dt (s), pixel size (um), ROI
    and window (px), solver padding and grid (px), normalisation, the table's D range (px^2/s and
    um^2/s) and its error estimate.

    Arguments:
        prepared: ``PreparedStack``.
        table: the ``FastCurveTable`` of the fit.
        pixel_um: pixel side in um.
        stack_path: the input file (recorded as text).
    """
    from fluojax.frap.models import d_px2_s_to_um2_s
    from fluojax.frap.simulate import roi_effective_pixels

    s = prepared.settings
    x0, y0, n = prepared.window
    d_lo, d_hi = table.d_range_px2_s
    return {
        "input": str(stack_path),
        "n_prebleach": s.n_prebleach,
        "n_bleach": s.n_bleach,
        "n_postbleach": s.n_postbleach,
        "dt_s": s.dt_s,
        "pixel_size_um": pixel_um,
        "roi_px": {"shape": "circle", "x": prepared.roi.x, "y": prepared.roi.y, "r": prepared.roi.r},
        "window_px": {"x0": x0, "y0": y0, "size": n, "what": "square analysed by the model (whole image when square)"},
        "pad_px": s.pad,
        "grid_size_px": s.grid_size,
        "effective_roi_pixels": roi_effective_pixels(prepared.geometry),
        "normalisation": {"prebleach_mean": prepared.prebleach_mean, "level": NORMALISED_LEVEL},
        "d_range_px2_s": [d_lo, d_hi],
        "d_range_um2_s": [d_px2_s_to_um2_s(d_lo, pixel_um), d_px2_s_to_um2_s(d_hi, pixel_um)],
        "table_error_estimate": table.tail,
    }


# ------------------------------------------------------------------------------------------------
# A trained network on a prepared stack, refined by least squares (`fluojax frap predict`)

RESIDUAL_RATIO_LIMIT = 2.0
"""Physics check of a network's answer: when the residual sum of squares at the network's
prediction exceeds this multiple of the RSS of the least-squares fit started there, the network's
values are not to be trusted (the refined ones are)."""


class NetworkPrediction(NamedTuple):
    """A network's answer for one prepared curve.

    Attributes:
        params: (3,) float64 D in px^2/s (rescaled to the data's dt and ROI radius), c0
            (normalised units), alpha.
        radius_factor: ``(R / R_net)^2``, the factor applied to D for the ROI radius.
        net_radius_px: the ROI radius the network was trained for, in px.
    """

    params: np.ndarray
    radius_factor: float
    net_radius_px: float


def predict_prepared(net, meta: dict, prepared: PreparedStack) -> NetworkPrediction:
    """(D px^2/s, c0, alpha) of a prepared stack's normalised curve from a trained DeepFRAP network.

    ``learned.predict_curves`` rescales D for the data's frame interval; the curve depends on D
    only through ``D dt / R^2`` (DeepFRAP's diffusion model), so D is rescaled by
    ``(R / R_net)^2`` for the ROI radius R too, R_net = ``meta["radius_px"]`` (the ROI's own
    radius when the checkpoint does not say).

    Arguments:
        net, meta: network and checkpoint meta from ``fluojax.frap.learned.load_network``.
        prepared: ``PreparedStack`` with the frame counts the network was trained for.

    Returns:
        :class:`NetworkPrediction`.

    Raises:
        InputError: a curve of another length than the network reads.
    """
    from fluojax.frap import learned

    raw = np.asarray(
        learned.predict_curves(net, meta, prepared.normalised[None], dt_s=prepared.settings.dt_s), np.float64
    )[0]
    net_radius = float(meta.get("radius_px", prepared.roi.r))
    radius_factor = (prepared.roi.r / net_radius) ** 2
    return NetworkPrediction(raw * np.array([radius_factor, 1.0, 1.0]), radius_factor, net_radius)


class NetworkRefinement(NamedTuple):
    """A network's answer refined by least squares, with its physics check.

    Attributes:
        fit: ``estimate.FrapFit`` of the LM fit started at the network's answer (normalised units).
        start_curve: (T,) model curve at the network's answer (clipped into the bounds), stack units.
        residual_ratio: RSS at the network's answer / RSS of the refined fit (~1 when the network
            is right; NaN when the fit failed).
        trusted: False when ``residual_ratio`` exceeds :data:`RESIDUAL_RATIO_LIMIT`.
    """

    fit: object
    start_curve: np.ndarray
    residual_ratio: float
    trusted: bool


def refine_prepared(prepared: PreparedStack, table: FastCurveTable, prediction) -> NetworkRefinement:
    """One Levenberg-Marquardt fit of a prepared curve started at a network's answer, within the
    bounds of :func:`fit_prepared` (alpha down to 0.05, :func:`fit_prior`), not the network's
    training prior.

    Arguments:
        prepared: ``PreparedStack``.
        table: its ``FastCurveTable`` (:func:`build_table`).
        prediction: (3,) start (D px^2/s, c0 normalised, alpha), e.g. ``predict_prepared(...).params``.

    Returns:
        :class:`NetworkRefinement`.
    """
    from fluojax.frap import learned

    refined = learned.refine(
        prepared.normalised[None], table, np.asarray(prediction)[None], prior=_prior_of(prepared, table)
    )
    ratio = float(np.asarray(refined.residual_ratio).ravel()[0])
    return NetworkRefinement(
        refined.fit, model_curve(refined.start[0], table) * prepared.scale, ratio, not ratio > RESIDUAL_RATIO_LIMIT
    )
