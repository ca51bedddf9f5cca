"""fluojax.frap.pipeline: ROI parsing, the square window, input checks, and the ROI curve against an
independent NumPy computation of the area-weighted ROI mean (no fits here: fast)."""

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
    [("circle:32,32,8", (32.0, 32.0, 8.0)), ("circle: 10.5 , 7.25 ,1e1", (10.5, 7.25, 10.0)), ("circle:-1,.5,3", (-1.0, 0.5, 3.0))],
)
def test_parse_roi_accepts_circles(text, expected):
    assert tuple(pipeline.parse_roi(text)) == expected


@pytest.mark.parametrize("text", ["circle:1,2", "square:1,2,3", "circle:1,2,0", "circle:1,2,-3", "circle:a,b,c", "", "circle:1,2,3,4"])
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
