"""fluojax.frap.pipeline: ROI parsing, the square window, input checks, and the ROI curve against an
independent NumPy computation of the area-weighted ROI mean (no fits here: fast)."""

import re

import numpy as np
import pytest

from fluojax.frap import pipeline
from fluojax.frap.models import DEEPFRAP_DT_S, DEEPFRAP_RADIUS_PX
from fluojax.io import InputError


def exact_disk_area_fractions(shape, xc, yc, r, samples=4000):
    """Area of the disk inside each pixel [j, j+1] x [i, i+1], by integrating the disk's vertical
    chord overlap with each row over x (midpoint rule, ``samples`` points per pixel column).

    An independent construction: the pipeline samples 15 x 15 sub-pixel centres per pixel."""
    ny, nx = shape
    xs = (np.arange(nx * samples) + 0.5) / samples
    h = np.sqrt(np.clip(r * r - (xs - xc) ** 2, 0.0, None))
    rows = np.arange(ny)[:, None]
    overlap = np.clip(np.minimum(rows + 1.0, yc + h) - np.maximum(rows, yc - h), 0.0, 1.0)
    return overlap.reshape(ny, nx, samples).mean(axis=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("circle:32,32,8", (32.0, 32.0, 8.0)),
        ("circle: 10.5 , 7.25 ,1e1", (10.5, 7.25, 10.0)),
        ("circle:-1,.5,3", (-1.0, 0.5, 3.0)),
    ],
)
def test_parse_roi_accepts_circles(text, expected):
    assert tuple(pipeline.parse_roi(text)) == expected


@pytest.mark.parametrize(
    "text", ["circle:1,2", "square:1,2,3", "circle:1,2,0", "circle:1,2,-3", "circle:a,b,c", "", "circle:1,2,3,4"]
)
def test_parse_roi_rejects_other_forms_with_one_line(text):
    with pytest.raises(InputError) as err:
        pipeline.parse_roi(text)
    assert "\n" not in str(err.value)


def test_square_window_is_the_whole_square_image_or_a_roi_centred_square_crop():
    assert pipeline.square_window((64, 64), pipeline.CircleROI(10, 50, 5)) == (0, 0, 64)
    # wide image: a 40 x 40 square centred on the ROI's x ...
    x0, y0, n = pipeline.square_window((40, 100), pipeline.CircleROI(50.3, 20, 9))
    assert (y0, n) == (0, 40) and x0 == 30
    # ... clipped at the image edge when the ROI is near it (still containing the circle)
    assert pipeline.square_window((40, 100), pipeline.CircleROI(95, 20, 5)) == (60, 0, 40)
    assert pipeline.square_window((100, 40), pipeline.CircleROI(20, 3.5, 3)) == (0, 0, 40)


def test_roi_curve_equals_an_independent_area_weighted_mean_on_a_non_square_stack():
    rng = np.random.default_rng(0)
    stack = rng.uniform(0.5, 1.5, (12, 40, 70))
    roi = pipeline.CircleROI(50.3, 17.6, 9.4)
    prep = pipeline.prepare_stack(stack, roi, 4, 2, 0.1)
    assert prep.window == (30, 0, 40)
    assert prep.settings.n_pixels == 40 and prep.settings.pad == 20 and prep.settings.n_postbleach == 8
    w = exact_disk_area_fractions(stack.shape[1:], roi.x, roi.y, roi.r)  # on the uncropped image
    assert w.sum() == pytest.approx(np.pi * roi.r**2, rel=1e-7)
    reference = np.einsum("tij,ij->t", stack, w) / w.sum()
    # 15 x 15 sub-pixel sampling misplaces at most one sub-pixel row/column (1/15 of a pixel) on
    # each of the ~60 edge pixels, with errors of both signs; observed 8e-5 relative
    np.testing.assert_allclose(prep.curve, reference, rtol=1e-3)
    # normalisation: prebleach mean -> 0.75, c0 scale back to stack units
    assert prep.prebleach_mean == pytest.approx(reference[:4].mean(), rel=1e-3)
    np.testing.assert_allclose(prep.normalised * prep.scale, prep.curve, rtol=1e-12)
    assert prep.normalised[:4].mean() == pytest.approx(pipeline.NORMALISED_LEVEL)


def test_roi_curve_of_spatially_uniform_frames_is_exactly_their_value():
    values = np.linspace(100.0, 40.0, 9)
    stack = np.broadcast_to(values[:, None, None], (9, 30, 30)).astype(np.uint16)
    prep = pipeline.prepare_stack(stack, pipeline.CircleROI(15.2, 14.1, 6.3), 3, 1, 0.5)
    np.testing.assert_allclose(prep.curve, values.astype(np.uint16), rtol=1e-12)


def _stack(frames=12, size=32, value=1000.0, dtype=np.float32):
    rng = np.random.default_rng(1)
    return (value + rng.normal(0, 10, (frames, size, size))).astype(dtype)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside", "not fully inside"),
        ("few_frames", "at least 13 frames"),
        ("nan", "non-finite"),
        ("inf", "non-finite"),
        ("saturated", "saturated"),
        ("constant", "constant"),
        ("negative", "prebleach ROI mean"),
        ("dt", "frame interval"),
    ],
)
def test_bad_input_raises_one_line_input_error(case, message):
    stack, roi, pre, dt = _stack(), pipeline.CircleROI(16, 16, 6), 10, 0.1
    if case == "outside":
        roi = pipeline.CircleROI(28, 16, 6)
    elif case == "few_frames":
        pre = 10  # 12 frames leave 2 postbleach frames
    elif case == "nan":
        stack[3, 16, 16] = np.nan
    elif case == "inf":
        stack[3, 0, 0] = np.inf  # outside the ROI, inside the analysed window
    elif case == "saturated":
        stack = stack.astype(np.uint16)
        stack[5, 14:16, 14:16] = 65535  # 4 of ~120 ROI pixels: 3 % > 1 %
    elif case == "constant":
        stack = np.full((12, 32, 32), 7, np.uint8)
    elif case == "negative":
        stack = stack - 2000.0
    elif case == "dt":
        dt = 0.0
    if case != "few_frames":
        pre = 5
    with pytest.raises(InputError, match=message) as err:
        pipeline.prepare_stack(stack, roi, pre, 2, dt)
    assert "\n" not in str(err.value)


def test_a_few_saturated_roi_pixels_are_accepted():
    stack = _stack().astype(np.uint16)
    stack[5, 16, 16] = 65535  # 1 of ~120 ROI pixels: below 1 %
    pipeline.prepare_stack(stack, pipeline.CircleROI(16, 16, 6.5), 5, 2, 0.1)


def test_default_d_range_is_deepfraps_widened_and_scales_with_d_dt_over_r2():
    lo, hi = pipeline.default_d_range_px2_s(DEEPFRAP_DT_S, DEEPFRAP_RADIUS_PX)
    assert (lo, hi) == pytest.approx((0.1, 30000.0))
    lo2, hi2 = pipeline.default_d_range_px2_s(DEEPFRAP_DT_S / 2, DEEPFRAP_RADIUS_PX / 2)
    assert (lo2, hi2) == pytest.approx((lo / 2, hi / 2))  # x2 (dt) x 1/4 (R^2)


# ------------------------------------------------------------------------------------------------
# fit statuses: converged fits that mean nothing, and the solver grid's bounds


def _fit(alpha=0.7, alpha_hi=0.72, d_lo=8.0, d_hi=12.0, status=0):
    from fluojax.frap.estimate import FrapFit

    row = lambda *v: np.array([v], np.float64)  # noqa: E731
    return FrapFit(
        row(10.0, 0.75, alpha),
        row(d_lo, 0.74, alpha - 0.02),
        row(d_hi, 0.76, alpha_hi),
        row(1.0, 0.01, 0.01),
        np.array([status]),
        np.array([1e-6]),
        np.array([1e-6]),
    )


@pytest.mark.parametrize(
    ("fit_kwargs", "expected"),
    [
        ({}, "CONVERGED"),  # D within 8-12, alpha well below 1
        ({"status": 3}, "AT_BOUND"),  # the engine's status is kept for meaningful fits
        ({"status": 1}, "MAX_STEPS"),  # and for failed ones
        ({"alpha": 0.99, "alpha_hi": 1.001}, "NO_BLEACH"),  # alpha's 95 % CI reaches 1
        ({"alpha": 1.0, "alpha_hi": 1.0, "status": 3}, "NO_BLEACH"),  # alpha on its bound 1
        ({"alpha_hi": np.nan}, "NO_BLEACH"),  # no interval for alpha: no evidence of a bleach
        ({"d_lo": 1.0, "d_hi": 10.5}, "UNDETERMINED"),  # a factor 10.5: more than a decade
        ({"d_lo": 1.0, "d_hi": 9.9}, "CONVERGED"),  # a factor 9.9: within a decade
        ({"d_hi": np.inf}, "UNDETERMINED"),  # an open end
        ({"d_lo": 0.0}, "UNDETERMINED"),
    ],
)
def test_fit_status_flags_fits_without_bleach_or_without_a_determined_d(fit_kwargs, expected):
    code = int(pipeline.fit_status(_fit(**fit_kwargs))[0])
    assert pipeline.status_name(code) == expected
    assert pipeline.fit_ok(code, [10.0, 0.75, 0.7]) == (expected in ("CONVERGED", "AT_BOUND"))
    assert (pipeline.status_reason(code, [10.0, 0.75, 0.7], [1, 0, 0], [10.5, 1, 1]) == "") == (
        expected in ("CONVERGED", "AT_BOUND")
    )


def test_frap_status_extends_the_engine_status_with_the_written_codes():
    from fluojax.fit import Status

    # summary.json writes these integers and names: they must not move
    assert [pipeline.status_name(int(s)) for s in Status] == [s.name for s in Status]
    assert (int(pipeline.FrapStatus.NO_BLEACH), int(pipeline.FrapStatus.UNDETERMINED)) == (6, 7)
    assert not {int(s) for s in Status} & {int(s) for s in pipeline.FrapStatus}  # no code means two things
    assert pipeline.status_name(7) == "UNDETERMINED" and pipeline.status_name(42) == "42"


def test_default_pad_is_half_the_square_up_to_the_grid_limit():
    assert pipeline.check_pad(256, None) == 128  # DeepFRAP: 256 + 2 x 128
    assert pipeline.check_pad(1536, None) == 256  # 1536 + 2 x 256 = 2048 = MAX_GRID_PX
    assert pipeline.check_pad(32, 128) == 128  # 4 x 32: the largest pad allowed


@pytest.mark.parametrize(
    ("n", "pad", "message"),
    [
        (32, 129, "at most 4 x the 32-px square's side (128 px)"),
        (1024, 600, "a padding of 512 px or less"),
        (3000, None, "crop the stack"),
    ],
)
def test_pads_beyond_the_bounds_are_refused_with_what_is_allowed(n, pad, message):
    with pytest.raises(InputError, match=re.escape(message)) as err:
        pipeline.check_pad(n, pad)
    assert "\n" not in str(err.value)


def test_prepare_stack_refuses_a_huge_pad_before_any_work():
    with pytest.raises(InputError, match="padding 3000 px"):
        pipeline.prepare_stack(_stack(), pipeline.CircleROI(16, 16, 6), 5, 2, 0.1, pad=3000)


def test_frap_package_exports_the_public_api_and_a_version():
    import fluojax.frap as frap
    from fluojax.frap import learned, models

    # the re-exports are the modules' own objects, not copies
    assert frap.recovery_curve is models.recovery_curve and frap.RECIPES is learned.RECIPES
    assert frap.prepare_stack is pipeline.prepare_stack and frap.FrapStatus is pipeline.FrapStatus
    assert isinstance(frap.__version__, str) and frap.__version__.count(".") >= 2
